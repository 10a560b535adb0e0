// One-shot all-reduce and all-gather between the GPUs of one host, through memory each rank maps
// from its peers (CUDA IPC, or peer access when the ranks share a process). A tensor-parallel
// decode step makes 2 all-reduces per layer of one hidden row per token (16 KB at batch 1); NCCL
// takes ~20 us for each on NVLink (its launch, proxy and protocol handshakes), 65 of them a 7B
// step: more than the weights' read time saved by splitting them. Here one kernel copies this
// rank's part into its own mapped buffer, tells every peer by a flag store in the peer's memory,
// waits for their flags, and sums (or gathers) the peers' parts straight over NVLink.
//
// Ordering (why no barrier at the end): each block owns one region and one epoch counter; the
// region is double-buffered by the epoch's parity. A rank writes epoch e + 2 into a region only
// after its epoch e + 1 saw every peer's flag e + 1, which a peer sets only after it finished
// reading epoch e (stream order). Every rank makes the same calls in the same order (TP ranks
// step together), so block counters agree. Sums run in rank order on every rank, so all ranks get
// bit-identical results.
//
// A rank whose peer never arrives spins until abort() (the comm's abort: a dead or hung peer) or
// NODESPEED_P2P_TIMEOUT_S (default 60 s), then reports it through error(). Only compiled with
// NS_WITH_CUDA; used by NcclComm for messages up to max_bytes().
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "engine.h"

namespace ns::cuda {

class P2pCollectives {
 public:
  // All-gathers `bytes` from every rank into `all` (rank order); blocking, collective.
  using Exchange = std::function<void(const void* mine, void* all, size_t bytes)>;
  // Collective: every rank must call it. nullptr, with `why` set, when some rank cannot map every
  // peer's memory (ranks on other hosts, no peer access between the GPUs, IPC refused).
  static std::unique_ptr<P2pCollectives> create(int rank, int size, int device, const Exchange& exchange,
                                                std::string* why);
  ~P2pCollectives();

  // Largest message (bytes per rank) the one-shot kernels take; larger ones go to NCCL.
  size_t max_bytes() const;
  // Each returns false, enqueueing nothing, when the message does not fit (too large, not a
  // multiple of 16 bytes, or a buffer not 16-byte aligned); the caller then uses NCCL.
  bool all_reduce_sum(void* buf, size_t count, DType dt, void* stream);  // in place
  bool all_reduce_add(const float* part, float* acc, size_t count, void* stream);  // acc += sum of parts
  bool all_gather(const void* in, void* out, size_t count, DType dt, void* stream);  // out: size * count
  // Whether all_reduce_add_rmsnorm runs (default; NODESPEED_P2P_NORM=0: no); it returns false otherwise.
  bool fuses_norm() const;
  // acc [rows, cols] += sum of parts, then out = rmsnorm(acc) * w in out_dt (bf16/fp16), one block a
  // row (rows <= 32).
  bool all_reduce_add_rmsnorm(const float* part, float* acc, int rows, int cols, const float* w, float eps,
                              DType out_dt, void* out, void* stream);
  // Kernels waiting for a peer give up at their next poll (any thread may call it).
  void abort();
  // "" or what a kernel reported (a peer that did not arrive in time).
  std::string error() const;

  struct Impl;

 private:
  explicit P2pCollectives(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ns::cuda
