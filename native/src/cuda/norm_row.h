// One row of the f32 residual stream RMS-normalised in registers, the part shared by rmsnorm's
// vector kernel (kernels_basic.cu) and rmsnorm_quant (quant_act.cu).
#pragma once

#include "cuda/cuda_common.h"

namespace ns::cuda {

// H % 8 == 0 and H <= 8 * V * blockDim.x: thread i takes chunks i + c * blockDim.x (c < V) of 8
// values of a row, those below H / 8. load_row8: this thread's chunks of the f32 row w (the norm
// weight, which a kernel may read before its grid_dependency_wait(): weights never change).
__device__ __forceinline__ void load8(const float* p, int i, float (&d)[8]) {  // d = p[8 i .. 8 i + 7]
  const float4 a = reinterpret_cast<const float4*>(p)[2 * i], b = reinterpret_cast<const float4*>(p)[2 * i + 1];
  d[0] = a.x; d[1] = a.y; d[2] = a.z; d[3] = a.w; d[4] = b.x; d[5] = b.y; d[6] = b.z; d[7] = b.w;
}

template <int V>
__device__ __forceinline__ void load_row8(const float* w, int H, float (&wv)[V][8]) {
#pragma unroll
  for (int c = 0; c < V; ++c) {
    const int i = threadIdx.x + c * blockDim.x;
    if (i < H / 8) load8(w, i, wv[c]);
  }
}

// With one read of row x, leaves in v round_if<T>(rnd, x * rsqrt(mean(x^2) + eps)) * w, wv this
// thread's chunks of w (load_row8) (HF: the normalised row is rounded before the weight).
template <typename T, int V>
__device__ __forceinline__ void rmsnorm_row(const float* x, int H, const float (&wv)[V][8], float eps, bool rnd, float (&v)[V][8]) {
  const int H8 = H / 8;
  float ss = 0.f;
#pragma unroll
  for (int c = 0; c < V; ++c) {
    const int i = threadIdx.x + c * blockDim.x;
    if (i < H8) {
      load8(x, i, v[c]);
#pragma unroll
      for (int e = 0; e < 8; ++e) ss += v[c][e] * v[c][e];
    }
  }
  __shared__ float part[32];
  const float inv = rsqrtf(block_sum(ss, part) / H + eps);
#pragma unroll
  for (int c = 0; c < V; ++c) {
    const int i = threadIdx.x + c * blockDim.x;
    if (i < H8)
#pragma unroll
      for (int e = 0; e < 8; ++e) v[c][e] = round_if<T>(rnd, v[c][e] * inv) * wv[c][e];
  }
}

template <typename T, int V>
__device__ __forceinline__ void rmsnorm_row(const float* x, int H, const float* w, float eps, bool rnd, float (&v)[V][8]) {
  float wv[V][8];
  load_row8<V>(w, H, wv);
  rmsnorm_row<T, V>(x, H, wv, eps, rnd, v);
}

}  // namespace ns::cuda
