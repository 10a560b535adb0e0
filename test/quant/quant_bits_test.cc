// Host checks of the quantization bit tricks (native/src/common/quant.h, quant_bits.h), run by
// test/quant/quant-bits.test.ts:
//  - f32_to_e4m3 equals the nearest E4M3 value by exhaustive search (ties to the even encoding,
//    saturation at +-448) on every float of a dense grid, at every rounding midpoint and its
//    neighbours, and on special values;
//  - e4m3_to_f32 matches the E4M3 definition for all 256 bytes, and e4m3x4_to_f32 (the CUDA
//    kernels' decoder) matches e4m3_to_f32 for every finite byte in every byte position;
//  - i8x4_to_f32 gives every int8 value in every byte position;
//  - quantize_rows: int8 and fp8 rows against a direct reference, column slices carry whole-row scales.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "common/half.h"
#include "common/quant.h"
#include "common/quant_bits.h"

using namespace ns;
using namespace ns::quant;

static int failures = 0;
#define CHECK(cond, ...)                         \
  do {                                           \
    if (!(cond)) {                               \
      if (++failures <= 20) {                    \
        std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
        std::printf(__VA_ARGS__);                \
        std::printf("\n");                       \
      }                                          \
    }                                            \
  } while (0)

// The E4M3 (fn) value of a byte, from the format's definition.
static double e4m3_def(int b) {
  const int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
  if (e == 15 && m == 7) return NAN;
  const double v = e == 0 ? m / 8.0 * std::ldexp(1.0, -6) : (1 + m / 8.0) * std::ldexp(1.0, e - 7);
  return s ? -v : v;
}

// Nearest finite E4M3 encoding by exhaustive search; ties to the even mantissa; saturating.
static int nearest_e4m3(double x) {
  if (std::isnan(x)) return 0x7f;
  int best = -1;
  double bd = INFINITY;
  for (int b = 0; b < 256; ++b) {
    const double v = e4m3_def(b);
    if (std::isnan(v)) continue;
    if ((b & 0x7f) == 0 && b != 0) continue;  // -0: keep +0 / -0 by sign below
    const double d = std::fabs(v - x);
    if (d < bd || (d == bd && (b & 1) == 0 && (best & 1) == 1)) { bd = d; best = b; }
  }
  if (std::fabs(x) >= 448) best = x > 0 ? 0x7e : 0xfe;
  if (best == 0 && std::signbit(x)) best = 0x80;
  return best;
}

int main() {
  // Decoders.
  for (int b = 0; b < 256; ++b) {
    const double d = e4m3_def(b);
    const float h = e4m3_to_f32(static_cast<uint8_t>(b));
    if (std::isnan(d)) { CHECK(std::isnan(h), "e4m3_to_f32(%#x) should be NaN", b); continue; }
    CHECK(h == static_cast<float>(d), "e4m3_to_f32(%#x) = %g, definition %g", b, h, d);
    for (int pos = 0; pos < 4; ++pos) {
      float f[4];
      e4m3x4_to_f32(static_cast<uint32_t>(b) << (8 * pos) | (pos ? 0x38u : 0x38u << 8), f);
      CHECK(f[pos] == h && std::signbit(f[pos]) == std::signbit(h), "e4m3x4_to_f32 byte %#x at %d: %g, expected %g", b, pos, f[pos], h);
    }
  }
  for (int v = -128; v < 128; ++v) {
    for (int pos = 0; pos < 4; ++pos) {
      float f[4];
      const uint32_t w = (static_cast<uint32_t>(static_cast<uint8_t>(v)) << (8 * pos)) | (pos ? 0x7fu : 0x81u << 8);
      i8x4_to_f32(w, f);
      CHECK(f[pos] == static_cast<float>(v), "i8x4_to_f32 %d at %d: %g", v, pos, f[pos]);
    }
  }
  // Encoder: a dense grid, every midpoint between neighbouring values and the floats next to it.
  std::vector<float> xs;
  for (double x = -500; x <= 500; x += 0.0625) xs.push_back(static_cast<float>(x));
  for (double x = -0.05; x <= 0.05; x += 1.0 / 65536) xs.push_back(static_cast<float>(x));
  for (int b = 0; b < 127; ++b) {
    const double mid = (e4m3_def(b) + e4m3_def(b + 1)) / 2;
    for (float s : {1.f, -1.f}) {
      const float m = static_cast<float>(mid) * s;
      xs.push_back(m);
      xs.push_back(std::nextafter(m, INFINITY));
      xs.push_back(std::nextafter(m, -INFINITY));
    }
  }
  for (float x : {0.f, -0.f, 448.f, -448.f, 464.f, 1e30f, -1e30f, INFINITY, -INFINITY, 1e-40f, -1e-40f, 0.0009765625f, 0.0009765626f})
    xs.push_back(x);
  for (float x : xs) {
    const int want = nearest_e4m3(x);
    const int got = f32_to_e4m3(x);
    CHECK(got == want, "f32_to_e4m3(%.9g) = %#x, nearest %#x", x, got, want);
  }
  CHECK(f32_to_e4m3(NAN) == 0x7f, "NaN -> %#x", f32_to_e4m3(NAN));

  // quantize_rows.
  const size_t rows = 37, cols = 301;
  std::vector<uint16_t> w(rows * cols);
  std::vector<float> wf(rows * cols);
  uint32_t seed = 12345;
  for (size_t i = 0; i < w.size(); ++i) {
    seed = seed * 1664525u + 1013904223u;
    const float v = (static_cast<float>(seed >> 8) / 16777216.f - 0.5f) * (1 + (i / cols) % 7);
    w[i] = f32_to_bf16(v);
    wf[i] = bf16_to_f32(w[i]);
  }
  for (int r = 0; r < 3; ++r) w[5 * cols + r] = 0, wf[5 * cols + r] = 0;
  for (size_t i = 0; i < cols; ++i) w[9 * cols + i] = 0, wf[9 * cols + i] = 0;  // an all-zero row: scale 1
  for (WeightFormat fmt : {WeightFormat::Int8, WeightFormat::Fp8}) {
    std::vector<uint8_t> q(rows * cols), qs(rows * 100);
    std::vector<float> s(rows), ss(rows);
    quantize_rows(w.data(), DType::BF16, rows, cols, fmt, 0, cols, q.data(), s.data(), "test");
    quantize_rows(w.data(), DType::BF16, rows, cols, fmt, 150, 250, qs.data(), ss.data(), "test");
    for (size_t r = 0; r < rows; ++r) {
      float amax = 0;
      for (size_t i = 0; i < cols; ++i) amax = std::max(amax, std::fabs(wf[r * cols + i]));
      const float want_s = amax > 0 ? amax / (fmt == WeightFormat::Int8 ? 127.f : 448.f) : 1.f;
      CHECK(s[r] == want_s && ss[r] == want_s, "row %zu scale %g / %g, expected %g", r, s[r], ss[r], want_s);
      for (size_t i = 0; i < cols; ++i) {
        const float x = wf[r * cols + i] / want_s;
        const uint8_t want = fmt == WeightFormat::Int8 ? static_cast<uint8_t>(static_cast<int8_t>(std::nearbyint(x))) : f32_to_e4m3(x);
        CHECK(q[r * cols + i] == want, "row %zu col %zu: %#x, expected %#x", r, i, q[r * cols + i], want);
        if (i >= 150 && i < 250) CHECK(qs[r * 100 + i - 150] == want, "slice row %zu col %zu", r, i);
        if (fmt == WeightFormat::Int8) {
          const float back = static_cast<int8_t>(q[r * cols + i]) * want_s;
          CHECK(std::fabs(back - wf[r * cols + i]) <= want_s * 0.5f * 1.0001f, "int8 round trip row %zu col %zu", r, i);
        }
      }
    }
  }
  std::vector<float> bad(8, 1.f);
  bad[3] = NAN;
  std::vector<uint8_t> q8(8);
  std::vector<float> s1(1);
  bool threw = false;
  try {
    quantize_rows(bad.data(), DType::F32, 1, 8, WeightFormat::Int8, 0, 8, q8.data(), s1.data(), "tensor X");
  } catch (const std::exception& e) {
    threw = std::string(e.what()).find("tensor X: row 0 holds a non-finite value") != std::string::npos;
  }
  CHECK(threw, "a NaN row must be refused naming the tensor and row");

  std::printf("%s (%zu encoder inputs)\n", failures ? "FAILED" : "ok", xs.size());
  return failures ? 1 : 0;
}
