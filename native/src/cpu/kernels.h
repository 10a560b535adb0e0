// The CPU backend's inner loops, in two builds chosen once at run time: AVX2+FMA+F16C
// (kernels_avx2.cc) and portable C++ (kernels_generic.cc). Weights stay in their stored dtype
// (f32 / bf16 / f16, or int8 with per-row scales) and are widened to f32 in registers; all
// arithmetic is f32.
#pragma once

#include <cstddef>
#include <cstdint>

#include "engine.h"

namespace ns::cpu {

struct KernelTable {
  // y[t * ldy + r] = sum_i x[t * ldx + i] * W[r * in + i]   for r in [r0, r1), t in [0, nt).
  // W is row-major [out, in] (HF nn.Linear layout) in dtype wt; for wt I8 the sum (over the int8
  // values, exact in f32) is multiplied by scale[r] at the end. Rows are processed in chunks
  // small enough to stay in L2 while every token of the step streams past them, so a prefill
  // reads each weight row from memory once.
  void (*matmul)(const float* x, int nt, int ldx, const void* w, DType wt, const float* scale, int in, int r0, int r1,
                 float* y, int ldy);
  float (*dot)(const float* a, const float* b, int n);
  // y += a * x
  void (*axpy)(float a, const float* x, float* y, int n);
  // Causal attention of G query heads sharing one KV head, for one token at position n - 1 over
  // the keys/values of positions [first, n) (first > 0: a sliding window), which live in the paged
  // cache at cache + (table[j / B] * B + j % B) * row_stride + head_off. q and out hold G heads of
  // D floats back to back; scores is scratch of G * (n - first) floats. Scores are q.k * scale,
  // then softcap * tanh(s / softcap) when softcap > 0 (Gemma 2). Each K/V row is read once for
  // the whole group.
  void (*attend)(const float* q, int G, const float* k_cache, const float* v_cache, const int32_t* table, int B,
                 size_t row_stride, size_t head_off, int first, int n, int D, float scale, float softcap,
                 float* scores, float* out);
};

const KernelTable& kernels();  // AVX2 table when the CPU supports it, else the generic one

const KernelTable& generic_kernels();
const KernelTable* avx2_kernels();  // nullptr when not compiled for x86

// dst[i] = float(src[i]) for one row of a tensor in dtype dt.
void to_f32(const void* src, DType dt, float* dst, size_t n);

}  // namespace ns::cpu
