// quantize_rows (quant.h): per-row absolute maximum, scale, then each element divided by the scale
// and rounded. Rows are independent, so large tensors are split over threads by rows.
#include "common/quant.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "common/half.h"

namespace ns::quant {

namespace {

// One row widened to f32.
void widen(const void* src, DType dt, size_t off, size_t n, float* dst) {
  switch (dt) {
    case DType::F32: std::memcpy(dst, static_cast<const float*>(src) + off, n * 4); return;
    case DType::BF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src) + off;
      for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    case DType::F16: {
      const uint16_t* s = static_cast<const uint16_t*>(src) + off;
      for (size_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
      return;
    }
    default: throw std::invalid_argument("quantize: the source must be f32, bf16 or f16");
  }
}

// Round to nearest even for |v| <= 127 (adding and removing 1.5 * 2^23 leaves the integer part,
// rounded by the f32 addition itself).
inline float rne_small(float v) {
  volatile float big = 12582912.f;  // volatile: the compiler must not fold (v + big) - big into v
  return (v + big) - big;
}

void rows_range(const void* src, DType dt, size_t r0, size_t r1, size_t cols, WeightFormat fmt, size_t c0, size_t c1,
                uint8_t* q, float* scales, const char* what) {
  std::vector<float> row(cols);
  const size_t w = c1 - c0;
  for (size_t r = r0; r < r1; ++r) {
    widen(src, dt, r * cols, cols, row.data());
    float amax = 0.f;
    bool finite = true;
    for (size_t i = 0; i < cols; ++i) {
      const float a = std::fabs(row[i]);
      finite &= a <= 3.4028235e38f;  // false for inf and NaN
      amax = std::max(amax, a);
    }
    if (!finite)
      throw std::invalid_argument(std::string(what) + ": row " + std::to_string(r) + " holds a non-finite value");
    const float s = amax > 0.f ? amax / (fmt == WeightFormat::Int8 ? kInt8Max : kFp8Max) : 1.f;
    scales[r] = s;
    uint8_t* out = q + r * w;
    if (fmt == WeightFormat::Int8) {
      for (size_t i = c0; i < c1; ++i) {
        const float v = std::min(kInt8Max, std::max(-kInt8Max, rne_small(row[i] / s)));
        out[i - c0] = static_cast<uint8_t>(static_cast<int8_t>(v));
      }
    } else {
      for (size_t i = c0; i < c1; ++i) out[i - c0] = f32_to_e4m3(row[i] / s);
    }
  }
}

}  // namespace

void quantize_rows(const void* src, DType dt, size_t rows, size_t cols, WeightFormat fmt, size_t c0, size_t c1,
                   uint8_t* q, float* scales, const char* what) {
  if (fmt != WeightFormat::Int8 && fmt != WeightFormat::Fp8) throw std::invalid_argument("quantize: the format must be int8 or fp8");
  if (c0 > c1 || c1 > cols) throw std::invalid_argument("quantize: column range outside the row");
  if (rows == 0) return;
  const size_t work = rows * cols;
  const size_t hw = std::max(1u, std::thread::hardware_concurrency());
  const size_t threads = std::min({hw, size_t(16), rows, std::max<size_t>(1, work >> 20)});
  if (threads <= 1) return rows_range(src, dt, 0, rows, cols, fmt, c0, c1, q, scales, what);
  std::vector<std::thread> pool;
  std::vector<std::exception_ptr> errors(threads);
  for (size_t t = 0; t < threads; ++t) {
    const size_t r0 = rows * t / threads, r1 = rows * (t + 1) / threads;
    pool.emplace_back([&, t, r0, r1] {
      try {
        rows_range(src, dt, r0, r1, cols, fmt, c0, c1, q, scales, what);
      } catch (...) {
        errors[t] = std::current_exception();
      }
    });
  }
  for (auto& th : pool) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace ns::quant
