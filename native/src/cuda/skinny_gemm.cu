// Y[M, N] = X[M, K] · W[N, K]^T for decode batches (1 <= M <= 64 rows) on tensor cores, reading
// the weights once at close to copy bandwidth. cuBLAS reads a 7B's weights at ~65% of it in a
// batch-64 decode step (H200, bench/results/gemm-algos-h200.json: 4.94 ms of GEMMs a step against
// 3.2 ms for the bytes); opt-in with NODESPEED_CUDA_SKINNY=1 until measured (never run on a GPU yet).
//
// A block of 8 warps owns 128 output features (16 per warp) and one K slice (split-K when N alone
// gives too few blocks to fill the GPU). It streams 64-wide K chunks of its 128 weight rows and of
// the M activation rows through a 4-stage cp.async ring into XOR-swizzled shared memory, and each
// warp runs mma.sync m16n8k16 with X as the A operand (rows = tokens, as Q in the flash kernel) and
// W as the B operand (rows = features, as K in the flash kernel): the same index maps
// (flash_layout.h), checked lane by lane on the host by test/flash-emu/skinny_emu.cc. The first
// weight chunks are requested before griddepcontrol.wait (weights never depend on the previous
// kernel), the activations after. One K slice writes Y directly in the output mode; several write
// fp32 partials that skinny_reduce_kernel sums in slice order (deterministic).
#include <algorithm>
#include <atomic>

#include "cuda/cuda_common.h"
#include "cuda/flash_layout.h"
#include "cuda/kernels.h"
#include "cuda/mma.h"
#include "cuda/skinny_plan.h"

namespace ns::cuda {
namespace {

using flash::swz;
using namespace skinny;  // kTileN, kTileK, kStages, kThreads, kMaxM, plan()

template <typename T, int MT>
constexpr size_t smem_bytes() { return sizeof(T) * kStages * (kTileN + 16 * MT) * kTileK; }

template <typename T>
__device__ __forceinline__ void store_out(void* y, size_t i, float v, GemvOut mode) {
  if (mode == GemvOut::Act) static_cast<T*>(y)[i] = from_f<T>(v);
  else if (mode == GemvOut::F32) static_cast<float*>(y)[i] = v;
  else static_cast<float*>(y)[i] += v;
}

// MT: 16-row m-tiles of X (M <= 16 MT). part == nullptr: one K slice, Y written in `mode`.
template <typename T, int MT>
__global__ void __launch_bounds__(kThreads) skinny_gemm_kernel(const T* __restrict__ x, const T* __restrict__ w, int M,
                                                               int N, int K, int k_per_split, float* __restrict__ part,
                                                               void* y, GemvOut mode) {
  extern __shared__ __align__(128) unsigned char smem[];
  T* sW = reinterpret_cast<T*>(smem);                // [kStages][kTileN * kTileK]
  T* sX = sW + kStages * kTileN * kTileK;            // [kStages][16 MT * kTileK]
  const int n0 = blockIdx.x * kTileN;
  const int k_begin = blockIdx.y * k_per_split;
  const int chunks = max(0, (min(K, k_begin + k_per_split) - k_begin) / kTileK);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

  auto load_w = [&](int chunk) {
    T* dst = sW + (chunk % kStages) * kTileN * kTileK;
    const T* src = w + (size_t)n0 * K + k_begin + chunk * kTileK;
#pragma unroll
    for (int i = 0; i < kTileN * 8 / kThreads; ++i) {
      const int idx = threadIdx.x + i * kThreads, r = idx >> 3, c = idx & 7;
      cp_async16(smem_addr(dst + swz<kTileK>(r, c)), src + (size_t)r * K + c * 8, true);
    }
  };
  auto load_x = [&](int chunk) {
    T* dst = sX + (chunk % kStages) * 16 * MT * kTileK;
    const T* src = x + k_begin + chunk * kTileK;
    for (int idx = threadIdx.x; idx < 16 * MT * 8; idx += kThreads) {
      const int r = idx >> 3, c = idx & 7;
      const bool valid = r < M;  // rows past M are zeros (their outputs are not written)
      cp_async16(smem_addr(dst + swz<kTileK>(r, c)), src + (size_t)(valid ? r : 0) * K + c * 8, valid);
    }
  };

  // Prologue: the weight chunks of stages 0..kStages-2 before waiting for the previous kernel.
  for (int c = 0; c < kStages - 1; ++c)
    if (c < chunks) load_w(c);
  grid_dependency_wait();
  for (int c = 0; c < kStages - 1; ++c) {  // one commit group per stage (the first also holds the early weights)
    if (c < chunks) load_x(c);
    cp_async_commit();
  }

  float acc[MT][2][4] = {};
  for (int c = 0; c < chunks; ++c) {
    cp_async_wait<kStages - 2>();  // chunk c has landed (for this thread) ...
    __syncthreads();               // ... for every thread; and every warp is done with chunk c - 1's stage
    if (c + kStages - 1 < chunks) {
      load_w(c + kStages - 1);
      load_x(c + kStages - 1);
    }
    cp_async_commit();
    const T* cw = sW + (c % kStages) * kTileN * kTileK;
    const T* cx = sX + (c % kStages) * 16 * MT * kTileK;
#pragma unroll
    for (int ks = 0; ks < kTileK / 16; ++ks) {
      uint32_t b[4];  // features 16 warp..: {b0, b1} of n-tile 0, {b2, b3} of n-tile 1
      ldsm_x4(smem_addr(cw + swz<kTileK>(flash::k_row(warp, lane), flash::k_chunk(ks, lane))), b);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        uint32_t a[4];
        ldsm_x4(smem_addr(cx + swz<kTileK>(flash::q_row(mt, lane), flash::q_chunk(ks, lane))), a);
        mma16816(acc[mt][0], a, b[0], b[1], static_cast<T*>(nullptr));
        mma16816(acc[mt][1], a, b[2], b[3], static_cast<T*>(nullptr));
      }
    }
  }
  cp_async_wait<0>();

#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int row = mt * 16 + flash::c_row(lane, e);
        if (row >= M) continue;
        const size_t i = (size_t)row * N + n0 + warp * 16 + nt * 8 + flash::c_col(lane, e);
        if (part) part[(size_t)blockIdx.y * M * N + i] = acc[mt][nt][e];
        else store_out<T>(y, i, acc[mt][nt][e], mode);
      }
}

// Sums the K slices' partials in slice order and writes Y in the output mode.
template <typename T>
__global__ void skinny_reduce_kernel(const float* __restrict__ part, int splits, size_t n, void* y, GemvOut mode) {
  grid_dependency_wait();
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    float s = 0.f;
    for (int k = 0; k < splits; ++k) s += part[k * n + i];
    store_out<T>(y, i, s, mode);
  }
}

template <typename T, int MT>
void launch_skinny(const T* x, const T* w, int M, int N, int K, int splits, int k_per_split, float* part, void* y,
                   GemvOut mode, cudaStream_t s) {
  // > 48 KB of dynamic shared memory needs the opt-in, once per device (one process may drive several).
  static std::atomic<uint64_t> configured{0};
  int dev = 0;
  check(cudaGetDevice(&dev), "skinny_gemm: cudaGetDevice");
  const uint64_t bit = 1ull << (dev & 63);
  if (!(configured.load() & bit)) {
    check(cudaFuncSetAttribute(skinny_gemm_kernel<T, MT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(smem_bytes<T, MT>())),
          "skinny_gemm: reserving shared memory");
    configured.fetch_or(bit);
  }
  launch_smem("skinny_gemm", skinny_gemm_kernel<T, MT>, dim3(N / kTileN, splits), dim3(kThreads), smem_bytes<T, MT>(), s, x, w,
              M, N, K, k_per_split, splits > 1 ? part : nullptr, y, mode);
}

}  // namespace

bool skinny_gemm(DType act, const void* x, const void* w, int M, int N, int K, void* y, GemvOut mode, float* ws,
                 size_t ws_bytes, int sm_count, cudaStream_t s) {
  const auto aligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  if (M < 1 || M > kMaxM || N % kTileN != 0 || K % kTileK != 0 || !aligned(x) || !aligned(w)) return false;
  const Plan p = plan(N, K, sm_count);
  const int splits = p.splits, k_per_split = p.k_per_split;
  if (splits > 1 && (size_t)splits * M * N * sizeof(float) > ws_bytes) return false;
  const int MT = (M + 15) / 16;
  NS_DISPATCH_ACT(act, E, {
    const E* xe = static_cast<const E*>(x);
    const E* we = static_cast<const E*>(w);
    switch (MT) {
      case 1: launch_skinny<E, 1>(xe, we, M, N, K, splits, k_per_split, ws, y, mode, s); break;
      case 2: launch_skinny<E, 2>(xe, we, M, N, K, splits, k_per_split, ws, y, mode, s); break;
      case 3: launch_skinny<E, 3>(xe, we, M, N, K, splits, k_per_split, ws, y, mode, s); break;
      default: launch_skinny<E, 4>(xe, we, M, N, K, splits, k_per_split, ws, y, mode, s); break;
    }
    if (splits > 1) {
      const size_t n = (size_t)M * N;
      launch("skinny_reduce", skinny_reduce_kernel<E>, dim3(ceil_div(n, 256 * 4)), dim3(256), s, ws, splits, n, y, mode);
    }
  });
  NS_LAUNCHED("skinny_gemm");
  return true;
}

}  // namespace ns::cuda
