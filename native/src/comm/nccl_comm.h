// The GPU communicator: NCCL, dlopen'ed at run time (native/src/common/dl.h), communicators
// created non-blocking so that no call can wedge: every NCCL call that returns ncclInProgress is
// finished by polling ncclCommGetAsyncError, checking abort() between polls. abort() (any thread)
// calls ncclCommAbort, never ncclCommDestroy (which waits for peers that may be dead).
// Only compiled with NS_WITH_CUDA (the CUDA build, scripts/build-native.mjs).
#pragma once
#ifdef NS_WITH_CUDA

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "comm/nccl_api.h"
#include "engine.h"

namespace ns {
namespace cuda { class P2pCollectives; }

// "" when libnccl.so.2 can be loaded, else why not (where we looked).
std::string nccl_unavailable_reason();
// ncclGetUniqueId: 128 bytes for rank 0 to hand to every rank. Throws "nccl: unavailable (...)".
void nccl_unique_id(uint8_t out[NS_NCCL_UNIQUE_ID_BYTES]);

class NcclComm : public Communicator {
 public:
  NcclComm(int rank, int size, const uint8_t unique_id[NS_NCCL_UNIQUE_ID_BYTES], int device_index,
           int init_timeout_ms = 300000);
  ~NcclComm() override;

  // ncclCommInitRankConfig (non-blocking) on device_index, polled until ready or aborted.
  void init();

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  // Device buffers, enqueued on `stream` (the backend's); returns once NCCL accepted the work.
  void all_reduce_sum(void* buf, size_t count, DType dt, void* stream) override;
  void all_gather(const void* in, void* out, size_t count, DType dt, void* stream) override;
  void broadcast(void* buf, size_t bytes, int root, void* stream) override;
  void send(const void* buf, size_t bytes, int peer, void* stream) override;
  void recv(void* buf, size_t bytes, int peer, void* stream) override;
  void abort() override;
  // Small messages between ranks of one host go through the one-shot P2P kernels
  // (cuda/p2p_collectives.h) when init() could set them up; NCCL otherwise.
  bool all_reduce_add_f32(const float* part, float* acc, size_t count, void* stream) override;
  bool all_reduce_add_rmsnorm(const float* part, float* acc, int rows, int cols, const float* w, float eps,
                              DType out_dt, void* out, void* stream) override;
  size_t graph_safe_bytes() const override;
  void check_healthy() override;  // throws async_error() when it is not ""
  // "p2p collectives up to N bytes" or why they are off.
  const std::string& p2p_status() const { return p2p_status_; }

  // Host-buffer versions for the JS binding: staged through device memory on the comm's own
  // stream and waited for (polling, abortable).
  void host_all_reduce_sum(void* buf, size_t count, DType dt);
  void host_all_gather(const void* in, void* out, size_t bytes);
  void host_broadcast(void* buf, size_t bytes, int root);
  void host_send(const void* buf, size_t bytes, int peer);
  void host_recv(void* buf, size_t bytes, int peer);

  // ncclCommGetAsyncError (or the error that broke the comm) as text; "" when healthy.
  std::string async_error();

 private:
  void check(ncclResult_t r, const char* what);     // waits out ncclInProgress, throws on error
  void wait_stream(const char* what);               // polls the own stream until done
  void ensure_staging(size_t bytes);
  void use_device(const char* what);
  void setup_p2p();                                 // end of init(): collective, never throws
  bool p2p_ready(const char* what, void* stream);   // P2P set up and a stream given; throws what a P2P kernel reported
  [[noreturn]] void fail(const std::string& msg);
  ns_cudaStream_t pick(void* stream) const;

  const int rank_, size_, device_, init_timeout_ms_;
  ncclUniqueId id_{};
  ncclComm_t comm_ = nullptr;
  std::mutex mu_;                   // guards comm_ between polls and abort()
  std::recursive_mutex op_mu_;      // one op (and the staging buffer) at a time, whichever thread
  std::atomic<bool> aborted_{false};
  std::string error_;
  ns_cudaStream_t own_stream_ = nullptr;
  void* staging_ = nullptr;          // device buffer for host_* ops
  size_t staging_bytes_ = 0;
  std::unique_ptr<cuda::P2pCollectives> p2p_;
  std::string p2p_status_ = "p2p collectives not set up";
};

}  // namespace ns

#endif  // NS_WITH_CUDA
