// Portable kernels: plain loops with several independent accumulators, which -O3 vectorizes
// with whatever SIMD the baseline target has. Also the run-time choice of kernel table.
#include <cmath>
#include <cstring>

#include "common/half.h"
#include "cpu/cpu_info.h"
#include "cpu/kernels.h"

namespace ns::cpu {

namespace {

template <DType WT>
inline float load_w(const void* w, size_t i) {
  if constexpr (WT == DType::F32) return static_cast<const float*>(w)[i];
  else if constexpr (WT == DType::I8) return static_cast<float>(static_cast<const int8_t*>(w)[i]);
  else if constexpr (WT == DType::BF16) return bf16_to_f32(static_cast<const uint16_t*>(w)[i]);
  else return f16_to_f32(static_cast<const uint16_t*>(w)[i]);
}

template <DType WT>
void matmul_t(const float* x, int nt, int ldx, const void* w, const float* scale, int in, int r0, int r1, float* y,
              int ldy) {
  for (int r = r0; r < r1; ++r) {
    const size_t base = static_cast<size_t>(r) * in;
    for (int t = 0; t < nt; ++t) {
      const float* xt = x + static_cast<size_t>(t) * ldx;
      float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
      int i = 0;
      for (; i + 4 <= in; i += 4) {
        a0 += xt[i] * load_w<WT>(w, base + i);
        a1 += xt[i + 1] * load_w<WT>(w, base + i + 1);
        a2 += xt[i + 2] * load_w<WT>(w, base + i + 2);
        a3 += xt[i + 3] * load_w<WT>(w, base + i + 3);
      }
      for (; i < in; ++i) a0 += xt[i] * load_w<WT>(w, base + i);
      float s = (a0 + a1) + (a2 + a3);
      if constexpr (WT == DType::I8) s *= scale[r];
      y[static_cast<size_t>(t) * ldy + r] = s;
    }
  }
}

void matmul(const float* x, int nt, int ldx, const void* w, DType wt, const float* scale, int in, int r0, int r1, float* y,
            int ldy) {
  switch (wt) {
    case DType::F32: return matmul_t<DType::F32>(x, nt, ldx, w, scale, in, r0, r1, y, ldy);
    case DType::BF16: return matmul_t<DType::BF16>(x, nt, ldx, w, scale, in, r0, r1, y, ldy);
    case DType::F16: return matmul_t<DType::F16>(x, nt, ldx, w, scale, in, r0, r1, y, ldy);
    case DType::I8: return matmul_t<DType::I8>(x, nt, ldx, w, scale, in, r0, r1, y, ldy);
    case DType::F8E4M3: return;  // refused when the backend is built (cpu_backend.cc)
  }
}

float dot(const float* a, const float* b, int n) {
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += a[i] * b[i];
    s1 += a[i + 1] * b[i + 1];
    s2 += a[i + 2] * b[i + 2];
    s3 += a[i + 3] * b[i + 3];
  }
  for (; i < n; ++i) s0 += a[i] * b[i];
  return (s0 + s1) + (s2 + s3);
}

void axpy(float a, const float* x, float* y, int n) {
  for (int i = 0; i < n; ++i) y[i] += a * x[i];
}

void attend(const float* q, int G, const float* kc, const float* vc, const int32_t* table, int B, size_t row_stride,
            size_t head_off, int first, int n, int D, float scale, float softcap, float* scores, float* out) {
  const int m = n - first;
  for (int j = first; j < n; ++j) {
    const float* k = kc + (size_t(table[j / B]) * B + j % B) * row_stride + head_off;
    for (int g = 0; g < G; ++g) {
      float s = dot(q + size_t(g) * D, k, D) * scale;
      if (softcap > 0) s = std::tanh(s / softcap) * softcap;
      scores[size_t(g) * m + (j - first)] = s;
    }
  }
  for (int g = 0; g < G; ++g) {
    float* sc = scores + size_t(g) * m;
    float mx = sc[0];
    for (int j = 1; j < m; ++j) mx = sc[j] > mx ? sc[j] : mx;
    float sum = 0;
    for (int j = 0; j < m; ++j) sum += (sc[j] = std::exp(sc[j] - mx));
    const float inv = 1.0f / sum;
    for (int j = 0; j < m; ++j) sc[j] *= inv;
  }
  for (int i = 0; i < G * D; ++i) out[i] = 0.f;
  for (int j = first; j < n; ++j) {
    const float* v = vc + (size_t(table[j / B]) * B + j % B) * row_stride + head_off;
    for (int g = 0; g < G; ++g) axpy(scores[size_t(g) * m + (j - first)], v, out + size_t(g) * D, D);
  }
}

const KernelTable kGeneric{matmul, dot, axpy, attend};

}  // namespace

const KernelTable& generic_kernels() { return kGeneric; }

const KernelTable& kernels() {
  static const KernelTable* table = (has_avx2() && avx2_kernels()) ? avx2_kernels() : &kGeneric;
  return *table;
}

void to_f32(const void* src, DType dt, float* dst, size_t n) {
  switch (dt) {
    case DType::F32: std::memcpy(dst, src, n * 4); return;
    case DType::BF16:
      for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(static_cast<const uint16_t*>(src)[i]);
      return;
    case DType::F16:
      for (size_t i = 0; i < n; ++i) dst[i] = f16_to_f32(static_cast<const uint16_t*>(src)[i]);
      return;
    default: return;  // quantized types are never vectors (cpu_backend.cc checks)
  }
}

}  // namespace ns::cpu
