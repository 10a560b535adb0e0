// TcpComm: framed non-blocking transfers and the collectives. Mesh forming is in tcp_mesh.cc.
#include "comm/tcp_comm.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <stdexcept>

#include "common/half.h"

namespace ns {
namespace {

constexpr uint32_t kMsgMagic = 0x4E534D47;  // "NSMG": header of every message on the mesh

enum Op : uint32_t { kAllReduceDirect = 1, kReduceScatter = 2, kAllReduceGather = 3, kAllGather = 4,
                     kBroadcast = 5, kSendRecv = 6 };

const char* op_name(uint32_t op) {
  switch (op) {
    case kAllReduceDirect: return "all_reduce (direct)";
    case kReduceScatter: return "all_reduce (reduce-scatter)";
    case kAllReduceGather: return "all_reduce (all-gather)";
    case kAllGather: return "all_gather";
    case kBroadcast: return "broadcast";
    case kSendRecv: return "send/recv";
    default: return "unknown op";
  }
}

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

TcpComm::TcpComm(int rank, int size, TcpCommOptions opts)
    : rank_(rank), size_(size), opts_(std::move(opts)) {
  context_hash(opts_.context, context_hash_);
  if (size < 1) throw std::invalid_argument("tcp comm: size must be >= 1 (got " + std::to_string(size) + ")");
  if (rank < 0 || rank >= size)
    throw std::invalid_argument("tcp comm: rank " + std::to_string(rank) + " outside [0, " + std::to_string(size) + ")");
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) throw std::runtime_error(std::string("tcp comm: eventfd: ") + std::strerror(errno));
  fds_.assign(size, -1);
  addrs_.assign(size, "");
  links_.resize(size);
}

TcpComm::~TcpComm() {
  for (int fd : fds_)
    if (fd >= 0) ::close(fd);
  if (listen_fd_ >= 0) ::close(listen_fd_);
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

std::string TcpComm::peer_name(int peer) const {
  std::string s = "peer rank " + std::to_string(peer);
  if (peer >= 0 && peer < size_ && !addrs_[peer].empty()) s += " (" + addrs_[peer] + ")";
  return s;
}

void TcpComm::shutdown_all_locked() {
  for (int fd : fds_)
    if (fd >= 0) ::shutdown(fd, SHUT_RDWR);
  if (listen_fd_ >= 0) ::shutdown(listen_fd_, SHUT_RDWR);
}

void TcpComm::fail(const std::string& msg) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (error_.empty()) error_ = msg;

    broken_ = true;
    // No shutdown here: every peer has its own connection to a dead rank and sees it die itself,
    // so its error names the rank that actually failed. abort() (from the worker's failure
    // handling or the coordinator) is what closes this rank's sockets.
  }
  throw std::runtime_error(msg);
}

void TcpComm::check_usable(const char* what) {
  if (aborted_ || broken_) {
    std::lock_guard<std::mutex> lk(mu_);
    throw std::runtime_error(error_.empty() ? "tcp comm rank " + std::to_string(rank_) + ": aborted" : error_);
  }
  if (size_ > 1 && !connected_)
    throw std::runtime_error(std::string("tcp comm rank ") + std::to_string(rank_) + ": " + what +
                             " before connect()");
}

void TcpComm::abort() {
  std::lock_guard<std::mutex> lk(mu_);
  if (error_.empty()) error_ = "tcp comm rank " + std::to_string(rank_) + ": aborted";
  aborted_ = true;
  broken_ = true;
  uint64_t one = 1;
  ssize_t w = ::write(wake_fd_, &one, sizeof one);
  (void)w;
  shutdown_all_locked();
}

std::string TcpComm::async_error() const {
  std::lock_guard<std::mutex> lk(mu_);
  if (!error_.empty() || aborted_ || !connected_) return error_;
  // The CPU equivalent of ncclCommGetAsyncError: a peer connection that hung up or carries a
  // socket error, seen without waiting for the next op to trip over it (a zero-timeout poll that
  // consumes nothing, safe next to an op in progress on another thread).
  for (int peer = 0; peer < size_; peer++) {
    int fd = fds_[peer];
    if (fd < 0) continue;
    pollfd p{fd, static_cast<short>(POLLRDHUP), 0};
    if (::poll(&p, 1, 0) <= 0 || !(p.revents & (POLLERR | POLLHUP | POLLRDHUP))) continue;
    int so = 0;
    socklen_t len = sizeof so;
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &so, &len);
    return "tcp comm rank " + std::to_string(rank_) + ": " + peer_name(peer) +
           (so ? std::string(": socket error: ") + std::strerror(so) : std::string(" closed its connection"));
  }
  return "";
}

std::vector<std::string> TcpComm::refused() const {
  std::lock_guard<std::mutex> lk(mu_);
  std::vector<std::string> out;
  for (const auto& [ip, r] : refused_)
    out.push_back(ip + ": " + r.why + " (" + std::to_string(r.count) + (r.count == 1 ? " connection)" : " connections)"));
  return out;
}

int TcpComm::encrypted_links() const {
  int n = 0;
  for (const auto& l : links_) n += l.send ? 1 : 0;
  return n;
}

void TcpComm::refuse(const std::string& ip, const std::string& why) {
  std::lock_guard<std::mutex> lk(mu_);
  for (auto& [addr, r] : refused_)
    if (addr == ip) {
      ++r.count;
      return;
    }
  refused_.push_back({ip, Refused{why, 1}});
}

void TcpComm::add_link(int peer, bool encrypted, const uint8_t* send_key, const uint8_t* recv_key) {
  if (!encrypted) return;
  links_[peer].send = std::make_unique<FrameCipher>(send_key);
  links_[peer].recv = std::make_unique<FrameCipher>(recv_key);
}

TcpComm::Xfer TcpComm::make_send(int peer, uint32_t op, const void* data, size_t bytes) {
  Xfer x;
  x.peer = peer;
  x.is_send = true;
  x.data = static_cast<uint8_t*>(const_cast<void*>(data));
  x.bytes = bytes;
  x.op = op;
  uint64_t len = bytes;
  std::memcpy(x.hdr, &kMsgMagic, 4);
  std::memcpy(x.hdr + 4, &op, 4);
  std::memcpy(x.hdr + 8, &len, 8);
  return x;
}

TcpComm::Xfer TcpComm::make_recv(int peer, uint32_t op, void* data, size_t bytes) {
  Xfer x;
  x.peer = peer;
  x.data = static_cast<uint8_t*>(data);
  x.bytes = bytes;
  x.op = op;
  return x;
}

bool TcpComm::progress(Xfer& x, const char* what) {
  const int fd = fds_[x.peer];
  const std::string who = "tcp comm rank " + std::to_string(rank_) + ": " + what + ": ";
  Link& link = links_[x.peer];
  if (x.is_send && link.send && !x.crypt) {
    // Seal once, before the first byte goes out: the header is authenticated with the payload.
    x.crypt = true;
    if (link.sealed.size() < x.bytes) link.sealed.resize(x.bytes);
    x.sealed = link.sealed.data();
    link.send->seal(x.hdr, sizeof x.hdr, x.data, x.sealed, x.bytes, x.tag);
  } else if (!x.is_send && link.recv) {
    x.crypt = true;
  }
  const size_t tag_bytes = x.crypt ? sizeof x.tag : 0;
  while (x.hdr_done < sizeof x.hdr || x.done < x.bytes || x.tag_done < tag_bytes) {
    const bool in_hdr = x.hdr_done < sizeof x.hdr;
    const bool in_tag = !in_hdr && x.done == x.bytes;
    uint8_t* body = x.is_send && x.crypt ? x.sealed : x.data;
    uint8_t* p = in_hdr ? x.hdr + x.hdr_done : in_tag ? x.tag + x.tag_done : body + x.done;
    size_t left = in_hdr ? sizeof x.hdr - x.hdr_done : in_tag ? tag_bytes - x.tag_done : x.bytes - x.done;
    ssize_t n;
    if (x.is_send) {
      // MSG_MORE only while more of this message follows (a corked last segment waits 200 ms).
      const bool more = in_hdr ? x.bytes + tag_bytes > 0 : !in_tag && tag_bytes > 0;
      int flags = MSG_NOSIGNAL | MSG_DONTWAIT | (more ? MSG_MORE : 0);
      n = ::send(fd, p, left, flags);
    } else {
      n = ::recv(fd, p, left, MSG_DONTWAIT);
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return false;
      if (aborted_) fail(who + "aborted");
      fail(who + peer_name(x.peer) + " connection failed: " + std::strerror(errno));
    }
    if (n == 0) {
      if (aborted_) fail(who + "aborted");
      fail(who + peer_name(x.peer) + " closed the connection (process gone?)");
    }
    if (in_hdr) {
      x.hdr_done += size_t(n);
      if (!x.is_send && x.hdr_done == sizeof x.hdr) {
        uint32_t magic, op;
        uint64_t len;
        std::memcpy(&magic, x.hdr, 4);
        std::memcpy(&op, x.hdr + 4, 4);
        std::memcpy(&len, x.hdr + 8, 8);
        if (magic != kMsgMagic) fail(who + peer_name(x.peer) + " sent a corrupt frame header");
        if (op != x.op || len != x.bytes)
          fail(who + peer_name(x.peer) + " sent " + op_name(op) + " of " + std::to_string(len) +
               " bytes where this rank expected " + op_name(x.op) + " of " + std::to_string(x.bytes) +
               " bytes (ranks called different collectives or sizes)");
      }
    } else if (in_tag) {
      x.tag_done += size_t(n);
    } else {
      x.done += size_t(n);
    }
  }
  if (!x.is_send && x.crypt && !link.recv->open(x.hdr, sizeof x.hdr, x.data, x.bytes, x.tag))
    fail(who + peer_name(x.peer) + " sent a frame that fails authentication (tampered with, replayed or out of order)");
  return true;
}

void TcpComm::transfer(std::vector<Xfer>& xs, const char* what) {
  const int64_t deadline = opts_.op_timeout_ms > 0 ? now_ms() + opts_.op_timeout_ms : 0;
  std::vector<pollfd> pfds;
  std::vector<Xfer*> active;
  // Try every transfer once before the first poll(): small sends fit the socket buffer and a
  // peer's data is often there already, so a decode-sized all-reduce needs no poll at all.
  for (auto& x : xs) progress(x, what);
  for (;;) {
    pfds.clear();
    active.clear();
    pfds.push_back({wake_fd_, POLLIN, 0});
    for (auto& x : xs) {
      if (x.hdr_done == sizeof x.hdr && x.done == x.bytes && x.tag_done == (x.crypt ? sizeof x.tag : 0)) continue;
      pfds.push_back({fds_[x.peer], short(x.is_send ? POLLOUT : POLLIN), 0});
      active.push_back(&x);
    }
    if (active.empty()) return;
    int timeout = -1;
    if (deadline) timeout = int(std::max<int64_t>(0, deadline - now_ms()));
    int r = ::poll(pfds.data(), pfds.size(), timeout);
    if (aborted_) fail("tcp comm rank " + std::to_string(rank_) + ": " + what + ": aborted");
    if (r < 0) {
      if (errno == EINTR) continue;
      fail(std::string("tcp comm: poll: ") + std::strerror(errno));
    }
    if (r == 0) {
      std::string waiting;
      for (auto* x : active) waiting += (waiting.empty() ? "" : ", ") + peer_name(x->peer);
      fail("tcp comm rank " + std::to_string(rank_) + ": " + what + " timed out after " +
           std::to_string(opts_.op_timeout_ms) + " ms waiting for " + waiting);
    }
    for (size_t i = 0; i < active.size(); ++i)
      if (pfds[i + 1].revents) progress(*active[i], what);
  }
}

void TcpComm::reduce_rank_order(DType dt, void* out, const std::vector<const uint8_t*>& srcs, size_t count) {
  // Block-wise f32 accumulator: reads every source of a block before writing `out`, which may
  // alias this rank's own source; each element is ((s0 + s1) + s2) + ... in rank order.
  constexpr size_t B = 2048;
  float acc[B];
  const int n = int(srcs.size());
  for (size_t b0 = 0; b0 < count; b0 += B) {
    const size_t m = std::min(B, count - b0);
    if (dt == DType::F32) {
      const float* s0 = reinterpret_cast<const float*>(srcs[0]) + b0;
      for (size_t j = 0; j < m; ++j) acc[j] = s0[j];
      for (int r = 1; r < n; ++r) {
        const float* s = reinterpret_cast<const float*>(srcs[r]) + b0;
        for (size_t j = 0; j < m; ++j) acc[j] += s[j];
      }
      std::memcpy(static_cast<float*>(out) + b0, acc, m * 4);
    } else {
      const bool bf = dt == DType::BF16;
      for (int r = 0; r < n; ++r) {
        const uint16_t* s = reinterpret_cast<const uint16_t*>(srcs[r]) + b0;
        for (size_t j = 0; j < m; ++j) {
          float v = bf ? bf16_to_f32(s[j]) : f16_to_f32(s[j]);
          acc[j] = r == 0 ? v : acc[j] + v;
        }
      }
      uint16_t* o = static_cast<uint16_t*>(out) + b0;
      for (size_t j = 0; j < m; ++j) o[j] = bf ? f32_to_bf16(acc[j]) : f32_to_f16(acc[j]);
    }
  }
}

void TcpComm::all_reduce_sum(void* buf, size_t count, DType dt, void*) {
  std::lock_guard<std::mutex> serial(op_mu_);
  check_usable("all_reduce");
  if (size_ == 1 || count == 0) return;
  const size_t es = dtype_size(dt), bytes = count * es;
  uint8_t* data = static_cast<uint8_t*>(buf);
  std::vector<const uint8_t*> srcs(size_);
  std::vector<Xfer> xs;
  if (bytes <= kDirectAllReduceBytes || count < size_t(size_)) {
    scratch_.resize(bytes * size_t(size_ - 1));
    for (int p = 0; p < size_; ++p) {
      if (p == rank_) { srcs[p] = data; continue; }
      uint8_t* slot = scratch_.data() + bytes * size_t(p < rank_ ? p : p - 1);
      srcs[p] = slot;
      xs.push_back(make_send(p, kAllReduceDirect, data, bytes));
      xs.push_back(make_recv(p, kAllReduceDirect, slot, bytes));
    }
    transfer(xs, "all_reduce");
    reduce_rank_order(dt, data, srcs, count);
    return;
  }
  // Reduce-scatter: rank p owns elements [begin(p), begin(p+1)).
  auto begin = [&](int p) { return count * size_t(p) / size_t(size_); };
  const size_t mine = begin(rank_ + 1) - begin(rank_);
  scratch_.resize(mine * es * size_t(size_ - 1));
  for (int p = 0; p < size_; ++p) {
    if (p == rank_) { srcs[p] = data + begin(p) * es; continue; }
    uint8_t* slot = scratch_.data() + mine * es * size_t(p < rank_ ? p : p - 1);
    srcs[p] = slot;
    xs.push_back(make_send(p, kReduceScatter, data + begin(p) * es, (begin(p + 1) - begin(p)) * es));
    xs.push_back(make_recv(p, kReduceScatter, slot, mine * es));
  }
  transfer(xs, "all_reduce");
  reduce_rank_order(dt, data + begin(rank_) * es, srcs, mine);
  xs.clear();
  for (int p = 0; p < size_; ++p) {
    if (p == rank_) continue;
    xs.push_back(make_send(p, kAllReduceGather, data + begin(rank_) * es, mine * es));
    xs.push_back(make_recv(p, kAllReduceGather, data + begin(p) * es, (begin(p + 1) - begin(p)) * es));
  }
  transfer(xs, "all_reduce");
}

void TcpComm::all_gather(const void* in, void* out, size_t count, DType dt, void*) {
  all_gather_bytes(in, out, count * dtype_size(dt));
}

void TcpComm::all_gather_bytes(const void* in, void* out, size_t bytes) {
  std::lock_guard<std::mutex> serial(op_mu_);
  check_usable("all_gather");
  uint8_t* o = static_cast<uint8_t*>(out);
  if (o + bytes * size_t(rank_) != in) std::memmove(o + bytes * size_t(rank_), in, bytes);
  if (size_ == 1 || bytes == 0) return;
  std::vector<Xfer> xs;
  for (int p = 0; p < size_; ++p) {
    if (p == rank_) continue;
    xs.push_back(make_send(p, kAllGather, o + bytes * size_t(rank_), bytes));
    xs.push_back(make_recv(p, kAllGather, o + bytes * size_t(p), bytes));
  }
  transfer(xs, "all_gather");
}

void TcpComm::broadcast(void* buf, size_t bytes, int root, void*) {
  std::lock_guard<std::mutex> serial(op_mu_);
  check_usable("broadcast");
  if (root < 0 || root >= size_)
    throw std::invalid_argument("tcp comm: broadcast root " + std::to_string(root) + " outside [0, " +
                                std::to_string(size_) + ")");
  if (size_ == 1) return;
  std::vector<Xfer> xs;
  if (rank_ == root) {
    for (int p = 0; p < size_; ++p)
      if (p != rank_) xs.push_back(make_send(p, kBroadcast, buf, bytes));
  } else {
    xs.push_back(make_recv(root, kBroadcast, buf, bytes));
  }
  transfer(xs, "broadcast");
}

void TcpComm::send(const void* buf, size_t bytes, int peer, void*) {
  std::lock_guard<std::mutex> serial(op_mu_);
  check_usable("send");
  if (peer < 0 || peer >= size_ || peer == rank_)
    throw std::invalid_argument("tcp comm rank " + std::to_string(rank_) + ": send to invalid peer " +
                                std::to_string(peer));
  std::vector<Xfer> xs{make_send(peer, kSendRecv, buf, bytes)};
  transfer(xs, "send");
}

void TcpComm::recv(void* buf, size_t bytes, int peer, void*) {
  std::lock_guard<std::mutex> serial(op_mu_);
  check_usable("recv");
  if (peer < 0 || peer >= size_ || peer == rank_)
    throw std::invalid_argument("tcp comm rank " + std::to_string(rank_) + ": recv from invalid peer " +
                                std::to_string(peer));
  std::vector<Xfer> xs{make_recv(peer, kSendRecv, buf, bytes)};
  transfer(xs, "recv");
}

}  // namespace ns
