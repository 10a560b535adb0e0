// NcclComm: see nccl_comm.h. The whole file is CUDA-only.
#ifdef NS_WITH_CUDA

#include "comm/nccl_comm.h"

#include <cuda_runtime_api.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <thread>

#include "common/dl.h"
#include "common/settings.h"
#include "cuda/p2p_collectives.h"

namespace ns {
namespace {

struct NcclLib {
  std::string error;  // "" when loaded
  std::string path;
  int version = 0;
  ncclGetVersion_fn GetVersion = nullptr;
  ncclGetUniqueId_fn GetUniqueId = nullptr;
  ncclCommInitRankConfig_fn CommInitRankConfig = nullptr;
  ncclCommGetAsyncError_fn CommGetAsyncError = nullptr;
  ncclCommAbort_fn CommAbort = nullptr;
  ncclGetErrorString_fn GetErrorString = nullptr;
  ncclGetLastError_fn GetLastError = nullptr;  // optional (2.13+)
  ncclAllReduce_fn AllReduce = nullptr;
  ncclAllGather_fn AllGather = nullptr;
  ncclBroadcast_fn Broadcast = nullptr;
  ncclSend_fn Send = nullptr;
  ncclRecv_fn Recv = nullptr;
  ncclGroupStart_fn GroupStart = nullptr;
  ncclGroupEnd_fn GroupEnd = nullptr;
};

const NcclLib& lib() {
  static const NcclLib l = [] {
    NcclLib l;
    dl::Library so = dl::open_library("NCCL", "NODESPEED_NCCL", settings().nccl_path, {"libnccl.so.2", "libnccl.so"});
    if (!so.handle) { l.error = so.error; return l; }
    l.path = so.path;
    std::string missing;
    auto sym = [&](auto& fn, const char* name, bool required = true) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dl::symbol(so.handle, name));
      if (!fn && required) missing += (missing.empty() ? "" : ", ") + std::string(name);
    };
    sym(l.GetVersion, "ncclGetVersion");
    sym(l.GetUniqueId, "ncclGetUniqueId");
    sym(l.CommInitRankConfig, "ncclCommInitRankConfig");
    sym(l.CommGetAsyncError, "ncclCommGetAsyncError");
    sym(l.CommAbort, "ncclCommAbort");
    sym(l.GetErrorString, "ncclGetErrorString");
    sym(l.GetLastError, "ncclGetLastError", false);
    sym(l.AllReduce, "ncclAllReduce");
    sym(l.AllGather, "ncclAllGather");
    sym(l.Broadcast, "ncclBroadcast");
    sym(l.Send, "ncclSend");
    sym(l.Recv, "ncclRecv");
    sym(l.GroupStart, "ncclGroupStart");
    sym(l.GroupEnd, "ncclGroupEnd");
    if (!missing.empty()) { l.error = so.path + " lacks " + missing; return l; }
    l.GetVersion(&l.version);
    if (l.version < NS_NCCL_VERSION(2, 18, 0))
      l.error = so.path + " is NCCL " + std::to_string(l.version) + "; nodespeed needs 2.18 or newer";
    return l;
  }();
  return l;
}

const NcclLib& need_lib() {
  const NcclLib& l = lib();
  if (!l.error.empty()) throw std::runtime_error("nccl: unavailable (" + l.error + ")");
  return l;
}

ncclDataType_t nccl_type(DType dt) {
  switch (dt) {
    case DType::F32: return ncclFloat32;
    case DType::BF16: return ncclBfloat16;
    case DType::F16: return ncclFloat16;
  }
  return ncclFloat32;
}

void cuda_check(cudaError_t e, const std::string& what) {
  if (e != cudaSuccess) throw std::runtime_error("nccl comm: " + what + ": " + cudaGetErrorString(e));
}

}  // namespace

std::string nccl_unavailable_reason() { return lib().error; }

void nccl_unique_id(uint8_t out[NS_NCCL_UNIQUE_ID_BYTES]) {
  ncclUniqueId id{};
  ncclResult_t r = need_lib().GetUniqueId(&id);
  if (r != ncclSuccess) throw std::runtime_error(std::string("nccl: ncclGetUniqueId: ") + lib().GetErrorString(r));
  std::memcpy(out, id.internal, NS_NCCL_UNIQUE_ID_BYTES);
}

NcclComm::NcclComm(int rank, int size, const uint8_t unique_id[NS_NCCL_UNIQUE_ID_BYTES], int device_index,
                   int init_timeout_ms)
    : rank_(rank), size_(size), device_(device_index), init_timeout_ms_(init_timeout_ms) {
  if (size < 1 || rank < 0 || rank >= size)
    throw std::invalid_argument("nccl comm: rank " + std::to_string(rank) + " outside [0, " + std::to_string(size) + ")");
  need_lib();
  std::memcpy(id_.internal, unique_id, NS_NCCL_UNIQUE_ID_BYTES);
}

NcclComm::~NcclComm() {
  abort();  // ncclCommAbort: frees the comm without waiting for peers
  cudaSetDevice(device_);
  if (staging_) cudaFree(staging_);
  if (own_stream_) cudaStreamDestroy(reinterpret_cast<cudaStream_t>(own_stream_));
}

void NcclComm::fail(const std::string& msg) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (error_.empty()) error_ = msg;
  }
  throw std::runtime_error(msg);
}

void NcclComm::use_device(const char* what) {
  if (aborted_) {
    std::lock_guard<std::mutex> lk(mu_);
    throw std::runtime_error(error_.empty() ? "nccl comm rank " + std::to_string(rank_) + ": aborted" : error_);
  }
  cudaError_t e = cudaSetDevice(device_);
  if (e != cudaSuccess)
    fail("nccl comm rank " + std::to_string(rank_) + ": " + what + ": cudaSetDevice(" + std::to_string(device_) +
         "): " + cudaGetErrorString(e));
}

void NcclComm::check(ncclResult_t r, const char* what) {
  const NcclLib& l = lib();
  const auto start = std::chrono::steady_clock::now();
  const bool is_init = std::strcmp(what, "init") == 0;
  while (r == ncclInProgress) {
    std::this_thread::sleep_for(std::chrono::microseconds(20));
    std::lock_guard<std::mutex> lk(mu_);
    if (aborted_ || !comm_) throw std::runtime_error(error_.empty() ? "nccl comm: aborted" : error_);
    ncclResult_t st = ncclSuccess;
    ncclResult_t q = l.CommGetAsyncError(comm_, &st);
    r = q != ncclSuccess ? q : st;
    if (is_init && r == ncclInProgress &&
        std::chrono::steady_clock::now() - start > std::chrono::milliseconds(init_timeout_ms_)) {
      error_ = "nccl comm rank " + std::to_string(rank_) + ": init timed out after " +
               std::to_string(init_timeout_ms_) + " ms (not every rank joined)";
      throw std::runtime_error(error_);
    }
  }
  if (r != ncclSuccess) {
    std::string msg = "nccl comm rank " + std::to_string(rank_) + ": " + what + ": " + l.GetErrorString(r);
    if (l.GetLastError && comm_) {
      const char* last = l.GetLastError(comm_);
      if (last && *last) msg += std::string(" (") + last + ")";
    }
    fail(msg);
  }
}

void NcclComm::init() {
  use_device("init");
  if (comm_) throw std::runtime_error("nccl comm: init() called twice");
  cudaStream_t s = nullptr;
  cuda_check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
  own_stream_ = reinterpret_cast<ns_cudaStream_t>(s);
  ncclConfig_t cfg = ns_nccl_config_initializer();
  cfg.blocking = 0;
  ncclComm_t c = nullptr;
  ncclResult_t r = lib().CommInitRankConfig(&c, size_, id_, rank_, &cfg);
  {
    std::lock_guard<std::mutex> lk(mu_);
    comm_ = c;
    if (aborted_ && comm_) { lib().CommAbort(comm_); comm_ = nullptr; }
  }
  check(r, "init");
  if (size_ > 1) setup_p2p();
}

void NcclComm::setup_p2p() {
  if (!settings().p2p) {
    p2p_status_ = "p2p collectives off (NODESPEED_P2P=0)";
    return;
  }
  std::string why;
  std::unique_ptr<cuda::P2pCollectives> p2p;
  try {
    p2p = cuda::P2pCollectives::create(rank_, size_, device_, [this](const void* mine, void* all, size_t bytes) {
      host_all_gather(mine, all, bytes);
    }, &why);
  } catch (const std::exception& e) {  // the exchange itself failed: the comm is broken anyway
    why = e.what();
  }
  {
    std::lock_guard<std::mutex> lk(mu_);  // abort() reads p2p_
    p2p_ = std::move(p2p);
    if (aborted_ && p2p_) p2p_->abort();
  }
  p2p_status_ = p2p_ ? "p2p collectives up to " + std::to_string(p2p_->max_bytes()) + " bytes" + (p2p_->fuses_norm() ? ", fused norm" : "")
                     : "p2p collectives off (" + why + ")";
  if (rank_ == 0) std::fprintf(stderr, "nodespeed: nccl comm (%d ranks): %s\n", size_, p2p_status_.c_str());
}

bool NcclComm::p2p_ready(const char* what, void* stream) {
  if (!p2p_ || !stream) return false;  // host ops pass no stream: NCCL on the own stream
  use_device(what);
  std::string err = p2p_->error();
  if (!err.empty()) fail(err);
  return true;
}

void NcclComm::abort() {
  std::lock_guard<std::mutex> lk(mu_);
  if (error_.empty()) error_ = "nccl comm rank " + std::to_string(rank_) + ": aborted";
  aborted_ = true;
  if (p2p_) p2p_->abort();  // kernels spinning on a dead peer's flag exit
  if (comm_) {
    lib().CommAbort(comm_);
    comm_ = nullptr;
  }
}

std::string NcclComm::async_error() {
  std::lock_guard<std::mutex> lk(mu_);
  if (!error_.empty()) return error_;
  if (p2p_) {
    std::string err = p2p_->error();
    if (!err.empty()) return err;
  }
  if (!comm_) return "";
  ncclResult_t st = ncclSuccess;
  if (lib().CommGetAsyncError(comm_, &st) != ncclSuccess || (st != ncclSuccess && st != ncclInProgress))
    return "nccl comm rank " + std::to_string(rank_) + ": async error: " + lib().GetErrorString(st);
  return "";
}

ns_cudaStream_t NcclComm::pick(void* stream) const {
  return stream ? static_cast<ns_cudaStream_t>(stream) : own_stream_;
}

#define NS_NCCL_CALL(what, call)                                                          \
  do {                                                                                   \
    std::lock_guard<std::recursive_mutex> serial(op_mu_);                                \
    use_device(what);                                                                    \
    ncclResult_t r_;                                                                     \
    {                                                                                    \
      std::lock_guard<std::mutex> lk(mu_);                                               \
      if (!comm_) throw std::runtime_error(error_.empty() ? "nccl comm: not initialized" : error_); \
      r_ = call;                                                                         \
    }                                                                                    \
    check(r_, what);                                                                     \
  } while (0)

void NcclComm::all_reduce_sum(void* buf, size_t count, DType dt, void* stream) {
  if (p2p_ready("all_reduce", stream) && p2p_->all_reduce_sum(buf, count, dt, stream)) return;
  NS_NCCL_CALL("all_reduce", lib().AllReduce(buf, buf, count, nccl_type(dt), ncclSum, comm_, pick(stream)));
}

bool NcclComm::all_reduce_add_f32(const float* part, float* acc, size_t count, void* stream) {
  return p2p_ready("all_reduce", stream) && p2p_->all_reduce_add(part, acc, count, stream);
}

bool NcclComm::all_reduce_add_rmsnorm(const float* part, float* acc, int rows, int cols, const float* w, float eps,
                                      DType out_dt, void* out, void* stream) {
  return p2p_ && p2p_->fuses_norm() && p2p_ready("all_reduce", stream) &&
         p2p_->all_reduce_add_rmsnorm(part, acc, rows, cols, w, eps, out_dt, out, stream);
}

size_t NcclComm::graph_safe_bytes() const { return p2p_ ? p2p_->max_bytes() : 0; }

void NcclComm::check_healthy() {
  std::string err = async_error();
  if (!err.empty()) throw std::runtime_error(err);
}

void NcclComm::all_gather(const void* in, void* out, size_t count, DType dt, void* stream) {
  if (p2p_ready("all_gather", stream) && p2p_->all_gather(in, out, count, dt, stream)) return;
  NS_NCCL_CALL("all_gather", lib().AllGather(in, out, count, nccl_type(dt), comm_, pick(stream)));
}

void NcclComm::broadcast(void* buf, size_t bytes, int root, void* stream) {
  NS_NCCL_CALL("broadcast", lib().Broadcast(buf, buf, bytes, ncclUint8, root, comm_, pick(stream)));
}

void NcclComm::send(const void* buf, size_t bytes, int peer, void* stream) {
  NS_NCCL_CALL("send", lib().Send(buf, bytes, ncclUint8, peer, comm_, pick(stream)));
}

void NcclComm::recv(void* buf, size_t bytes, int peer, void* stream) {
  NS_NCCL_CALL("recv", lib().Recv(buf, bytes, ncclUint8, peer, comm_, pick(stream)));
}

void NcclComm::wait_stream(const char* what) {
  cudaStream_t s = reinterpret_cast<cudaStream_t>(own_stream_);
  for (;;) {
    cudaError_t e = cudaStreamQuery(s);
    if (e == cudaSuccess) {  // an op abort() cut short completes too: its result is not one
      check_healthy();
      return;
    }
    if (e != cudaErrorNotReady)
      fail("nccl comm rank " + std::to_string(rank_) + ": " + what + ": " + cudaGetErrorString(e));
    std::string err = async_error();  // a dead peer surfaces here, not as a stuck stream
    if (!err.empty()) throw std::runtime_error(err);
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

void NcclComm::ensure_staging(size_t bytes) {
  if (bytes <= staging_bytes_) return;
  if (staging_) cudaFree(staging_);
  staging_ = nullptr;
  staging_bytes_ = 0;
  cuda_check(cudaMalloc(&staging_, bytes), "cudaMalloc staging of " + std::to_string(bytes) + " bytes");
  staging_bytes_ = bytes;
}

void NcclComm::host_all_reduce_sum(void* buf, size_t count, DType dt) {
  std::lock_guard<std::recursive_mutex> serial(op_mu_);  // staging buffer and op order
  use_device("allReduce");
  const size_t bytes = count * dtype_size(dt);
  cudaStream_t s = reinterpret_cast<cudaStream_t>(own_stream_);
  ensure_staging(bytes);
  cuda_check(cudaMemcpyAsync(staging_, buf, bytes, cudaMemcpyHostToDevice, s), "copy to device");
  all_reduce_sum(staging_, count, dt, own_stream_);  // a stream: small ones may take the P2P kernels
  cuda_check(cudaMemcpyAsync(buf, staging_, bytes, cudaMemcpyDeviceToHost, s), "copy to host");
  wait_stream("allReduce");
}

void NcclComm::host_all_gather(const void* in, void* out, size_t bytes) {
  std::lock_guard<std::recursive_mutex> serial(op_mu_);  // staging buffer and op order
  use_device("allGather");
  cudaStream_t s = reinterpret_cast<cudaStream_t>(own_stream_);
  ensure_staging(bytes * size_t(size_ + 1));
  uint8_t* dev_in = static_cast<uint8_t*>(staging_) + bytes * size_t(size_);
  cuda_check(cudaMemcpyAsync(dev_in, in, bytes, cudaMemcpyHostToDevice, s), "copy to device");
  // The P2P gather moves bytes; its dtype only sizes them (2-byte elements).
  if (!(p2p_ && bytes % 2 == 0 && p2p_->all_gather(dev_in, staging_, bytes / 2, DType::BF16, own_stream_)))
    NS_NCCL_CALL("allGather", lib().AllGather(dev_in, staging_, bytes, ncclUint8, comm_, own_stream_));
  cuda_check(cudaMemcpyAsync(out, staging_, bytes * size_t(size_), cudaMemcpyDeviceToHost, s), "copy to host");
  wait_stream("allGather");
}

void NcclComm::host_broadcast(void* buf, size_t bytes, int root) {
  std::lock_guard<std::recursive_mutex> serial(op_mu_);  // staging buffer and op order
  use_device("broadcast");
  cudaStream_t s = reinterpret_cast<cudaStream_t>(own_stream_);
  ensure_staging(bytes);
  if (rank_ == root) cuda_check(cudaMemcpyAsync(staging_, buf, bytes, cudaMemcpyHostToDevice, s), "copy to device");
  broadcast(staging_, bytes, root, nullptr);
  cuda_check(cudaMemcpyAsync(buf, staging_, bytes, cudaMemcpyDeviceToHost, s), "copy to host");
  wait_stream("broadcast");
}

void NcclComm::host_send(const void* buf, size_t bytes, int peer) {
  std::lock_guard<std::recursive_mutex> serial(op_mu_);  // staging buffer and op order
  use_device("send");
  cudaStream_t s = reinterpret_cast<cudaStream_t>(own_stream_);
  ensure_staging(bytes);
  cuda_check(cudaMemcpyAsync(staging_, buf, bytes, cudaMemcpyHostToDevice, s), "copy to device");
  send(staging_, bytes, peer, nullptr);
  wait_stream("send");
}

void NcclComm::host_recv(void* buf, size_t bytes, int peer) {
  std::lock_guard<std::recursive_mutex> serial(op_mu_);  // staging buffer and op order
  use_device("recv");
  cudaStream_t s = reinterpret_cast<cudaStream_t>(own_stream_);
  ensure_staging(bytes);
  recv(staging_, bytes, peer, nullptr);
  cuda_check(cudaMemcpyAsync(buf, staging_, bytes, cudaMemcpyDeviceToHost, s), "copy to host");
  wait_stream("recv");
}

}  // namespace ns

#endif  // NS_WITH_CUDA
