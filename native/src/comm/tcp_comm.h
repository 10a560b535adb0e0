// The CPU communicator: a full mesh of TCP connections between the ranks of a group, with the
// same collectives as NCCL (ns::Communicator, native/src/engine.h) on host buffers.
//
// Forming the group: every rank listen()s on an ephemeral port of its own address, the ports are
// exchanged out of band (the coordinator), then connect() with every rank's "host:port". For each
// pair the lower rank accepts and the higher rank connects. The handshake is a challenge-response
// keyed by the job's secret (HMAC-SHA256 over both sides' fresh nonces, the group's context, the
// ranks and the group size): a peer that does not hold the key, or belongs to another group or
// membership epoch, is refused, and the connector checks the acceptor the same way. The acceptor
// runs every pending handshake at once, each with a short deadline, so silent or slow strays
// cost a re-form nothing; each refused address is recorded once. With `encrypt`, connections
// (between two hosts, or all) carry AES-256-GCM frames under keys derived from the handshake.
//
// Determinism: all_reduce_sum adds the contributions of every element in rank order 0..n-1 with
// f32 accumulation (bf16/f16 are rounded once at the end), so every rank gets bitwise-identical
// results and the sum does not depend on which process got which rank. Small buffers use a
// direct exchange (everyone sends everything to everyone: one round trip); large ones a
// reduce-scatter (rank p owns chunk p and receives only that chunk from every peer) followed by
// an all-gather. A ring would send the same bytes per rank but rotate the summation order with
// the chunk, which breaks the rank-order rule; on a full mesh the direct scatter costs the same.
//
// Threads: calls from several threads (the engine's step thread doing TP all-reduces, the JS
// binding's comm thread) are serialized, never interleaved on the wire; every rank must still
// issue the same sequence of ops. Keep TP traffic and other traffic on separate comms.
//
// Failure: I/O is non-blocking and poll()-based. abort() (any thread) wakes every wait through an
// eventfd and shuts the sockets down; a peer that closes or resets its connection, or an op that
// overruns op_timeout_ms, fails the call with an error naming the peer rank and address. After
// the first failure the communicator is broken: every later call throws the stored error at once.
// Its sockets stay open until abort(), so each peer's error names the rank that really failed.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "comm/tcp_auth.h"
#include "engine.h"

namespace ns {

struct TcpCommOptions {
  std::string context;             // which group and membership epoch; peers must present the same one
  std::string key;                 // the job's secret (32 bytes): peers must prove they hold it
  enum class Encrypt { kOff, kCrossHost, kAll };
  Encrypt encrypt = Encrypt::kOff;  // AES-256-GCM frames: never, on connections between two hosts, or on all
  int connect_timeout_ms = 60000;  // listen→connect: retries until this deadline
  int handshake_timeout_ms = 3000;  // one connection's handshake, from accept or connect
  int op_timeout_ms = 0;           // per collective; 0 = no limit (EOF/RST/keepalive still detect death)
};

class TcpComm : public Communicator {
 public:
  TcpComm(int rank, int size, TcpCommOptions opts);
  ~TcpComm() override;
  TcpComm(const TcpComm&) = delete;
  TcpComm& operator=(const TcpComm&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  // Binds host:0 and starts listening; returns the port the kernel chose.
  int listen(const std::string& host);
  // addresses[r] = "host:port" of rank r (IPv6 as "[addr]:port"); our own entry is not used.
  void connect(const std::vector<std::string>& addresses);

  void all_reduce_sum(void* buf, size_t count, DType dt, void* stream) override;
  void all_gather(const void* in, void* out, size_t count, DType dt, void* stream) override;
  // all_gather of raw bytes (the JS binding's allGather takes any typed array).
  void all_gather_bytes(const void* in, void* out, size_t bytes);
  void broadcast(void* buf, size_t bytes, int root, void* stream) override;
  void send(const void* buf, size_t bytes, int peer, void* stream) override;
  void recv(void* buf, size_t bytes, int peer, void* stream) override;
  void abort() override;

  // The error that broke the communicator, else a peer connection that hung up or has a socket
  // error (polled without blocking); "" while healthy.
  std::string async_error() const;
  // Connections refused while forming the group, one line per address ("ip: reason (N connections)"), for logs.
  std::vector<std::string> refused() const;
  // How many of this rank's peer connections are encrypted.
  int encrypted_links() const;

  // Buffers up to this size use the direct exchange in all_reduce_sum.
  static constexpr size_t kDirectAllReduceBytes = 64 * 1024;

 private:
  struct Xfer {  // one framed message to or from one peer, progressed by transfer()
    int peer = -1;
    bool is_send = false;
    uint8_t* data = nullptr;
    size_t bytes = 0;
    uint32_t op = 0;
    uint8_t hdr[16] = {};
    size_t hdr_done = 0;
    size_t done = 0;
    // Encrypted connections: the payload is sealed into its link's buffer before the first byte
    // is sent (the caller's buffer is never modified); a received payload is opened in place.
    bool crypt = false;
    uint8_t* sealed = nullptr;
    uint8_t tag[16] = {};
    size_t tag_done = 0;
  };
  static Xfer make_send(int peer, uint32_t op, const void* data, size_t bytes);
  static Xfer make_recv(int peer, uint32_t op, void* data, size_t bytes);

  // Moves every Xfer to completion concurrently (so no pair of ranks can deadlock on full
  // socket buffers), or throws after breaking the communicator.
  void transfer(std::vector<Xfer>& xs, const char* what);
  bool progress(Xfer& x, const char* what);  // false: would block
  [[noreturn]] void fail(const std::string& msg);
  void check_usable(const char* what);
  std::string peer_name(int peer) const;
  void shutdown_all_locked();

  // Mesh forming (tcp_mesh.cc).
  int connect_to_lower(int peer, const std::string& address, int64_t deadline_ms);
  void accept_higher(int64_t deadline_ms);
  void refuse(const std::string& ip, const std::string& why);
  void add_link(int peer, bool encrypted, const uint8_t* send_key, const uint8_t* recv_key);
  bool encrypts(int fd) const;
  void wait_fd(int fd, short events, int64_t deadline_ms, const std::string& what);
  void read_exact(int fd, void* buf, size_t n, int64_t deadline_ms, const std::string& what);
  void write_exact(int fd, const void* buf, size_t n, int64_t deadline_ms, const std::string& what);

  void reduce_rank_order(DType dt, void* out, const std::vector<const uint8_t*>& srcs, size_t count);

  const int rank_;
  const int size_;
  const TcpCommOptions opts_;
  uint8_t context_hash_[16];
  int wake_fd_ = -1;    // eventfd written by abort()
  int listen_fd_ = -1;
  std::vector<int> fds_;              // by peer rank; -1 for self
  std::vector<std::string> addrs_;    // by peer rank, for messages
  std::atomic<bool> aborted_{false};
  std::atomic<bool> broken_{false};
  mutable std::mutex mu_;             // guards error_, refused_, fds_ against abort()
  std::mutex op_mu_;                  // one op at a time on the wire, whichever thread calls
  std::string error_;
  struct Refused { std::string why; int count = 0; };
  std::vector<std::pair<std::string, Refused>> refused_;  // by address, in order of first refusal
  // One send per peer is in flight at a time (every op sends each peer at most one message), so
  // one sealing buffer per link, grown as needed, serves every encrypted send to that peer.
  struct Link { std::unique_ptr<FrameCipher> send, recv; std::vector<uint8_t> sealed; };
  std::vector<Link> links_;           // by peer rank; ciphers only on encrypted connections
  std::vector<uint8_t> scratch_;
  bool connected_ = false;
};

}  // namespace ns
