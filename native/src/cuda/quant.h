// Device helpers for quantized weights, activations and KV cache (docs/QUANTIZATION.md): int8 and
// E4M3 unpacking to f32 in registers (common/quant_bits.h, checked on the host for every byte), and
// f32 -> E4M3 with round-to-nearest-even and saturation at +-448, the function the host quantizer
// implements (common/quant.h).
#pragma once

#include <cuda_fp8.h>

#include <cstdint>

#include "common/quant_bits.h"
#include "cuda/cuda_common.h"

namespace ns::cuda {

// Four E4M3 values of a word to f32. FP8 GPUs (sm_89+) convert two at a time in hardware
// (cvt.rn.f16x2.e4m3x2, exact: E4M3 values are fp16 values) and widen the halves; older ones (FP8
// weight-only checkpoints) take the integer path of quant_bits.h.
__device__ __forceinline__ void e4m3x4(uint32_t w, float* f) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  const float2 lo = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(w & 0xffffu), __NV_E4M3)));
  const float2 hi = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(w >> 16), __NV_E4M3)));
  f[0] = lo.x; f[1] = lo.y; f[2] = hi.x; f[3] = hi.y;
#else
  quant::e4m3x4_to_f32(w, f);
#endif
}

// 16 one-byte values (one 16-byte load) of storage type W (I8 or F8E4M3) to f32.
template <DType W>
__device__ __forceinline__ void unpack16(const uint4& v, float* f) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (W == DType::I8) quant::i8x4_to_f32(w[i], f + 4 * i);
    else e4m3x4(w[i], f + 4 * i);
  }
}

// 8 E4M3 values (one 8-byte load) to f32.
__device__ __forceinline__ void unpack_e4m3x8(const uint2& v, float* f) {
  e4m3x4(v.x, f);
  e4m3x4(v.y, f + 4);
}

__device__ __forceinline__ uint32_t f32_to_e4m3(float x) {
  return static_cast<uint32_t>(__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3));
}

// Eight f32 to eight E4M3 bytes (one 8-byte store), the first in the lowest byte.
__device__ __forceinline__ uint2 pack_e4m3x8(const float* f) {
  uint32_t w[2] = {0, 0};
#pragma unroll
  for (int i = 0; i < 8; ++i) w[i / 4] |= f32_to_e4m3(f[i]) << (8 * (i % 4));
  return make_uint2(w[0], w[1]);
}

// One element of a paged KV cache (kernels.h KvCache): KV8 stores E4M3 of value / scale (the value
// already in the activation dtype T), else the value itself; reads give the stored value as f32
// (unscaled: the attention kernels fold the layer's scales in).
template <typename T, bool KV8>
__device__ __forceinline__ void store_kv(void* cache, size_t i, T v, float scale) {
  if constexpr (KV8) static_cast<uint8_t*>(cache)[i] = static_cast<uint8_t>(f32_to_e4m3(__fdiv_rn(to_f(v), scale)));
  else static_cast<T*>(cache)[i] = v;
}

template <typename T, bool KV8>
__device__ __forceinline__ float kv_elem(const void* cache, size_t i) {
  if constexpr (KV8) {
    float f[4];
    e4m3x4(static_cast<const uint8_t*>(cache)[i], f);
    return f[0];
  } else {
    return to_f(static_cast<const T*>(cache)[i]);
  }
}

}  // namespace ns::cuda
