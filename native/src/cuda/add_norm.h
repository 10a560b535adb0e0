// Device code shared by the family forward's kernels (family.cu) and the MoE combine (moe.cu): the
// end of a sublayer for one token's row — the sublayer's output joins the residual stream (after
// Gemma's post-norm when there is one) and the next sublayer's input norm is taken right away, so
// the row is read once instead of by two kernels.
#pragma once

#include "cuda/cuda_common.h"

namespace ns::cuda {

// The end of a sublayer with the row in registers (H <= kRowPer * blockDim.x): thread i holds
// elements i + e * blockDim.x of v (x + bias, zeros past H); every load of a pass is issued before
// any is used, so a row costs a few memory latencies, where add_norm_row's loops wait for each
// element in turn (16 us for a 2048-wide MoE combine on an H100). Same arithmetic per element as
// add_norm_row; only the order of the block sums differs.
constexpr int kRowPer = 8;

template <typename T>
__device__ __forceinline__ void add_norm_regs(float (&v)[kRowPer], float* res, const float* post_w, const float* next_w,
                                              float eps, int H, T* xb, bool round_norm) {
  __shared__ float part[32];
  float r[kRowPer];
#pragma unroll
  for (int e = 0; e < kRowPer; ++e) {
    const int i = threadIdx.x + e * blockDim.x;
    r[e] = i < H ? res[i] : 0.f;
  }
  if (post_w) {
    float ss = 0.f;
#pragma unroll
    for (int e = 0; e < kRowPer; ++e) ss += v[e] * v[e];
    const float inv_post = rsqrtf(block_sum(ss, part) / H + eps);
#pragma unroll
    for (int e = 0; e < kRowPer; ++e) {
      const int i = threadIdx.x + e * blockDim.x;
      if (i < H) v[e] = post_w[i] * (v[e] * inv_post);
    }
  }
  float ss = 0.f;
#pragma unroll
  for (int e = 0; e < kRowPer; ++e) {
    const int i = threadIdx.x + e * blockDim.x;
    if (i < H) {
      r[e] += v[e];
      res[i] = r[e];
      ss += r[e] * r[e];
    }
  }
  if (!next_w) return;
  const float inv = rsqrtf(block_sum(ss, part) / H + eps);
#pragma unroll
  for (int e = 0; e < kRowPer; ++e) {
    const int i = threadIdx.x + e * blockDim.x;
    if (i < H) xb[i] = from_f<T>(round_if<T>(round_norm, r[e] * inv) * next_w[i]);
  }
}

// Threads of a block that holds a row of H in registers (add_norm_regs), or 0: too long a row
// (add_norm_row's loops, 256 threads).
inline int row_threads(int H, int max_threads) {
  const int t = ((H + kRowPer - 1) / kRowPer + 31) / 32 * 32;
  return t <= max_threads ? (t < 32 ? 32 : t) : 0;
}

// One token's row of H (the whole block): v = x (+ bias); with post_w v = rmsnorm(v) * post_w;
// res += v; with next_w xb = act(rmsnorm(res) * next_w) (rounded as the rmsnorm kernel rounds,
// round_norm: kRoundNorm). Each thread touches the same elements in every pass.
template <typename T>
__device__ __forceinline__ void add_norm_row(float* res, const float* x, const float* bias, const float* post_w,
                                             const float* next_w, float eps, int H, T* xb, bool round_norm) {
  __shared__ float part[32];
  float inv_post = 1.f;
  if (post_w) {
    float ss = 0.f;
    for (int i = threadIdx.x; i < H; i += blockDim.x) {
      const float v = x[i] + (bias ? bias[i] : 0.f);
      ss += v * v;
    }
    inv_post = rsqrtf(block_sum(ss, part) / H + eps);
  }
  float ss = 0.f;
  for (int i = threadIdx.x; i < H; i += blockDim.x) {
    float v = x[i] + (bias ? bias[i] : 0.f);
    if (post_w) v = post_w[i] * (v * inv_post);
    const float r = res[i] + v;
    res[i] = r;
    ss += r * r;
  }
  if (!next_w) return;
  const float inv = rsqrtf(block_sum(ss, part) / H + eps);
  for (int i = threadIdx.x; i < H; i += blockDim.x) xb[i] = from_f<T>(round_if<T>(round_norm, res[i] * inv) * next_w[i]);
}

}  // namespace ns::cuda
