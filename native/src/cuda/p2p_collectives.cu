// P2pCollectives: see p2p_collectives.h.
#include "cuda/p2p_collectives.h"

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <vector>

#include "common/settings.h"
#include "cuda/cuda_common.h"

namespace ns::cuda {
namespace {

constexpr int kMaxRanks = 8;
constexpr int kBlocks = 32;                                 // regions (and blocks) at most
constexpr size_t kRegionBytes = 64 << 10;                   // one block's share of a message
constexpr size_t kParityBytes = kBlocks * kRegionBytes;     // one epoch parity: 2 MiB
constexpr size_t kFlagBytes = 4096;                         // flags[kBlocks][kMaxRanks] u32, padded
constexpr size_t kBufferBytes = kFlagBytes + 2 * kParityBytes;
constexpr int kThreads = 256;
constexpr size_t kMinBlockBytes = 4096;                     // a 16 KB row takes 4 blocks

struct Peers {
  char* data[kMaxRanks];       // each rank's parity-0 region 0, as mapped in this process
  uint32_t* flags[kMaxRanks];  // each rank's flags
};

struct Control {               // mapped pinned host memory, read by spinning kernels
  int abort;
  int timed_out;
};

__device__ __forceinline__ void store_release(uint32_t* p, uint32_t v) {
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ uint32_t load_acquire(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ uint64_t global_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

struct Call {
  Peers peers;
  int rank, world;
  uint32_t* counters;          // this rank's per-block epoch counters (device memory)
  volatile Control* ctl;       // device pointer to the mapped host Control
  uint64_t timeout_ns;
  size_t nvec, vper;           // 16-byte vectors in this rank's part; per block
};

// Block b's epoch, region offset and vector range; false when this block has no work.
struct Slot {
  uint32_t epoch;
  size_t off, v0, v1;
};

// Every block of every rank runs this once per call: publish this block's epoch to each peer,
// wait for theirs. `s_bail` is set when the wait was abandoned (abort or timeout).
__device__ bool exchange_flags(const Call& c, uint32_t epoch) {
  __shared__ int s_bail;
  if (threadIdx.x == 0) s_bail = 0;
  __syncthreads();  // this block's region writes come before the flag stores below
  const int p = threadIdx.x;
  if (p < c.world && p != c.rank) {
    store_release(c.peers.flags[p] + blockIdx.x * kMaxRanks + c.rank, epoch);
    const uint32_t* mine = c.peers.flags[c.rank] + blockIdx.x * kMaxRanks + p;
    const uint64_t start = global_ns();
    for (unsigned spins = 1; static_cast<int32_t>(load_acquire(mine) - epoch) < 0; ++spins) {
      if ((spins & 1023) == 0) {
        if (c.ctl->abort) { s_bail = 1; break; }
        if (global_ns() - start > c.timeout_ns) { c.ctl->timed_out = 1; s_bail = 1; break; }
      }
    }
  }
  __syncthreads();
  return s_bail == 0;
}

__device__ Slot begin(const Call& c, const int4* in) {
  grid_dependency_wait();
  __shared__ uint32_t s_epoch;
  if (threadIdx.x == 0) s_epoch = ++c.counters[blockIdx.x];
  __syncthreads();
  Slot s;
  s.epoch = s_epoch;
  s.off = (s.epoch & 1) * kParityBytes + blockIdx.x * kRegionBytes;
  s.v0 = blockIdx.x * c.vper;
  s.v1 = s.v0 + c.vper < c.nvec ? s.v0 + c.vper : c.nvec;
  int4* own = reinterpret_cast<int4*>(c.peers.data[c.rank] + s.off);
  for (size_t v = s.v0 + threadIdx.x; v < s.v1; v += blockDim.x) own[v - s.v0] = in[v];
  return s;
}

__device__ __forceinline__ int4 peer_vec(const Call& c, const Slot& s, int p, size_t v) {
  return __ldcv(reinterpret_cast<const int4*>(c.peers.data[p] + s.off) + (v - s.v0));
}

template <typename T>
__device__ __forceinline__ void add_vec(const int4& x, float* acc) {
  constexpr int N = 16 / sizeof(T);
  const T* e = reinterpret_cast<const T*>(&x);
#pragma unroll
  for (int i = 0; i < N; ++i) acc[i] += to_f(e[i]);
}

// kAdd (T = float): acc_out[i] += sum; else buf (= in) gets the sum, in place.
template <typename T, bool kAdd>
__global__ void p2p_reduce_kernel(Call c, int4* buf, float* acc_out) {
  const Slot s = begin(c, buf);
  if (!exchange_flags(c, s.epoch)) return;
  constexpr int N = 16 / sizeof(T);
  for (size_t v = s.v0 + threadIdx.x; v < s.v1; v += blockDim.x) {
    float acc[N] = {};
    for (int p = 0; p < c.world; ++p) add_vec<T>(p == c.rank ? buf[v] : peer_vec(c, s, p, v), acc);
    if constexpr (kAdd) {
      float4* o = reinterpret_cast<float4*>(acc_out) + v;
      float4 r = *o;
      r.x += acc[0]; r.y += acc[1]; r.z += acc[2]; r.w += acc[3];
      *o = r;
    } else {
      int4 r;
      T* e = reinterpret_cast<T*>(&r);
#pragma unroll
      for (int i = 0; i < N; ++i) e[i] = from_f<T>(acc[i]);
      buf[v] = r;
    }
  }
}

// One block per row: acc[row] += sum of the ranks' parts, then out[row] = rmsnorm(acc[row]) * w
// (the residual stream's next norm, fused: one kernel instead of three per row-parallel layer).
template <typename T>
__global__ void p2p_reduce_norm_kernel(Call c, const int4* part, float* acc, const float* w, float eps, T* out, int cols) {
  const Slot s = begin(c, part);
  if (!exchange_flags(c, s.epoch)) return;
  float4* a4 = reinterpret_cast<float4*>(acc);
  float ss = 0.f;
  for (size_t v = s.v0 + threadIdx.x; v < s.v1; v += blockDim.x) {
    float sum[4] = {};
    for (int p = 0; p < c.world; ++p) add_vec<float>(p == c.rank ? part[v] : peer_vec(c, s, p, v), sum);
    float4 r = a4[v];
    r.x += sum[0]; r.y += sum[1]; r.z += sum[2]; r.w += sum[3];
    a4[v] = r;
    ss += r.x * r.x + r.y * r.y + r.z * r.z + r.w * r.w;
  }
  __shared__ float warp_sums[32];
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = ss;
  __syncthreads();
  float total = 0.f;
  for (int i = 0; i < (int)(blockDim.x >> 5); ++i) total += warp_sums[i];
  const float inv = rsqrtf(total / cols + eps);
  const float4* w4 = reinterpret_cast<const float4*>(w);
  for (size_t v = s.v0 + threadIdx.x; v < s.v1; v += blockDim.x) {
    const float4 r = a4[v], g = w4[v - s.v0];
    T* o = out + 4 * v;
    o[0] = from_f<T>(r.x * inv * g.x);
    o[1] = from_f<T>(r.y * inv * g.y);
    o[2] = from_f<T>(r.z * inv * g.z);
    o[3] = from_f<T>(r.w * inv * g.w);
  }
}

__global__ void p2p_gather_kernel(Call c, const int4* in, int4* out) {
  const Slot s = begin(c, in);
  if (!exchange_flags(c, s.epoch)) return;
  for (int p = 0; p < c.world; ++p)
    for (size_t v = s.v0 + threadIdx.x; v < s.v1; v += blockDim.x)
      out[p * c.nvec + v] = p == c.rank ? in[v] : peer_vec(c, s, p, v);
}

std::string boot_id() {
  std::ifstream f("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(f, id);
  return id;
}

// What each rank tells the others at setup.
struct Card {
  char boot_id[48];
  int32_t pid;
  int32_t device;
  uint64_t ptr;
  cudaIpcMemHandle_t handle;
  int32_t ok;
  char why[160];
};

}  // namespace

struct P2pCollectives::Impl {
  int rank = 0, world = 0, device = 0;
  char* base = nullptr;           // own buffer: flags, then two parities of kBlocks regions
  uint32_t* counters = nullptr;
  Control* ctl_host = nullptr;
  Control* ctl_dev = nullptr;
  Peers peers{};
  bool opened[kMaxRanks] = {};    // IPC mappings to close
  uint64_t timeout_ns = 60ull * 1000000000ull;

  ~Impl() {
    cudaSetDevice(device);
    for (int p = 0; p < world; ++p)
      if (opened[p]) cudaIpcCloseMemHandle(peers.data[p] - kFlagBytes);
    if (base) cudaFree(base);
    if (counters) cudaFree(counters);
    if (ctl_host) cudaFreeHost(ctl_host);
  }

  Call call(size_t bytes) const {
    Call c{peers, rank, world, counters, ctl_dev, timeout_ns, bytes / 16, 0};
    const size_t blocks = std::min<size_t>(kBlocks, std::max<size_t>(1, (bytes + kMinBlockBytes - 1) / kMinBlockBytes));
    c.vper = (c.nvec + blocks - 1) / blocks;
    return c;
  }
  unsigned blocks(const Call& c) const { return ceil_div(c.nvec, c.vper); }
  bool fits(const void* a, const void* b, size_t bytes) const {
    const auto aligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
    return bytes > 0 && bytes % 16 == 0 && aligned(a) && aligned(b) && (bytes / 16 + kBlocks - 1) / kBlocks * 16 <= kRegionBytes;
  }
};

P2pCollectives::P2pCollectives(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
P2pCollectives::~P2pCollectives() = default;

std::unique_ptr<P2pCollectives> P2pCollectives::create(int rank, int size, int device, const Exchange& exchange,
                                                       std::string* why) {
  auto im = std::make_unique<Impl>();
  im->rank = rank;
  im->world = size;
  im->device = device;
  im->timeout_ns = static_cast<uint64_t>(settings().p2p_timeout_s * 1e9);
  Card mine{};
  const std::string boot = boot_id();
  std::strncpy(mine.boot_id, boot.c_str(), sizeof mine.boot_id - 1);
  mine.pid = static_cast<int32_t>(getpid());
  mine.device = device;
  std::string local_why;
  // Local setup; errors are recorded, not thrown: every rank must reach both exchanges below.
  try {
    if (size < 2 || size > kMaxRanks) throw std::runtime_error(std::to_string(size) + " ranks (one-shot collectives take 2.." + std::to_string(kMaxRanks) + ")");
    if (boot.empty()) throw std::runtime_error("no /proc/sys/kernel/random/boot_id to tell hosts apart");
    NS_CUDA(cudaSetDevice(device));
    void* p = nullptr;
    NS_CUDA(cudaMalloc(&p, kBufferBytes));
    im->base = static_cast<char*>(p);
    NS_CUDA(cudaMemset(im->base, 0, kBufferBytes));
    NS_CUDA(cudaMalloc(&p, kBlocks * sizeof(uint32_t)));
    im->counters = static_cast<uint32_t*>(p);
    NS_CUDA(cudaMemset(im->counters, 0, kBlocks * sizeof(uint32_t)));
    NS_CUDA(cudaHostAlloc(&p, sizeof(Control), cudaHostAllocMapped | cudaHostAllocPortable));
    im->ctl_host = static_cast<Control*>(p);
    std::memset(im->ctl_host, 0, sizeof(Control));
    NS_CUDA(cudaHostGetDevicePointer(&p, im->ctl_host, 0));
    im->ctl_dev = static_cast<Control*>(p);
    NS_CUDA(cudaDeviceSynchronize());
    NS_CUDA(cudaIpcGetMemHandle(&mine.handle, im->base));
    mine.ptr = reinterpret_cast<uint64_t>(im->base);
    mine.ok = 1;
  } catch (const std::exception& e) {
    local_why = e.what();
    std::strncpy(mine.why, e.what(), sizeof mine.why - 1);
  }
  std::vector<Card> all(size > 0 ? size : 1);
  exchange(&mine, all.data(), sizeof(Card));
  for (int p = 0; p < size && mine.ok; ++p) {
    if (!all[p].ok) { local_why = "rank " + std::to_string(p) + ": " + all[p].why; mine.ok = 0; }
    else if (std::strncmp(all[p].boot_id, mine.boot_id, sizeof mine.boot_id) != 0) { local_why = "ranks on different hosts"; mine.ok = 0; }
  }
  // Map every peer's buffer (only when every rank set up its own).
  for (int p = 0; p < size && mine.ok; ++p) {
    char* peer = nullptr;
    cudaError_t e = cudaSuccess;
    if (p == rank) peer = im->base;
    else if (all[p].pid == mine.pid) {  // same process (a test's in-process TP): peer access
      int can = 0;
      e = cudaDeviceCanAccessPeer(&can, device, all[p].device);
      if (e == cudaSuccess && !can) { local_why = "no peer access from cuda:" + std::to_string(device) + " to cuda:" + std::to_string(all[p].device); mine.ok = 0; break; }
      if (e == cudaSuccess) e = cudaDeviceEnablePeerAccess(all[p].device, 0);
      if (e == cudaErrorPeerAccessAlreadyEnabled) { cudaGetLastError(); e = cudaSuccess; }
      peer = reinterpret_cast<char*>(all[p].ptr);
    } else {
      void* q = nullptr;
      e = cudaIpcOpenMemHandle(&q, all[p].handle, cudaIpcMemLazyEnablePeerAccess);
      if (e == cudaSuccess) { peer = static_cast<char*>(q); im->opened[p] = true; }
    }
    if (e != cudaSuccess) {
      cudaGetLastError();
      local_why = "mapping rank " + std::to_string(p) + "'s buffer: " + cudaGetErrorString(e);
      mine.ok = 0;
      break;
    }
    im->peers.flags[p] = reinterpret_cast<uint32_t*>(peer);
    im->peers.data[p] = peer + kFlagBytes;
  }
  std::strncpy(mine.why, local_why.c_str(), sizeof mine.why - 1);
  exchange(&mine, all.data(), sizeof(Card));
  for (int p = 0; p < size; ++p)
    if (!all[p].ok) {
      if (why) *why = p == rank || !local_why.empty() ? local_why : "rank " + std::to_string(p) + ": " + all[p].why;
      return nullptr;
    }
  return std::unique_ptr<P2pCollectives>(new P2pCollectives(std::move(im)));
}

size_t P2pCollectives::max_bytes() const { return kParityBytes; }

// On by default (NODESPEED_P2P_NORM=0 turns it off). Each thread owns one 16-byte vector of the row
// (1024 threads for 4096), so a row's peer loads are all in flight at once: tp-2 batch-1 serving
// 319.7 -> 333.4 tok/s on 2 H200s, and 333.3 in a second run (bench/results/serve-cuda-h200x2-ab6-bbaa8c7.json).
// 256 threads looping over a row (4 dependent NVLink round trips for a 4096-wide row) made the
// batch-1 tp-2 step slower than no fusion (3.31 vs 3.05 ms, bench/results/tp-step-h200x2.json).
bool P2pCollectives::fuses_norm() const {
  static const bool enabled = settings().p2p_norm;
  return enabled;
}

bool P2pCollectives::all_reduce_sum(void* buf, size_t count, DType dt, void* stream) {
  const size_t bytes = count * dtype_size(dt);
  if (!impl_->fits(buf, buf, bytes)) return false;
  const Call c = impl_->call(bytes);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  int4* b = static_cast<int4*>(buf);
  switch (dt) {
    case DType::F32: launch("p2p all_reduce", p2p_reduce_kernel<float, false>, dim3(impl_->blocks(c)), dim3(kThreads), s, c, b, nullptr); break;
    case DType::BF16: launch("p2p all_reduce", p2p_reduce_kernel<__nv_bfloat16, false>, dim3(impl_->blocks(c)), dim3(kThreads), s, c, b, nullptr); break;
    case DType::F16: launch("p2p all_reduce", p2p_reduce_kernel<__half, false>, dim3(impl_->blocks(c)), dim3(kThreads), s, c, b, nullptr); break;
  }
  return true;
}

bool P2pCollectives::all_reduce_add(const float* part, float* acc, size_t count, void* stream) {
  const size_t bytes = count * sizeof(float);
  if (!impl_->fits(part, acc, bytes)) return false;
  const Call c = impl_->call(bytes);
  launch("p2p all_reduce_add", p2p_reduce_kernel<float, true>, dim3(impl_->blocks(c)), dim3(kThreads),
         static_cast<cudaStream_t>(stream), c, reinterpret_cast<int4*>(const_cast<float*>(part)), acc);
  return true;
}

bool P2pCollectives::all_reduce_add_rmsnorm(const float* part, float* acc, int rows, int cols, const float* w,
                                            float eps, DType out_dt, void* out, void* stream) {
  const size_t row_bytes = static_cast<size_t>(cols) * sizeof(float);
  if (rows < 1 || rows > kBlocks || cols % 4 != 0 || row_bytes > kRegionBytes || out_dt == DType::F32 ||
      !impl_->fits(part, acc, row_bytes * rows) || (reinterpret_cast<uintptr_t>(w) & 15) != 0)
    return false;
  if (!fuses_norm()) return false;
  Call c = impl_->call(row_bytes * rows);
  c.vper = row_bytes / 16;  // one block per row
  const unsigned threads = std::min<unsigned>(1024, (c.vper + 31) / 32 * 32);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int4* p = reinterpret_cast<const int4*>(part);
  if (out_dt == DType::BF16)
    launch("p2p all_reduce_rmsnorm", p2p_reduce_norm_kernel<__nv_bfloat16>, dim3(rows), dim3(threads), s, c, p, acc, w, eps, static_cast<__nv_bfloat16*>(out), cols);
  else
    launch("p2p all_reduce_rmsnorm", p2p_reduce_norm_kernel<__half>, dim3(rows), dim3(threads), s, c, p, acc, w, eps, static_cast<__half*>(out), cols);
  return true;
}

bool P2pCollectives::all_gather(const void* in, void* out, size_t count, DType dt, void* stream) {
  const size_t bytes = count * dtype_size(dt);
  if (!impl_->fits(in, out, bytes)) return false;
  const Call c = impl_->call(bytes);
  launch("p2p all_gather", p2p_gather_kernel, dim3(impl_->blocks(c)), dim3(kThreads), static_cast<cudaStream_t>(stream),
         c, static_cast<const int4*>(in), static_cast<int4*>(out));
  return true;
}

void P2pCollectives::abort() {
  reinterpret_cast<volatile Control*>(impl_->ctl_host)->abort = 1;
}

std::string P2pCollectives::error() const {
  if (!reinterpret_cast<volatile Control*>(impl_->ctl_host)->timed_out) return "";
  return "p2p collectives rank " + std::to_string(impl_->rank) + ": a peer did not arrive within " +
         std::to_string(impl_->timeout_ns / 1000000000ull) + " s (dead or hung; NODESPEED_P2P_TIMEOUT_S)";
}

}  // namespace ns::cuda
