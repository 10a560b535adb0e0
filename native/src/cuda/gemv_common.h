// The end of a decode GEMV (gemv.cu, and quant_gemm.cu for quantized weights): each lane holds
// partial sums acc[R] of one output row n; KS warps of the block share a row (interleaved chunks).
#pragma once

#include <stdexcept>

#include "cuda/act_math.h"
#include "cuda/cuda_common.h"
#include "cuda/kernels.h"
#include "cuda/kv_layout.h"
#include "cuda/quant.h"

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

// The fused GEMVs (kernels.h gemv_fused): 8 warps a block, one a weight row; warps w and w + 4 hold
// the two rows of one output pair.
constexpr int kFusedWarps = 8;

// Rows N of the product and blocks of the launch; sets f.rnd. Throws on a shape it cannot take.
inline void fused_shape(GemvFusion& f, int& N, unsigned& grid) {
  if (f.kind == GemvFuse::SwiGlu) {
    f.rnd = rounds(kRoundSilu);
    N = 2 * f.I;
    grid = ceil_div(f.I, 4);
    return;
  }
  if (f.hd % 8 != 0 || f.hd > 256) throw std::runtime_error("cuda: the RoPE GEMV needs head_dim % 8 == 0 and <= 256");
  f.rnd = rounds(kRoundRope);
  N = (f.nh + 2 * f.nkv) * f.hd;
  grid = static_cast<unsigned>((f.nh + 2 * f.nkv) * (f.hd / 8));
}

// This warp's weight row (N: none, past the last pair). SwiGlu: gate row i or up row I + i of the
// block's pairs i; RopeKv: element j or j + hd/2 of one head, 4 consecutive j a block.
template <GemvFuse F>
__device__ __forceinline__ int fused_row(const GemvFusion& f, int warp, int N) {
  const int hi = warp >> 2, q = warp & 3;
  if constexpr (F == GemvFuse::SwiGlu) {
    const int i = blockIdx.x * 4 + q;
    return i < f.I ? i + hi * f.I : N;
  } else {
    const int half = f.hd / 2, quads = half / 4;
    const int h = blockIdx.x / quads, j = (blockIdx.x % quads) * 4 + q;
    return h * f.hd + j + hi * half;
  }
}

// rope_kv_write for one token r and one rotary pair: x1, x2 the product's activation-dtype values
// at columns n, n + hd/2 (n = h * hd + j, j < hd/2).
template <typename T>
__device__ __forceinline__ void rope_kv_pair(const GemvFusion& f, int r, int n, float x1, float x2) {
  const int hd = f.hd, half = hd / 2, h = n / hd, j = n - h * hd, nh = f.nh, nkv = f.nkv;
  if (f.bias) {
    const T* b = static_cast<const T*>(f.bias);
    if (f.cos) {  // the family forward's q|k|v bias: added in f32 (family.cu's qkv kernel)
      x1 += to_f(b[n]);
      x2 += to_f(b[n + half]);
    } else {
      x1 = to_f(from_f<T>(x1 + to_f(b[n])));
      x2 = to_f(from_f<T>(x2 + to_f(b[n + half])));
    }
  }
  float o1 = x1, o2 = x2;
  if (h < nh + nkv) {
    if (f.cos) {
      table_rotate(x1, x2, f.cos[(size_t)r * half + j], f.sin[(size_t)r * half + j], o1, o2);
    } else {
      float cs, sn;
      rope_cos_sin<T>(f.pos[r], f.inv_freq[j], f.rnd, cs, sn);
      rope_rotate<T>(x1, x2, cs, sn, f.rnd, o1, o2);
    }
  }
  if (h < nh) {
    T* q = static_cast<T*>(f.out) + (size_t)r * (nh + 2 * nkv) * hd;
    q[n] = from_f<T>(o1);
    q[n + half] = from_f<T>(o2);
    return;
  }
  const int sl = f.slot[r], B = f.block_size;
  if (sl < 0) return;  // padding token of a graph bucket: no cache write
  const bool is_k = h < nh + nkv;
  const size_t at = kv_offset(sl / B, sl % B, is_k ? h - nh : h - nh - nkv, nkv, B, hd) + j;
  void* c = is_k ? f.kv.k : f.kv.v;
  const float sc = is_k ? f.kv.k_scale : f.kv.v_scale;
  if (f.kv.fp8) {
    store_kv<T, true>(c, at, from_f<T>(o1), sc);
    store_kv<T, true>(c, at + half, from_f<T>(o2), sc);
  } else {
    store_kv<T, false>(c, at, from_f<T>(o1), sc);
    store_kv<T, false>(c, at + half, from_f<T>(o2), sc);
  }
}

// The end of a fused GEMV: the warps' row sums (times the row scale when wscale) are rounded to the
// activation dtype as the plain GEMV writes them, and lane r of warps 0..3 finishes token r's pair.
// Every thread of the block must call it.
template <typename T, int R, GemvFuse F>
__device__ __forceinline__ void gemv_fused_end(float* acc, const float* wscale, int n, int N, int warp, int lane,
                                               const GemvFusion& f) {
  __shared__ float pair[kFusedWarps][R];
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = warp_sum(acc[r]);
  if (lane == 0 && n < N) {
    const float s = wscale ? wscale[n] : 1.f;
#pragma unroll
    for (int r = 0; r < R; ++r) pair[warp][r] = acc[r] * s;
  }
  __syncthreads();
  if (warp >= kFusedWarps / 2 || lane >= R || n >= N) return;
  const float a = to_f(from_f<T>(pair[warp][lane])), b = to_f(from_f<T>(pair[warp + kFusedWarps / 2][lane]));
  if constexpr (F == GemvFuse::SwiGlu) static_cast<T*>(f.out)[(size_t)lane * f.I + n] = from_f<T>(silu_mul<T>(a, b, f.rnd));
  else rope_kv_pair<T>(f, lane, n, a, b);
}

}  // namespace ns::cuda
