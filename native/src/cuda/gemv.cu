// Decode-time matrix-vector products (1..4 rows): the step is bound by reading the weights once,
// so warps stream weight rows with 16-byte loads, four in flight per lane,
// reusing each weight load for every input row. Needs K % 8 == 0 (callers fall back to cuBLAS).
// gemv_fused: the same rows, with SwiGLU or RoPE + the KV write as the epilogue (gemv_common.h).
#include <cstdlib>
#include <stdexcept>

#include "cuda/cuda_common.h"
#include "cuda/gemv_common.h"
#include "cuda/kernels.h"

namespace ns::cuda {
namespace {

constexpr int kWarps = 8;

// KS warps share one output row (interleaved 512-byte chunks, so each warp's loads stay
// coalesced) when there are too few rows to keep enough loads in flight (o_proj, down_proj);
// partial sums meet in shared memory. Each lane issues 4 weight loads before using any.
template <typename T, int R>
__device__ __forceinline__ void fma_chunk(const uint4& wv, const T* x, int K, int i, float* acc) {
  float wf[8];
  unpack8<T>(wv, wf);
#pragma unroll
  for (int r = 0; r < R; ++r) {
    float xf[8];
    unpack8<T>(__ldg(reinterpret_cast<const uint4*>(x + (size_t)r * K) + i), xf);
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[r] += wf[e] * xf[e];
  }
}

// acc[r] = this lane's part of row n of W times row r of x (KS warps a row, `part` of them).
template <typename T, int R, int KS>
__device__ __forceinline__ void gemv_acc(const T* __restrict__ W, const T* __restrict__ x, int n, int N, int K, int part, int lane,
                                         float (&acc)[R]) {
  constexpr int kStride = 32 * KS;
  const int K8 = K / 8;
  // Weights never change during a step: start pulling this lane's first chunks into L2 while the
  // previous kernel (whose output x is) still drains, then wait for it.
  if (n < N) {
    const uint4* w = reinterpret_cast<const uint4*>(W + (size_t)n * K);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int i = part * 32 + lane + j * kStride;
      if (i < K8) asm volatile("prefetch.global.L2 [%0];" ::"l"(w + i));
    }
  }
  grid_dependency_wait();
  // The next kernel may start once every block of this one has passed its wait: its blocks take the
  // SMs this GEMV's tail leaves idle and do what they may before their own wait (pull weights into
  // L2, read the step metadata) while the tail drains.
  grid_dependents_launch();
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = 0.f;
  if (n < N) {
    const uint4* w = reinterpret_cast<const uint4*>(W + (size_t)n * K);
    int i = part * 32 + lane;
    for (; i + 3 * kStride < K8; i += 4 * kStride) {
      const uint4 w0 = __ldg(w + i), w1 = __ldg(w + i + kStride), w2 = __ldg(w + i + 2 * kStride),
                  w3 = __ldg(w + i + 3 * kStride);
      fma_chunk<T, R>(w0, x, K, i, acc);
      fma_chunk<T, R>(w1, x, K, i + kStride, acc);
      fma_chunk<T, R>(w2, x, K, i + 2 * kStride, acc);
      fma_chunk<T, R>(w3, x, K, i + 3 * kStride, acc);
    }
    // The last one to three chunks (down_proj's 11008 columns leave 1-2 a lane): loaded together,
    // not one dependent load per loop turn; used in the same order.
    if (i < K8) {
      const bool has1 = i + kStride < K8, has2 = i + 2 * kStride < K8;
      const uint4 w0 = __ldg(w + i), w1 = has1 ? __ldg(w + i + kStride) : uint4{}, w2 = has2 ? __ldg(w + i + 2 * kStride) : uint4{};
      fma_chunk<T, R>(w0, x, K, i, acc);
      if (has1) fma_chunk<T, R>(w1, x, K, i + kStride, acc);
      if (has2) fma_chunk<T, R>(w2, x, K, i + 2 * kStride, acc);
    }
  }
}

template <typename T, int R, GemvOut MODE, int KS>
__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(const T* __restrict__ W, const T* __restrict__ x,
                                                           int N, int K, void* __restrict__ y, bool rnd) {
  constexpr int kRows = kWarps / KS;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n = blockIdx.x * kRows + warp / KS, part = warp % KS;
  float acc[R];
  gemv_acc<T, R, KS>(W, x, n, N, K, part, lane, acc);
  if (!gemv_reduce<kWarps, R, KS>(acc, warp, lane, part, n, N)) return;
  gemv_store<T, R, MODE>(acc, n, N, y, rnd);
}

// gemv_fused (kernels.h): the rows of output pairs, the next kernel's work in the epilogue.
template <typename T, int R, GemvFuse F>
__global__ void __launch_bounds__(kFusedWarps * 32) gemv_fused_kernel(const T* __restrict__ W, const T* __restrict__ x, int N, int K,
                                                                       GemvFusion f) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n = fused_row<F>(f, warp, N);
  float acc[R];
  gemv_acc<T, R, 1>(W, x, n, N, K, 0, lane, acc);
  gemv_fused_end<T, R, F>(acc, nullptr, n, N, warp, lane, f);
}

template <typename T, GemvFuse F>
void launch_fused(const T* W, const T* x, int R, int N, int K, const GemvFusion& f, unsigned grid, cudaStream_t s) {
  const dim3 g(grid), b(kFusedWarps * 32);
  switch (R) {
    case 1: launch("gemv_fused", gemv_fused_kernel<T, 1, F>, g, b, s, W, x, N, K, f); break;
    case 2: launch("gemv_fused", gemv_fused_kernel<T, 2, F>, g, b, s, W, x, N, K, f); break;
    case 3: launch("gemv_fused", gemv_fused_kernel<T, 3, F>, g, b, s, W, x, N, K, f); break;
    case 4: launch("gemv_fused", gemv_fused_kernel<T, 4, F>, g, b, s, W, x, N, K, f); break;
    default: throw std::runtime_error("cuda: gemv_fused supports 1..4 rows");
  }
}

template <typename T, GemvOut MODE, int KS>
void launch_rows(const T* W, const T* x, int R, int N, int K, void* y, cudaStream_t s) {
  const bool rnd = rounds(kRoundResidual);
  const unsigned grid = ceil_div(N, kWarps / KS);
  switch (R) {
    case 1: launch("gemv", gemv_kernel<T, 1, MODE, KS>, dim3(grid), dim3(kWarps * 32), s, W, x, N, K, y, rnd); break;
    case 2: launch("gemv", gemv_kernel<T, 2, MODE, KS>, dim3(grid), dim3(kWarps * 32), s, W, x, N, K, y, rnd); break;
    case 3: launch("gemv", gemv_kernel<T, 3, MODE, KS>, dim3(grid), dim3(kWarps * 32), s, W, x, N, K, y, rnd); break;
    case 4: launch("gemv", gemv_kernel<T, 4, MODE, KS>, dim3(grid), dim3(kWarps * 32), s, W, x, N, K, y, rnd); break;
    default: throw std::runtime_error("cuda: gemv supports 1..4 rows");
  }
}

// Rows per launch decide the split: 12288+ rows (qkv, gate_up, LM head) fill the GPU alone;
// shorter matrices (o_proj, down_proj) use 2 warps per row. 4 warps per row measured within noise
// of 2 on an H200 (batch-1 step 4.41 / 4.34 vs 4.46 / 4.37 ms, bench/results/decode-ab-h200.json).
template <typename T, GemvOut MODE>
void launch_mode(const T* W, const T* x, int R, int N, int K, void* y, cudaStream_t s) {
  if (N >= 12288) launch_rows<T, MODE, 1>(W, x, R, N, K, y, s);
  else launch_rows<T, MODE, 2>(W, x, R, N, K, y, s);
}

}  // namespace

void gemv_fused(DType act, DType wt, const void* W, const float* wscale, const void* x, int R, int K, const GemvFusion& f0,
                cudaStream_t s) {
  if (R == 0) return;
  if (wt != act) {
    gemv_quant_fused(act, wt, QuantGemv{W, wscale, x, R, 0, K, nullptr}, f0, s);
    return;
  }
  if (K % 8 != 0) throw std::runtime_error("cuda: gemv_fused needs K % 8 == 0");
  GemvFusion f = f0;
  int N;
  unsigned grid;
  fused_shape(f, N, grid);
  NS_DISPATCH_ACT(act, E, {
    const E* w = static_cast<const E*>(W);
    const E* xx = static_cast<const E*>(x);
    if (f.kind == GemvFuse::SwiGlu) launch_fused<E, GemvFuse::SwiGlu>(w, xx, R, N, K, f, grid, s);
    else launch_fused<E, GemvFuse::RopeKv>(w, xx, R, N, K, f, grid, s);
  });
  NS_LAUNCHED("gemv_fused");
}

void gemv(DType act, const void* W, const void* x, int R, int N, int K, void* y, GemvOut mode, cudaStream_t s) {
  if (R == 0) return;
  if (K % 8 != 0) throw std::runtime_error("cuda: gemv needs K % 8 == 0");
  NS_DISPATCH_ACT(act, E, {
    const E* w = static_cast<const E*>(W);
    const E* xx = static_cast<const E*>(x);
    if (mode == GemvOut::Act) launch_mode<E, GemvOut::Act>(w, xx, R, N, K, y, s);
    else if (mode == GemvOut::F32) launch_mode<E, GemvOut::F32>(w, xx, R, N, K, y, s);
    else launch_mode<E, GemvOut::AddResidual>(w, xx, R, N, K, y, s);
  });
  NS_LAUNCHED("gemv");
}

}  // namespace ns::cuda
