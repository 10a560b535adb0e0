// Bit-level unpacking of int8 and E4M3 words to f32, shared by the CUDA kernels (cuda/quant.h) and
// the host test that checks them on all 256 byte values against common/quant.h
// (test/quant/quant_bits_test.cc). Plain integer and float operations: the same results on both.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define NS_QB_HD __host__ __device__ __forceinline__
#else
#define NS_QB_HD inline
#endif

namespace ns::quant {

NS_QB_HD float bits_to_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

// PTX prmt / __byte_perm: byte i of the result is byte (s >> 4i) & 7 of the pair {x (0-3), y (4-7)}.
NS_QB_HD uint32_t byte_perm(uint32_t x, uint32_t y, uint32_t s) {
#if defined(__CUDA_ARCH__)
  return __byte_perm(x, y, s);
#else
  const uint64_t xy = (static_cast<uint64_t>(y) << 32) | x;
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) r |= static_cast<uint32_t>((xy >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
  return r;
#endif
}

// Four int8 values of a word (lowest byte first) to f32, exactly and without an int-to-float
// conversion: each byte + 128 (its sign bit flipped) becomes the low mantissa byte of 2^23, then
// 2^23 + 128 is subtracted.
NS_QB_HD void i8x4_to_f32(uint32_t w, float* f) {
  const uint32_t u = w ^ 0x80808080u;
  for (int i = 0; i < 4; ++i) f[i] = bits_to_f32(byte_perm(u, 0x4b000000u, 0x7540u + i)) - 8388736.f;
}

// Four E4M3 values of a word to f32, exactly: the sign to bit 31 and the 7 exponent-mantissa bits to
// bits 26..20 make an f32 of exponent e and mantissa m, 2^120 times too small (bias 127 vs 7);
// one multiply rebases it, E4M3 subnormals (e = 0) included, which land on f32 subnormals. (NaN,
// 0x7f / 0xff, comes out as 480: no quantizer here ever stores it.)
NS_QB_HD void e4m3x4_to_f32(uint32_t w, float* f) {
  for (int i = 0; i < 4; ++i) {
    const uint32_t b = (w >> (8 * i)) & 0xffu;
    f[i] = bits_to_f32(((b & 0x80u) << 24) | ((b & 0x7fu) << 20)) * 1.329227995784916e36f;  // 2^120
  }
}

}  // namespace ns::quant
