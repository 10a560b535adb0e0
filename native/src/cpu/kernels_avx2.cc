// AVX2 + FMA + F16C kernels. Only this file is compiled for those extensions (the pragma below,
// after every non-intrinsic include so no shared inline code gets AVX2 instructions); they run
// only when cpu_info says the CPU has them. Keep the STL out of this file for the same reason.
#include "cpu/kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

#include <immintrin.h>

namespace ns::cpu {

namespace {

inline float hsum(__m256 v) {
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  __m128 sh = _mm_movehdup_ps(lo);
  __m128 s = _mm_add_ps(lo, sh);
  sh = _mm_movehl_ps(sh, s);
  return _mm_cvtss_f32(_mm_add_ss(s, sh));
}

template <DType WT>
inline __m256 load8(const void* w, size_t i) {
  if constexpr (WT == DType::F32) {
    return _mm256_loadu_ps(static_cast<const float*>(w) + i);
  } else if constexpr (WT == DType::I8) {
    __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(static_cast<const int8_t*>(w) + i));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
  } else if constexpr (WT == DType::BF16) {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + i));
    return _mm256_cvtph_ps(h);
  }
}

template <DType WT>
inline float load1(const void* w, size_t i) {
  if constexpr (WT == DType::F32) {
    return static_cast<const float*>(w)[i];
  } else if constexpr (WT == DType::I8) {
    return static_cast<float>(static_cast<const int8_t*>(w)[i]);
  } else if constexpr (WT == DType::BF16) {
    unsigned u = static_cast<unsigned>(static_cast<const uint16_t*>(w)[i]) << 16;
    return _mm_cvtss_f32(_mm_castsi128_ps(_mm_cvtsi32_si128(static_cast<int>(u))));
  } else {
    return _cvtsh_ss(static_cast<const uint16_t*>(w)[i]);
  }
}

// NR weight rows x NT tokens: NR*NT accumulators; each weight vector is loaded (and widened)
// once and used NT times, each activation vector used NR times.
template <DType WT, int NR, int NT>
inline void micro(const float* x, int ldx, const void* w, const float* scale, int in, int r, float* y, int ldy) {
  __m256 acc[NR][NT];
  for (int a = 0; a < NR; ++a)
    for (int t = 0; t < NT; ++t) acc[a][t] = _mm256_setzero_ps();
  const size_t base = static_cast<size_t>(r) * in;
  int i = 0;
  for (; i + 8 <= in; i += 8) {
    __m256 wv[NR];
    for (int a = 0; a < NR; ++a) wv[a] = load8<WT>(w, base + static_cast<size_t>(a) * in + i);
    for (int t = 0; t < NT; ++t) {
      __m256 xv = _mm256_loadu_ps(x + static_cast<size_t>(t) * ldx + i);
      for (int a = 0; a < NR; ++a) acc[a][t] = _mm256_fmadd_ps(wv[a], xv, acc[a][t]);
    }
  }
  for (int a = 0; a < NR; ++a) {
    for (int t = 0; t < NT; ++t) {
      float s = hsum(acc[a][t]);
      const float* xt = x + static_cast<size_t>(t) * ldx;
      for (int j = i; j < in; ++j) s += xt[j] * load1<WT>(w, base + static_cast<size_t>(a) * in + j);
      if constexpr (WT == DType::I8) s *= scale[r + a];
      y[static_cast<size_t>(t) * ldy + r + a] = s;
    }
  }
}

template <DType WT, int NT>
inline void rows_for_tokens(const float* x, int ldx, const void* w, const float* scale, int in, int r0, int r1, float* y,
                            int ldy) {
  int r = r0;
  if constexpr (NT == 1) {
    for (; r + 4 <= r1; r += 4) micro<WT, 4, 1>(x, ldx, w, scale, in, r, y, ldy);
  } else {
    for (; r + 2 <= r1; r += 2) micro<WT, 2, NT>(x, ldx, w, scale, in, r, y, ldy);
  }
  for (; r < r1; ++r) micro<WT, 1, NT>(x, ldx, w, scale, in, r, y, ldy);
}

template <DType WT>
void matmul_t(const float* x, int nt, int ldx, const void* w, const float* scale, int in, int r0, int r1, float* y,
              int ldy) {
  // Row chunk of ~64 KiB of weights: stays in L2 while all token groups pass over it.
  const int wsize = WT == DType::F32 ? 4 : WT == DType::I8 ? 1 : 2;
  int chunk = static_cast<int>((64 * 1024) / (static_cast<size_t>(in) * wsize));
  chunk = chunk < 4 ? 4 : (chunk & ~3);
  for (int rc = r0; rc < r1; rc += chunk) {
    const int re = rc + chunk < r1 ? rc + chunk : r1;
    int t = 0;
    for (; t + 4 <= nt; t += 4)
      rows_for_tokens<WT, 4>(x + static_cast<size_t>(t) * ldx, ldx, w, scale, in, rc, re, y + static_cast<size_t>(t) * ldy,
                             ldy);
    const float* xt = x + static_cast<size_t>(t) * ldx;
    float* yt = y + static_cast<size_t>(t) * ldy;
    switch (nt - t) {
      case 3: rows_for_tokens<WT, 3>(xt, ldx, w, scale, in, rc, re, yt, ldy); break;
      case 2: rows_for_tokens<WT, 2>(xt, ldx, w, scale, in, rc, re, yt, ldy); break;
      case 1: rows_for_tokens<WT, 1>(xt, ldx, w, scale, in, rc, re, yt, ldy); break;
      default: break;
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
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  float s = hsum(_mm256_add_ps(s0, s1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

void axpy(float a, const float* x, float* y, int n) {
  const __m256 av = _mm256_set1_ps(a);
  int i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += a * x[i];
}

// exp for the softmax, vectorized (Cephes-style polynomial, ~1 ulp on the range used here).
inline __m256 exp256(__m256 x) {
  x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f)), _mm256_set1_ps(-88.3762626647949f));
  __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
  fx = _mm256_floor_ps(fx);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

void attend(const float* q, int G, const float* kc, const float* vc, const int32_t* table, int B, size_t row_stride,
            size_t head_off, int first, int n, int D, float scale, float softcap, float* scores, float* out) {
  scores -= first;  // scores[g * m + j - first] below, written as (scores - first)[g * m + j]
  const int m = n - first;
  for (int j = first; j < n; ++j) {
    const float* k = kc + (size_t(table[j / B]) * B + j % B) * row_stride + head_off;
    for (int g = 0; g < G; ++g) {
      float s = dot(q + size_t(g) * D, k, D) * scale;
      if (softcap > 0) s = __builtin_tanhf(s / softcap) * softcap;
      scores[size_t(g) * m + j] = s;
    }
  }
  scores += first;
  n = m;  // the softmax runs over the m scores of the window
  for (int g = 0; g < G; ++g) {
    float* sc = scores + size_t(g) * n;
    __m256 m8 = _mm256_set1_ps(-3.4e38f);
    int j = 0;
    for (; j + 8 <= n; j += 8) m8 = _mm256_max_ps(m8, _mm256_loadu_ps(sc + j));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m8), _mm256_extractf128_ps(m8, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    float mx = _mm_cvtss_f32(m4);
    for (; j < n; ++j) mx = sc[j] > mx ? sc[j] : mx;
    const __m256 mxv = _mm256_set1_ps(mx);
    __m256 s8 = _mm256_setzero_ps();
    for (j = 0; j + 8 <= n; j += 8) {
      __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(sc + j), mxv));
      _mm256_storeu_ps(sc + j, e);
      s8 = _mm256_add_ps(s8, e);
    }
    float sum = hsum(s8);
    for (; j < n; ++j) {
      float e[8] = {sc[j] - mx, 0, 0, 0, 0, 0, 0, 0};
      _mm256_storeu_ps(e, exp256(_mm256_loadu_ps(e)));
      sum += (sc[j] = e[0]);
    }
    const __m256 inv = _mm256_set1_ps(1.0f / sum);
    for (j = 0; j + 8 <= n; j += 8) _mm256_storeu_ps(sc + j, _mm256_mul_ps(_mm256_loadu_ps(sc + j), inv));
    for (; j < n; ++j) sc[j] *= 1.0f / sum;
  }
  for (int i = 0; i < G * D; ++i) out[i] = 0.f;
  for (int j = 0; j < n; ++j) {
    const int p = first + j;
    const float* v = vc + (size_t(table[p / B]) * B + p % B) * row_stride + head_off;
    for (int g = 0; g < G; ++g) axpy(scores[size_t(g) * n + j], v, out + size_t(g) * D, D);
  }
}

const KernelTable kAvx2{matmul, dot, axpy, attend};

}  // namespace

const KernelTable* avx2_kernels() { return &kAvx2; }

}  // namespace ns::cpu

#ifdef __clang__
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#else  // not x86-64 GCC/clang

namespace ns::cpu {
const KernelTable* avx2_kernels() { return nullptr; }
}  // namespace ns::cpu

#endif
