// TcpComm: forming the full mesh (listen, connect with retries, the keyed challenge-response handshake).
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <thread>

#include "comm/tcp_comm.h"

namespace ns {
namespace {

constexpr uint32_t kHelloMagic = 0x4E534843;  // "NSHC"
constexpr uint32_t kProtocol = 2;
constexpr uint32_t kFlagEncrypted = 1;
// Handshakes the acceptor runs at once; beyond this the oldest pending one is dropped (a flood of
// silent connections cannot hold more, and a real peer speaks within milliseconds of connecting).
constexpr size_t kMaxPending = 64;
enum Status : uint32_t { kOk = 0, kBadContext = 1, kBadSize = 2, kBadRank = 3, kBadMagic = 4, kBadAuth = 5, kBadCrypt = 6 };

const char* status_text(uint32_t s) {
  switch (s) {
    case kBadContext: return "another group or membership epoch";
    case kBadSize: return "group size mismatch";
    case kBadRank: return "rank not expected (duplicate, or not higher than the acceptor's)";
    case kBadMagic: return "not a nodespeed tcp comm peer or protocol version mismatch";
    case kBadAuth: return "authentication failed (the peer does not hold this job's key)";
    case kBadCrypt: return "the two ends disagree on encrypting this connection (--encrypt-data-plane)";
    default: return "unknown status";
  }
}

// Acceptor → connector, first, on every accepted connection: a fresh challenge.
struct Challenge {
  uint32_t magic, protocol;
  uint8_t nonce[kNonceBytes];
};
// Connector → acceptor: who it is, its own challenge, and the MAC proving it holds the key.
struct Hello {
  uint32_t magic, protocol;
  int32_t rank, size;
  uint32_t flags, pad;
  uint8_t context[kContextBytes];
  uint8_t nonce[kNonceBytes];
  uint8_t mac[kMacBytes];
};
// Acceptor → connector: the verdict, and (when accepted) the MAC proving the acceptor holds the key.
struct Reply {
  uint32_t magic, status;
  int32_t rank;
  uint32_t flags;
  uint8_t mac[kMacBytes];
};
static_assert(sizeof(Challenge) == 40 && sizeof(Hello) == 104 && sizeof(Reply) == 48, "wire structs");

// The MACs cover everything either side relies on: the direction (label), the group context, both
// nonces (freshness: a recorded handshake is useless later), the ranks, the size and the flags.
void hello_mac(const std::string& key, const uint8_t* context, const uint8_t* nonce_a, const Hello& h, int32_t acceptor,
               uint8_t out[kMacBytes]) {
  static const char label[] = "nodespeed tcp comm hello v2";
  hmac_sha256(key, {{label, sizeof label}, {context, kContextBytes}, {nonce_a, kNonceBytes}, {h.nonce, kNonceBytes},
                    {&h.rank, 4}, {&h.size, 4}, {&acceptor, 4}, {&h.flags, 4}}, out);
}

void reply_mac(const std::string& key, const uint8_t* context, const uint8_t* nonce_a, const Hello& h, const Reply& r,
               uint8_t out[kMacBytes]) {
  static const char label[] = "nodespeed tcp comm reply v2";
  hmac_sha256(key, {{label, sizeof label}, {context, kContextBytes}, {h.nonce, kNonceBytes}, {nonce_a, kNonceBytes},
                    {&r.status, 4}, {&r.rank, 4}, {&h.rank, 4}, {&r.flags, 4}}, out);
}

// The two directions' frame keys of an encrypted connection, derived from the handshake.
void session_keys(const std::string& key, const uint8_t* context, const uint8_t* nonce_a, const uint8_t* nonce_c,
                  uint8_t c2a[kMacBytes], uint8_t a2c[kMacBytes]) {
  static const char up[] = "nodespeed tcp comm key connector to acceptor";
  static const char down[] = "nodespeed tcp comm key acceptor to connector";
  hmac_sha256(key, {{up, sizeof up}, {context, kContextBytes}, {nonce_a, kNonceBytes}, {nonce_c, kNonceBytes}}, c2a);
  hmac_sha256(key, {{down, sizeof down}, {context, kContextBytes}, {nonce_a, kNonceBytes}, {nonce_c, kNonceBytes}}, a2c);
}

std::string ip_of(const sockaddr_storage& ss) {
  char ip[INET6_ADDRSTRLEN] = "?";
  if (ss.ss_family == AF_INET) inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&ss)->sin_addr, ip, sizeof ip);
  if (ss.ss_family == AF_INET6) inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_addr, ip, sizeof ip);
  return ip;
}

bool loopback(const sockaddr_storage& ss) {
  if (ss.ss_family == AF_INET) return (ntohl(reinterpret_cast<const sockaddr_in*>(&ss)->sin_addr.s_addr) >> 24) == 127;
  if (ss.ss_family == AF_INET6) {
    const in6_addr& a = reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_addr;
    return IN6_IS_ADDR_LOOPBACK(&a) || (IN6_IS_ADDR_V4MAPPED(&a) && a.s6_addr[12] == 127);
  }
  return false;
}

// Whether both ends of a connection are on this host (then it stays clear even with encryption
// on): the local and the peer address are the same, or both loopback. Both ends see the same pair.
bool same_host(int fd) {
  sockaddr_storage me{}, peer{};
  socklen_t a = sizeof me, b = sizeof peer;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&me), &a) != 0 || getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &b) != 0)
    return false;
  if (loopback(me) && loopback(peer)) return true;
  return ip_of(me) == ip_of(peer);
}

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Low latency (activations are small), big buffers (logits and prefill all-reduces are not),
// keepalive so a host that vanishes without RST is noticed in ~11 s even with no op timeout.
void tune_socket(int fd) {
  int one = 1, buf = 4 << 20, idle = 5, intvl = 2, cnt = 3;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
}

// "host:port" or "[v6]:port" → host, port.
void split_address(const std::string& a, std::string& host, std::string& port) {
  size_t colon = a.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == a.size())
    throw std::invalid_argument("tcp comm: address '" + a + "' is not host:port");
  host = a.substr(0, colon);
  port = a.substr(colon + 1);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
}

addrinfo* resolve(const std::string& host, const std::string& port, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if (passive) hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0) throw std::runtime_error("tcp comm: cannot resolve '" + host + "': " + gai_strerror(rc));
  return res;
}

}  // namespace

void TcpComm::wait_fd(int fd, short events, int64_t deadline_ms, const std::string& what) {
  for (;;) {
    if (aborted_) fail("tcp comm rank " + std::to_string(rank_) + ": " + what + ": aborted");
    pollfd p[2] = {{wake_fd_, POLLIN, 0}, {fd, events, 0}};
    int64_t left = deadline_ms - now_ms();
    if (left <= 0) throw std::runtime_error("timed out");
    int r = ::poll(p, 2, int(left));
    if (r < 0 && errno != EINTR) throw std::runtime_error(std::string("poll: ") + std::strerror(errno));
    if (aborted_) fail("tcp comm rank " + std::to_string(rank_) + ": " + what + ": aborted");
    if (r > 0 && p[1].revents) return;
  }
}

void TcpComm::read_exact(int fd, void* buf, size_t n, int64_t deadline_ms, const std::string& what) {
  size_t done = 0;
  while (done < n) {
    wait_fd(fd, POLLIN, deadline_ms, what);
    ssize_t r = ::recv(fd, static_cast<char*>(buf) + done, n - done, MSG_DONTWAIT);
    if (r == 0) throw std::runtime_error("connection closed");
    if (r < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      throw std::runtime_error(std::strerror(errno));
    }
    done += size_t(r);
  }
}

void TcpComm::write_exact(int fd, const void* buf, size_t n, int64_t deadline_ms, const std::string& what) {
  size_t done = 0;
  while (done < n) {
    wait_fd(fd, POLLOUT, deadline_ms, what);
    ssize_t r = ::send(fd, static_cast<const char*>(buf) + done, n - done, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (r < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      throw std::runtime_error(std::strerror(errno));
    }
    done += size_t(r);
  }
}

int TcpComm::listen(const std::string& host) {
  if (listen_fd_ >= 0) throw std::runtime_error("tcp comm: listen() called twice");
  addrinfo* res = resolve(host, "0", true);
  std::string last = "no address";
  for (addrinfo* ai = res; ai; ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) { last = std::strerror(errno); continue; }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && ::listen(fd, 64) == 0) {
      sockaddr_storage ss{};
      socklen_t len = sizeof ss;
      getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
      int port = ss.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                                          : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
      freeaddrinfo(res);
      std::lock_guard<std::mutex> lk(mu_);
      listen_fd_ = fd;
      return port;
    }
    last = std::strerror(errno);
    ::close(fd);
  }
  freeaddrinfo(res);
  throw std::runtime_error("tcp comm rank " + std::to_string(rank_) + ": cannot listen on '" + host + "': " + last);
}

void TcpComm::connect(const std::vector<std::string>& addresses) {
  std::lock_guard<std::mutex> serial(op_mu_);
  if (connected_) throw std::runtime_error("tcp comm: connect() called twice");
  if (int(addresses.size()) != size_)
    throw std::invalid_argument("tcp comm rank " + std::to_string(rank_) + ": connect() got " +
                                std::to_string(addresses.size()) + " addresses for a group of " + std::to_string(size_));
  if (size_ > 1 && listen_fd_ < 0 && rank_ < size_ - 1)
    throw std::runtime_error("tcp comm rank " + std::to_string(rank_) + ": connect() before listen()");
  if (aborted_) check_usable("connect");
  addrs_ = addresses;
  const int64_t deadline = now_ms() + opts_.connect_timeout_ms;
  for (int p = 0; p < rank_; ++p) {
    int fd = connect_to_lower(p, addresses[p], deadline);
    std::lock_guard<std::mutex> lk(mu_);
    fds_[p] = fd;
    if (aborted_) ::shutdown(fd, SHUT_RDWR);
  }
  accept_higher(deadline);
  connected_ = true;
  std::lock_guard<std::mutex> lk(mu_);  // the group is complete: no more accepts
  if (listen_fd_ >= 0) { ::close(listen_fd_); listen_fd_ = -1; }
}

int TcpComm::connect_to_lower(int peer, const std::string& address, int64_t deadline) {
  std::string host, port;
  split_address(address, host, port);
  const std::string who = "tcp comm rank " + std::to_string(rank_) + ": connect to peer rank " +
                          std::to_string(peer) + " at " + address;
  std::string last = "no attempt";
  while (true) {
    if (aborted_) fail(who + ": aborted");
    addrinfo* res = nullptr;
    try { res = resolve(host, port, false); } catch (const std::exception& e) { fail(who + ": " + e.what()); }
    for (addrinfo* ai = res; ai; ai = ai->ai_next) {
      int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
      if (fd < 0) { last = std::strerror(errno); continue; }
      tune_socket(fd);
      try {
        if (::connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
          if (errno != EINPROGRESS) throw std::runtime_error(std::strerror(errno));
          wait_fd(fd, POLLOUT, deadline, "connect");
          int err = 0;
          socklen_t len = sizeof err;
          getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
          if (err) throw std::runtime_error(std::strerror(err));
        }
        // The acceptor's challenge comes once it is accepting (it connects to its own lower ranks
        // first): wait for it up to the group's deadline. Its reply to our hello comes at once, so
        // that wait is short: a peer that does not answer is retried instead of holding this rank.
        Challenge ch{};
        read_exact(fd, &ch, sizeof ch, deadline, "connect");
        if (ch.magic != kHelloMagic || ch.protocol != kProtocol) throw std::runtime_error("not a nodespeed tcp comm peer (or another protocol version)");
        const bool crypt = encrypts(fd);
        Hello h{kHelloMagic, kProtocol, rank_, size_, crypt ? kFlagEncrypted : 0u, 0, {}, {}, {}};
        std::memcpy(h.context, context_hash_, kContextBytes);
        random_bytes(h.nonce, kNonceBytes);
        hello_mac(opts_.key, context_hash_, ch.nonce, h, peer, h.mac);
        const int64_t hs = std::min(deadline, now_ms() + opts_.handshake_timeout_ms);
        write_exact(fd, &h, sizeof h, hs, "connect");
        Reply r{};
        read_exact(fd, &r, sizeof r, hs, "connect");
        if (r.magic != kHelloMagic) throw std::runtime_error("not a nodespeed tcp comm peer");
        if (r.status != kOk) fail(who + ": refused the handshake: " + status_text(r.status));  // catch closes fd
        uint8_t want[kMacBytes];
        reply_mac(opts_.key, context_hash_, ch.nonce, h, r, want);
        if (!mac_equal(want, r.mac) || r.flags != h.flags)
          fail(who + ": the peer did not prove it holds this job's key (an impostor on that address?)");
        if (r.rank != peer) throw std::runtime_error("answered as rank " + std::to_string(r.rank));
        uint8_t c2a[kMacBytes], a2c[kMacBytes];
        session_keys(opts_.key, context_hash_, ch.nonce, h.nonce, c2a, a2c);
        add_link(peer, crypt, c2a, a2c);
        freeaddrinfo(res);
        return fd;
      } catch (const std::runtime_error& e) {
        ::close(fd);
        if (aborted_ || broken_) { freeaddrinfo(res); throw; }
        // Keep the reason of a real attempt ("Connection refused") over the final deadline hit.
        if (std::strcmp(e.what(), "timed out") != 0 || last == "no attempt") last = e.what();
      }
    }
    freeaddrinfo(res);
    if (now_ms() >= deadline)
      fail(who + " failed (" + last + "), retried for " + std::to_string(opts_.connect_timeout_ms / 1000.0).substr(0, 5) + " s");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

bool TcpComm::encrypts(int fd) const {
  return opts_.encrypt == TcpCommOptions::Encrypt::kAll || (opts_.encrypt == TcpCommOptions::Encrypt::kCrossHost && !same_host(fd));
}

// Every pending connection's handshake runs at once in one poll loop, each with its own
// deadline: a stray that never speaks, or speaks slowly, delays no real peer.
void TcpComm::accept_higher(int64_t deadline) {
  struct Pending {
    int fd;
    std::string ip;
    int64_t deadline;
    Challenge ch;
    Hello h;
    size_t got = 0;
  };
  std::vector<Pending> pending;
  auto drop = [&](size_t i, const std::string& why) {
    refuse(pending[i].ip, why);
    ::close(pending[i].fd);
    pending.erase(pending.begin() + long(i));
  };
  auto cleanup = [&] {
    for (auto& p : pending) {
      refuse(p.ip, "no handshake before the group was complete");
      ::close(p.fd);
    }
    pending.clear();
  };
  int missing = size_ - 1 - rank_;
  try {
    while (missing > 0) {
      if (aborted_) fail("tcp comm rank " + std::to_string(rank_) + ": connect: aborted");
      const int64_t now = now_ms();
      for (size_t i = pending.size(); i-- > 0;)
        if (now >= pending[i].deadline)
          drop(i, "no handshake within " + std::to_string(opts_.handshake_timeout_ms) + " ms");
      if (now >= deadline) {
        std::string ranks;
        for (int p = rank_ + 1; p < size_; ++p)
          if (fds_[p] < 0) ranks += (ranks.empty() ? "" : ", ") + std::to_string(p) + " (" + addrs_[p] + ")";
        fail("tcp comm rank " + std::to_string(rank_) + ": timed out after " +
             std::to_string(opts_.connect_timeout_ms) + " ms waiting for peer rank(s) " + ranks + " to connect");
      }
      int64_t wake = deadline;
      for (const auto& p : pending) wake = std::min(wake, p.deadline);
      std::vector<pollfd> pfds{{wake_fd_, POLLIN, 0}, {listen_fd_, POLLIN, 0}};
      for (const auto& p : pending) pfds.push_back({p.fd, POLLIN, 0});
      int r = ::poll(pfds.data(), pfds.size(), int(std::max<int64_t>(0, wake - now)));
      if (r < 0 && errno != EINTR) throw std::runtime_error(std::string("poll: ") + std::strerror(errno));
      if (r <= 0) continue;
      // Hellos first (indices shift as connections leave the list: walk backwards).
      for (size_t i = pending.size(); i-- > 0;) {
        if (!pfds[i + 2].revents) continue;
        Pending& p = pending[i];
        ssize_t n = ::recv(p.fd, reinterpret_cast<uint8_t*>(&p.h) + p.got, sizeof p.h - p.got, MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (n <= 0) {
          drop(i, n == 0 ? "closed the connection during the handshake" : std::string("handshake: ") + std::strerror(errno));
          continue;
        }
        p.got += size_t(n);
        if (p.got < sizeof p.h) continue;
        const Hello& h = p.h;
        uint32_t status = kOk;
        uint8_t want[kMacBytes];
        const bool crypt = encrypts(p.fd);
        if (h.magic != kHelloMagic || h.protocol != kProtocol) status = kBadMagic;
        else if (std::memcmp(h.context, context_hash_, kContextBytes) != 0) status = kBadContext;
        else if ((hello_mac(opts_.key, context_hash_, p.ch.nonce, h, rank_, want), !mac_equal(want, h.mac))) status = kBadAuth;
        else if (h.size != size_) status = kBadSize;
        else if (h.rank <= rank_ || h.rank >= size_ || fds_[h.rank] >= 0) status = kBadRank;
        else if (h.flags != (crypt ? kFlagEncrypted : 0u)) status = kBadCrypt;
        Reply rep{kHelloMagic, status, rank_, h.flags, {}};
        reply_mac(opts_.key, context_hash_, p.ch.nonce, h, rep, rep.mac);
        // 48 bytes on a fresh connection: the socket buffer takes them at once.
        const bool sent = ::send(p.fd, &rep, sizeof rep, MSG_DONTWAIT | MSG_NOSIGNAL) == ssize_t(sizeof rep);
        if (status != kOk || !sent) {
          drop(i, status != kOk ? std::string(status_text(status)) + " (claimed rank " + std::to_string(h.rank) + ")"
                                : "could not answer the handshake");
          continue;
        }
        uint8_t c2a[kMacBytes], a2c[kMacBytes];
        session_keys(opts_.key, context_hash_, p.ch.nonce, h.nonce, c2a, a2c);
        add_link(h.rank, crypt, a2c, c2a);
        std::lock_guard<std::mutex> lk(mu_);
        fds_[h.rank] = p.fd;
        if (aborted_) ::shutdown(p.fd, SHUT_RDWR);
        pending.erase(pending.begin() + long(i));
        --missing;
      }
      if (!pfds[1].revents || missing == 0) continue;
      sockaddr_storage ss{};
      socklen_t len = sizeof ss;
      int fd = ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) continue;
      tune_socket(fd);
      Pending p{fd, ip_of(ss), now_ms() + opts_.handshake_timeout_ms, Challenge{kHelloMagic, kProtocol, {}}, Hello{}};
      random_bytes(p.ch.nonce, kNonceBytes);
      if (::send(fd, &p.ch, sizeof p.ch, MSG_DONTWAIT | MSG_NOSIGNAL) != ssize_t(sizeof p.ch)) {
        refuse(p.ip, "could not send the handshake challenge");
        ::close(fd);
        continue;
      }
      if (pending.size() >= kMaxPending) drop(0, "too many connections handshaking at once");
      pending.push_back(p);
    }
  } catch (...) {
    cleanup();
    throw;
  }
  cleanup();
}

}  // namespace ns
