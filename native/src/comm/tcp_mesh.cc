// TcpComm: forming the full mesh (listen, connect with retries, the rank/nonce handshake).
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
constexpr uint32_t kProtocol = 1;
enum Status : uint32_t { kOk = 0, kBadNonce = 1, kBadSize = 2, kBadRank = 3, kBadMagic = 4 };

const char* status_text(uint32_t s) {
  switch (s) {
    case kBadNonce: return "nonce mismatch (a different job or membership generation)";
    case kBadSize: return "group size mismatch";
    case kBadRank: return "rank not expected (duplicate, or not higher than the acceptor's)";
    case kBadMagic: return "not a nodespeed tcp comm peer or protocol version mismatch";
    default: return "unknown status";
  }
}

struct Hello {  // connector → acceptor, 24 bytes on the wire
  uint32_t magic, protocol;
  uint64_t nonce;
  int32_t rank, size;
};
struct Reply {  // acceptor → connector, 16 bytes
  uint32_t magic, status;
  int32_t rank, pad;
};
static_assert(sizeof(Hello) == 24 && sizeof(Reply) == 16, "wire structs");

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
        Hello h{kHelloMagic, kProtocol, nonce_hash_, rank_, size_};
        write_exact(fd, &h, sizeof h, deadline, "connect");
        Reply r{};
        read_exact(fd, &r, sizeof r, deadline, "connect");
        if (r.magic != kHelloMagic) throw std::runtime_error("not a nodespeed tcp comm peer");
        if (r.status != kOk) fail(who + ": refused the handshake: " + status_text(r.status));  // catch closes fd
        if (r.rank != peer) throw std::runtime_error("answered as rank " + std::to_string(r.rank));
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

void TcpComm::accept_higher(int64_t deadline) {
  int missing = size_ - 1 - rank_;
  while (missing > 0) {
    try {
      wait_fd(listen_fd_, POLLIN, deadline, "connect");
    } catch (const std::runtime_error& e) {
      if (aborted_ || broken_) throw;
      std::string ranks;
      for (int p = rank_ + 1; p < size_; ++p)
        if (fds_[p] < 0) ranks += (ranks.empty() ? "" : ", ") + std::to_string(p) + " (" + addrs_[p] + ")";
      fail("tcp comm rank " + std::to_string(rank_) + ": timed out after " +
           std::to_string(opts_.connect_timeout_ms) + " ms waiting for peer rank(s) " + ranks + " to connect");
    }
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    int fd = ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) continue;
    char ip[INET6_ADDRSTRLEN] = "?";
    if (ss.ss_family == AF_INET) inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(&ss)->sin_addr, ip, sizeof ip);
    if (ss.ss_family == AF_INET6) inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr, ip, sizeof ip);
    tune_socket(fd);
    Hello h{};
    uint32_t status = kOk;
    try {
      // A stray client that never speaks must not stall the group: 5 s for its hello.
      read_exact(fd, &h, sizeof h, std::min(deadline, now_ms() + 5000), "connect");
      if (h.magic != kHelloMagic || h.protocol != kProtocol) status = kBadMagic;
      else if (h.nonce != nonce_hash_) status = kBadNonce;
      else if (h.size != size_) status = kBadSize;
      else if (h.rank <= rank_ || h.rank >= size_ || fds_[h.rank] >= 0) status = kBadRank;
      Reply r{kHelloMagic, status, rank_, 0};
      write_exact(fd, &r, sizeof r, deadline, "connect");
    } catch (const std::runtime_error& e) {
      if (aborted_ || broken_) { ::close(fd); throw; }
      status = kBadMagic;
    }
    if (status != kOk) {
      std::lock_guard<std::mutex> lk(mu_);
      refused_.push_back(std::string(ip) + " claiming rank " + std::to_string(h.rank) + ": " + status_text(status));
      ::close(fd);
      continue;
    }
    std::lock_guard<std::mutex> lk(mu_);
    fds_[h.rank] = fd;
    if (aborted_) ::shutdown(fd, SHUT_RDWR);
    --missing;
  }
}

}  // namespace ns
