// The end of a decode GEMV (gemv.cu, and quant_gemm.cu for quantized weights): each lane holds
// partial sums acc[R] of one output row n; KS warps of the block share a row (interleaved chunks).
#pragma once

#include "cuda/cuda_common.h"
#include "cuda/kernels.h"

namespace ns::cuda {

// Sums acc over the warp, then over the KS warps of the row (shared memory). true on the one lane
// that holds the row's totals in acc (and the row exists); every thread of the block must call it.
template <int kWarps, int R, int KS>
__device__ __forceinline__ bool gemv_reduce(float* acc, int warp, int lane, int part, int n, int N) {
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = warp_sum(acc[r]);
  if constexpr (KS > 1) {
    __shared__ float red[kWarps][R];
    if (lane == 0)
#pragma unroll
      for (int r = 0; r < R; ++r) red[warp][r] = acc[r];
    __syncthreads();
    if (part != 0) return false;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float s = 0.f;
#pragma unroll
      for (int p = 0; p < KS; ++p) s += red[warp + p][r];
      acc[r] = s;
    }
  }
  return lane == 0 && n < N;
}

// y[r, n] = v[r] in the activation dtype, in f32, or added to the f32 residual stream (rounded as
// residual_add rounds when rnd).
template <typename T, int R, GemvOut MODE>
__device__ __forceinline__ void gemv_store(const float* v, int n, int N, void* y, bool rnd) {
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const size_t o = (size_t)r * N + n;
    if constexpr (MODE == GemvOut::Act) static_cast<T*>(y)[o] = from_f<T>(v[r]);
    else if constexpr (MODE == GemvOut::F32) static_cast<float*>(y)[o] = v[r];
    else {
      float* res = static_cast<float*>(y) + o;
      *res = round_if<T>(rnd, *res + round_if<T>(rnd, v[r]));
    }
  }
}

}  // namespace ns::cuda
