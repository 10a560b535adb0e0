// Weight quantization shared by every path that produces quantized weights: the loader's
// quantize-at-load and `nodespeed model quantize` both call quantize_rows (through addon.quantize),
// so a checkpoint written by one and the weights made by the other are the same bytes.
//
//   int8: symmetric, one scale per row: s = max|w| / 127, q = clamp(rne(w / s), -127, 127)
//   fp8:  E4M3 (OCP "e4m3fn": bias 7, no infinities, max 448), one scale per row:
//         s = max|w| / 448, q = e4m3_rne_satfinite(w / s)
// An all-zero row gets s = 1. All arithmetic is IEEE f32 (w / s is a division, not a multiply by
// 1 / s), as torch computes compressed-tensors' quantize().
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "engine.h"

namespace ns::quant {

constexpr float kInt8Max = 127.f;
constexpr float kFp8Max = 448.f;

// f32 -> E4M3, round to nearest even, saturating to +-448 (NaN -> 0x7f), as CUDA's
// __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3).
inline uint8_t f32_to_e4m3(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return 0x7f;                   // NaN
  if (a >= 0x43e00000u) return sign | 0x7eu;          // >= 448 (and inf): the largest finite
  const int e = static_cast<int>(a >> 23) - 127;      // unbiased f32 exponent (-127: zero/subnormal)
  if (e >= -6) {                                      // E4M3 normal: keep 3 of 23 mantissa bits
    const uint32_t r = a + 0x7ffffu + ((a >> 20) & 1u);
    const uint32_t enc = (r >> 20) - (120u << 3);     // rebias 127 -> 7 (a carry moves into the exponent)
    return sign | static_cast<uint8_t>(enc > 0x7eu ? 0x7eu : enc);
  }
  if (e == -127) return sign;                         // f32 zero or subnormal: far below 2^-10
  // E4M3 subnormal: q = rne(|x| / 2^-9) in 0..8 (8 is the smallest normal, encoded as 0x08).
  const uint32_t m = (a & 0x7fffffu) | 0x800000u;     // |x| = m * 2^(e - 23)
  const int s = 14 - e;                               // |x| * 2^9 = m >> s
  if (s > 24) return sign;                            // below 2^-10: rounds to zero
  uint32_t q = m >> s;
  const uint32_t rem = m & ((1u << s) - 1), half = 1u << (s - 1);
  if (rem > half || (rem == half && (q & 1u))) ++q;
  return sign | static_cast<uint8_t>(q);
}

// E4M3 -> f32 (exact; 0x7f / 0xff are NaN).
inline float e4m3_to_f32(uint8_t v) {
  const uint32_t sign = static_cast<uint32_t>(v & 0x80u) << 24;
  const int exp = (v >> 3) & 0xf, man = v & 7;
  uint32_t u;
  if (exp == 15 && man == 7) {
    u = sign | 0x7fc00000u;
  } else if (exp == 0) {
    const float f = static_cast<float>(man) * (1.f / 512.f);
    std::memcpy(&u, &f, 4);
    u |= sign;
  } else {
    u = sign | (static_cast<uint32_t>(exp - 7 + 127) << 23) | (static_cast<uint32_t>(man) << 20);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Quantizes `rows` rows of `cols` elements of `src` (dtype f32 / bf16 / f16, row-major) to `fmt`
// (Int8 or Fp8). Each row's scale comes from the whole row; only columns [c0, c1) are written to
// `q` ([rows, c1 - c0], one byte each), so a tensor-parallel column slice carries the scales of the
// full tensor. Throws std::invalid_argument naming `what` and the row on a non-finite value. Large
// inputs are split over threads.
void quantize_rows(const void* src, DType dt, size_t rows, size_t cols, WeightFormat fmt, size_t c0, size_t c1,
                   uint8_t* q, float* scales, const char* what);

}  // namespace ns::quant
