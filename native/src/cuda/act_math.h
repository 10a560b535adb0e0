// Per-element math shared by the stand-alone kernels (swiglu, rope_kv_write) and the decode GEMVs
// that do the same work in their epilogue (gemv_common.h), so both agree bit for bit.
#pragma once

#include "cuda/cuda_common.h"

namespace ns::cuda {

// SwiGLU of one gate/up pair in the activation dtype's values: HF's act_fn(gate) is a tensor
// (rounded when rnd: kRoundSilu), then * up.
template <typename T>
__device__ __forceinline__ float silu_mul(float g, float u, bool rnd) {
  return round_if<T>(rnd, g / (1.f + __expf(-g))) * u;
}

// cos / sin of pos * inv_freq (HF: activation-dtype tensors when rnd: kRoundRope).
template <typename T>
__device__ __forceinline__ void rope_cos_sin(int pos, float inv_freq, bool rnd, float& cs, float& sn) {
  const float p = static_cast<float>(pos);
  sincosf(p * inv_freq, &sn, &cs);
  cs = round_if<T>(rnd, cs);
  sn = round_if<T>(rnd, sn);
}

// HF rotate_half on the pair (x1, x2) = elements (j, j + hd/2) of a head: q * cos + rotate_half(q) * sin,
// both products rounded when rnd; the caller rounds the sums to the activation dtype.
template <typename T>
__device__ __forceinline__ void rope_rotate(float x1, float x2, float cs, float sn, bool rnd, float& o1, float& o2) {
  // Explicitly rounded products and sums: left to nvcc, a * b + c * d contracts into an FMA in some
  // kernels and not in others, and the fused GEMV epilogue then differs from rope_kv_write by one unit.
  o1 = __fadd_rn(round_if<T>(rnd, __fmul_rn(x1, cs)), round_if<T>(rnd, __fmul_rn(-x2, sn)));
  o2 = __fadd_rn(round_if<T>(rnd, __fmul_rn(x2, cs)), round_if<T>(rnd, __fmul_rn(x1, sn)));
}

// The families' rotation of the pair (x1, x2) = elements (j, j + half) of a head with the cos / sin of
// their host-computed tables (family.cu's qkv kernel and the fused q|k|v GEMV of the family forward):
// products and sums rounded one by one, as the CPU backend's cpu/rope.h computes them (x1 cos - x2 sin,
// x2 cos + x1 sin), so no kernel contracts them into an FMA and the two kernels agree bit for bit.
__device__ __forceinline__ void table_rotate(float x1, float x2, float cs, float sn, float& o1, float& o2) {
  o1 = __fsub_rn(__fmul_rn(x1, cs), __fmul_rn(x2, sn));
  o2 = __fadd_rn(__fmul_rn(x2, cs), __fmul_rn(x1, sn));
}

}  // namespace ns::cuda
