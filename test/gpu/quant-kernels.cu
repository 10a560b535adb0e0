// Kernel-level checks of the quantized paths on a GPU, without a model (docs/QUANTIZATION.md):
//  1. gemv_quant, int8 and E4M3 weights against 16-bit rows (W8A16), 1..4 rows, bf16 and fp16, the
//     three output modes: against a double-precision product of the same quantized values
//     (error / sum |w x|);
//  1a. gemv_fused (16-bit, int8 and E4M3 weights): SwiGLU and RoPE + the KV write in the GEMV's
//     epilogue, bit-identical to the plain GEMV followed by swiglu / rope_kv_write, and the family
//     forward's form (RoPE tables) to the plain GEMV followed by family.cu's qkv kernel;
//  1b. gemm_quant (weight-only products of 5..130 rows on tensor cores): int8 and E4M3 weights, the
//     three output modes, against the double product; two runs bit-identical;
//  2. quantize_act: dynamic per-token (with and without an amax cap) and static scales: every E4M3
//     code and scale equal to the host quantizer's (common/quant.h: f32_to_e4m3(x / s));
//  3. cuBLASLt's E4M3 GEMM with the per-row scales applied by cuBLASLt (lt_gemm.cu fp8_scaled, the
//     W8A8 path of matmul_fp8 for > 4 rows: 5..300 rows, not padded; bf16, f32 and accumulated into
//     f32; first heuristic choice, and at M = 64 the form tune_fp8 timed faster (scaled, or f32 +
//     fp8_epilogue, whole or split over K) and the f32 form's measured plan; nothing written past y's M rows), and the
//     fallback without it (rows padded to 16, f32 out, fp8_epilogue): against the double product;
//  4. dequantize: int8 and E4M3 x scale, bit-exact against the host;
//     rmsnorm_quant and swiglu_quant (quant_act.cu): every E4M3 code and scale equal to rmsnorm /
//     swiglu followed by quantize_act (dynamic, capped and static scales, bf16 and fp16);
//  5. rope_kv_write into an E4M3 cache: every byte equal to e4m3(bf16 value / scale) of the same step
//     written into a bf16 cache (the vector kernel, head_dim 128, and the scalar one, head_dim 72);
//  6. attention (flash tiles + SIMT tokens, and SIMT only, split keys and one block a (token, head);
//     the E4M3 decode kernel, one block a (token, head) and split keys; block sizes 16 and 12) over an
//     E4M3 cache against the same step over a bf16 cache holding the dequantized values (scales 1 and 0.5: exact in bf16), which must
//     agree to rounding (max abs diff / max |v| <= 2e-3; the scales fold in at other points);
//  7. the quantized MoE experts (moe.cu's grouped GEMV, moe_quant.cu): grouped GEMV gated / down with the shared expert,
//     moe_dequant_active bit-exact, and the prefill path (dequantized slots + moe_mma by_slot).
// usage (repo root, on the GPU host; test/gpu/run-all.sh quant does this):
//   nvcc -O3 -std=c++17 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -Inative/src test/gpu/quant-kernels.cu \
//     native/src/cuda/{gemv,quant_gemm,quant_act,quant_mma,attention,attention_prefill,rope_kv,kernels_basic,lt_gemm,moe,moe_quant,family}.cu native/src/common/{dl,quant,settings}.cc \
//     -ldl -o /tmp/quant-kernels && /tmp/quant-kernels     (one JSON line; exit 1 on failure)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "common/half.h"
#include "common/quant.h"
#include "cuda/cuda_common.h"
#include "cuda/family_kernels.h"
#include "cuda/kernels.h"
#include "cuda/kv_layout.h"
#include "cuda/lt_gemm.h"
#include "cuda/moe.h"
#include "kernel_test.h"

using namespace ns;
using namespace ns::cuda;
using namespace ns::cuda::test;

namespace {

std::mt19937 rng(1234);
int failures = 0;
std::string report;

void note(const std::string& what, double err, double tol) {
  const bool ok = err <= tol;  // NaN fails
  if (!ok) ++failures;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s{\"check\":\"%s\",\"error\":%.3g,\"tolerance\":%.3g,\"ok\":%s}", report.empty() ? "" : ",", what.c_str(),
                std::isfinite(err) ? err : 1e30, tol, ok ? "true" : "false");
  report += buf;
  std::fprintf(stderr, "%-60s error %.3g (tolerance %.3g) %s\n", what.c_str(), err, tol, ok ? "ok" : "FAIL");
}

uint16_t to16(DType dt, float x) { return dt == DType::BF16 ? f32_to_bf16(x) : f32_to_f16(x); }
float from16(DType dt, uint16_t b) { return dt == DType::BF16 ? bf16_to_f32(b) : f16_to_f32(b); }
const char* dn(DType dt) { return dt == DType::BF16 ? "bf16" : "fp16"; }

// Random weights quantized by the host quantizer: bytes and per-row scales.
void quantized(int N, int K, WeightFormat fmt, std::vector<uint8_t>& q, std::vector<float>& s) {
  std::normal_distribution<float> nd(0.f, 0.02f);
  std::vector<float> w((size_t)N * K);
  for (auto& x : w) x = nd(rng);
  q.resize(w.size());
  s.resize(N);
  quant::quantize_rows(w.data(), DType::F32, N, K, fmt, 0, K, q.data(), s.data(), "w");
}
double wval(WeightFormat fmt, uint8_t b) { return fmt == WeightFormat::Int8 ? (double)static_cast<int8_t>(b) : quant::e4m3_to_f32(b); }

// M rows of K E4M3 codes (of N(0, 1) / 0.3) with scales 0.01 * (1 + r % 7), in a buffer of `rows`
// rows (those past M hold the NaN code 0x7f).
void e4m3_rows(int M, int K, int rows, std::vector<uint8_t>& x, std::vector<float>& xs) {
  std::normal_distribution<float> nd(0.f, 1.f);
  x.assign((size_t)rows * K, 0x7f);
  xs.resize(M);
  for (int r = 0; r < M; ++r) {
    xs[r] = 0.01f * (1 + r % 7);
    for (int k = 0; k < K; ++k) x[(size_t)r * K + k] = quant::f32_to_e4m3(nd(rng) / 0.3f);
  }
}

// The product of E4M3 rows x (scales xs) and E4M3 weights w (scales ws): y[m, n] in double, and
// sum |w x| for the relative error.
void e4m3_product(const std::vector<uint8_t>& w, const std::vector<float>& ws, const std::vector<uint8_t>& x,
                  const std::vector<float>& xs, int M, int N, int K, std::vector<double>& ref, std::vector<double>& mag) {
  ref.assign((size_t)M * N, 0);
  mag.assign((size_t)M * N, 1e-30);
  std::vector<float> wf(w.size()), xf((size_t)M * K);
  for (size_t i = 0; i < w.size(); ++i) wf[i] = quant::e4m3_to_f32(w[i]);
  for (size_t i = 0; i < xf.size(); ++i) xf[i] = quant::e4m3_to_f32(x[i]);
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      double a = 0, g = 0;
      for (int k = 0; k < K; ++k) {
        const double p = (double)wf[(size_t)n * K + k] * xf[(size_t)m * K + k];
        a += p;
        g += std::fabs(p);
      }
      ref[(size_t)m * N + n] = a * ws[n] * xs[m];
      mag[(size_t)m * N + n] += g * ws[n] * xs[m];
    }
}

void check_gemv() {
  for (DType act : {DType::BF16, DType::F16})
    for (WeightFormat fmt : {WeightFormat::Int8, WeightFormat::Fp8})
      // every launch shape: one warp a row with 4 chunks in flight (K 256), with 8 (K 4096), and two
      // warps a row (K 11008 at fewer than 12288 rows)
      for (const auto& [N, K] : std::vector<std::pair<int, int>>{{272, 256}, {12288, 256}, {272, 4096}, {12288, 4096}, {272, 11008}}) {
          std::vector<uint8_t> q;
          std::vector<float> s;
          quantized(N, K, fmt, q, s);
          for (int R = 1; R <= 4; ++R) {
            std::normal_distribution<float> nd(0.f, 1.f);
            std::vector<uint16_t> x16((size_t)R * K);
            std::vector<float> xf((size_t)R * K);
            for (size_t i = 0; i < x16.size(); ++i) { x16[i] = to16(act, nd(rng)); xf[i] = from16(act, x16[i]); }
            std::vector<double> ref((size_t)R * N), mag((size_t)R * N);
            for (int r = 0; r < R; ++r)
              for (int n = 0; n < N; ++n) {
                double acc = 0, m = 0;
                for (int k = 0; k < K; ++k) {
                  const double p = wval(fmt, q[(size_t)n * K + k]) * s[n] * xf[(size_t)r * K + k];
                  acc += p;
                  m += std::fabs(p);
                }
                ref[(size_t)r * N + n] = acc;
                mag[(size_t)r * N + n] = m + 1e-30;
              }
            uint8_t* dq = upload(q);
            float* ds = upload(s);
            uint16_t* dx = upload(x16);
            for (GemvOut mode : {GemvOut::Act, GemvOut::F32, GemvOut::AddResidual}) {
              std::vector<float> base((size_t)R * N, 0.25f);
              float* dy = upload(base);  // f32 modes write / add here; Act writes 16-bit values into its first half
              gemv_quant(act, fmt == WeightFormat::Int8 ? DType::I8 : DType::F8E4M3, QuantGemv{dq, ds, dx, R, N, K, dy}, mode, 0);
              double err = 0;
              if (mode == GemvOut::Act) {
                const auto y = download(reinterpret_cast<uint16_t*>(dy), (size_t)R * N);
                for (size_t i = 0; i < y.size(); ++i) err = std::max(err, std::fabs(from16(act, y[i]) - ref[i]) / mag[i]);
              } else {
                const auto y = download(dy, (size_t)R * N);
                for (size_t i = 0; i < y.size(); ++i)
                  err = std::max(err, std::fabs(y[i] - (mode == GemvOut::AddResidual ? 0.25 : 0.0) - ref[i]) / mag[i]);
              }
              cudaFree(dy);
              // f32 accumulation: ~1e-6 of sum |w x|; a 16-bit output adds its own rounding (2^-8 relative for bf16).
              const double tol = mode == GemvOut::Act ? (act == DType::BF16 ? 8e-3 : 2e-3) : 1e-5;
              note(std::string("gemv ") + (fmt == WeightFormat::Int8 ? "int8 W8A16" : "fp8 W8A16") + " " + dn(act) + " N" + std::to_string(N) + " K" +
                       std::to_string(K) + " R" + std::to_string(R) + " mode" + std::to_string((int)mode), err, tol);
            }
            cudaFree(dq); cudaFree(ds); cudaFree(dx);
          }
        }
}

// gemv_fused (kernels.h): SwiGLU and RoPE + the KV write in the decode GEMV's epilogue, for 16-bit,
// int8 and E4M3 weights, 1..4 rows: every output bit equal to the plain GEMV followed by swiglu /
// rope_kv_write (at matrices of 12288+ rows, where the plain GEMV also takes one warp a row).
void check_gemv_fused() {
  std::normal_distribution<float> nd(0.f, 1.f);
  for (DType act : {DType::BF16, DType::F16})
    for (int wf = 0; wf < 3; ++wf) {  // weights: activation dtype, int8, E4M3
      const DType wt = wf == 0 ? act : wf == 1 ? DType::I8 : DType::F8E4M3;
      const std::string tag = std::string(dn(act)) + (wf == 0 ? " 16-bit" : wf == 1 ? " int8" : " fp8") + " weights";
      // The product of x [R, K] and a random W [N, K] of this format into y (activation dtype).
      struct Mat { void* w; float* s; };
      auto make = [&](int N, int K) {
        Mat m{nullptr, nullptr};
        if (wf == 0) {
          std::vector<uint16_t> w((size_t)N * K);
          for (auto& v : w) v = to16(act, 0.02f * nd(rng));
          m.w = upload(w);
        } else {
          std::vector<uint8_t> q;
          std::vector<float> sc;
          quantized(N, K, wf == 1 ? WeightFormat::Int8 : WeightFormat::Fp8, q, sc);
          m.w = upload(q);
          m.s = upload(sc);
        }
        return m;
      };
      auto plain = [&](const Mat& m, const void* x, int R, int N, int K, void* y) {
        if (wf == 0) gemv(act, m.w, x, R, N, K, y, GemvOut::Act, 0);
        else gemv_quant(act, wt, QuantGemv{m.w, m.s, x, R, N, K, y}, GemvOut::Act, 0);
      };
      auto rows = [&](int R, int K) {
        std::vector<uint16_t> x((size_t)R * K);
        for (auto& v : x) v = to16(act, nd(rng));
        return upload(x);
      };
      {  // SwiGLU: I not a multiple of 4 (the last block's pairs past I do nothing)
        const int I = 6146, K = 4096;
        const Mat m = make(2 * I, K);
        for (int R = 1; R <= 4; ++R) {
          uint16_t* x = rows(R, K);
          uint16_t *gu, *ref, *out;
          NS_CUDA(cudaMalloc(&gu, (size_t)R * 2 * I * 2)); NS_CUDA(cudaMalloc(&ref, (size_t)R * I * 2)); NS_CUDA(cudaMalloc(&out, (size_t)R * I * 2));
          NS_CUDA(cudaMemset(out, 0xff, (size_t)R * I * 2));
          plain(m, x, R, 2 * I, K, gu);
          swiglu(act, gu, R, I, ref, 0);
          GemvFusion f{GemvFuse::SwiGlu, out};
          f.I = I;
          gemv_fused(act, wt, m.w, m.s, x, R, K, f, 0);
          const auto a = download(ref, (size_t)R * I), b = download(out, (size_t)R * I);
          double bad = 0;
          for (size_t i = 0; i < a.size(); ++i) bad += a[i] != b[i];
          note("gemv_fused swiglu " + tag + " R" + std::to_string(R) + " (elements differing)", bad, 0);
          cudaFree(x); cudaFree(gu); cudaFree(ref); cudaFree(out);
        }
        cudaFree(m.w); cudaFree(m.s);
      }
      // RoPE + KV write: the 7B's heads (bf16 and E4M3 caches), and GQA with head_dim 64 and a bias.
      struct Heads { int nh, nkv, hd; bool bias; };
      // Bytes differing between two runs' q heads (the first qn of each row's N outputs) and K/V caches.
      auto differing = [&](const uint16_t* q1, const uint16_t* q2, int R, int N, int qn, void* k1, void* k2, void* v1, void* v2, size_t kvb) {
        const auto a = download(q1, (size_t)R * N), c = download(q2, (size_t)R * N);
        double bad = 0;
        for (int r = 0; r < R; ++r)
          for (int i = 0; i < qn; ++i) bad += a[(size_t)r * N + i] != c[(size_t)r * N + i];
        const auto ka = download(static_cast<uint8_t*>(k1), kvb), kb = download(static_cast<uint8_t*>(k2), kvb);
        const auto va = download(static_cast<uint8_t*>(v1), kvb), vb = download(static_cast<uint8_t*>(v2), kvb);
        for (size_t i = 0; i < kvb; ++i) bad += (ka[i] != kb[i]) + (va[i] != vb[i]);
        return bad;
      };
      for (const Heads& hs : {Heads{32, 32, 128, false}, Heads{128, 32, 64, true}}) {
        const int K = 512, N = (hs.nh + 2 * hs.nkv) * hs.hd, B = 16, blocks = 8;
        const Mat m = make(N, K);
        std::vector<uint16_t> bias(N);
        for (auto& v : bias) v = to16(act, 0.1f * nd(rng));
        uint16_t* dbias = upload(bias);
        std::vector<float> inv(hs.hd / 2);
        for (int j = 0; j < hs.hd / 2; ++j) inv[j] = 1.f / std::pow(10000.f, 2.f * j / hs.hd);
        float* dinv = upload(inv);
        const std::vector<int32_t> pos{5, 1000, 17, 300}, slot{3 * B + 5, -1, 7 * B, B + 15};  // -1: a padding row
        int32_t *dpos = upload(pos), *dslot = upload(slot);
        const size_t kvn = (size_t)blocks * B * hs.nkv * hs.hd;
        for (int fp8 = 0; fp8 < 2; ++fp8)
          for (int R = 1; R <= 4; ++R) {
            const size_t kvb = fp8 ? kvn : 2 * kvn;
            uint16_t* x = rows(R, K);
            uint16_t *q1, *q2;
            void *k1, *v1, *k2, *v2;
            NS_CUDA(cudaMalloc(&q1, (size_t)R * N * 2)); NS_CUDA(cudaMalloc(&q2, (size_t)R * N * 2));
            for (void** c : {&k1, &v1, &k2, &v2}) { NS_CUDA(cudaMalloc(c, kvb)); NS_CUDA(cudaMemset(*c, 0x5a, kvb)); }
            const void* b = hs.bias ? dbias : nullptr;
            plain(m, x, R, N, K, q1);
            rope_kv_write(act, q1, b, R, hs.nh, hs.nkv, hs.hd, dpos, dslot, dinv, KvCache{k1, v1, fp8 == 1, 0.37f, 0.74f}, B, 0);
            GemvFusion f{GemvFuse::RopeKv, q2};
            f.bias = b; f.nh = hs.nh; f.nkv = hs.nkv; f.hd = hs.hd; f.pos = dpos; f.slot = dslot; f.inv_freq = dinv;
            f.kv = KvCache{k2, v2, fp8 == 1, 0.37f, 0.74f}; f.block_size = B;
            gemv_fused(act, wt, m.w, m.s, x, R, K, f, 0);
            const double bad = differing(q1, q2, R, N, hs.nh * hs.hd, k1, k2, v1, v2, kvb);
            note("gemv_fused rope_kv " + tag + " nh" + std::to_string(hs.nh) + " nkv" + std::to_string(hs.nkv) + " hd" + std::to_string(hs.hd) +
                     (hs.bias ? " bias" : "") + (fp8 ? " E4M3 cache" : "") + " R" + std::to_string(R) + " (bytes differing)", bad, 0);
            cudaFree(x); cudaFree(q1); cudaFree(q2); cudaFree(k1); cudaFree(v1); cudaFree(k2); cudaFree(v2);
          }
        cudaFree(m.w); cudaFree(m.s); cudaFree(dbias); cudaFree(dinv); cudaFree(dpos); cudaFree(dslot);
      }
      // The family forward's form (cos / sin tables from the host, the bias added in f32): every
      // byte equal to the plain GEMV followed by family.cu's qkv kernel (no q/k norms, whole heads
      // rotated), with and without a bias, bf16 and E4M3 caches, a padding row.
      for (const Heads& hs : {Heads{32, 32, 128, true}, Heads{128, 32, 64, false}}) {
        const int K = 512, N = (hs.nh + 2 * hs.nkv) * hs.hd, B = 16, blocks = 8, half = hs.hd / 2;
        const Mat m = make(N, K);
        std::vector<uint16_t> bias(N);
        for (auto& v : bias) v = to16(act, 0.1f * nd(rng));
        uint16_t* dbias = upload(bias);
        const std::vector<int32_t> slot{3 * B + 5, -1, 7 * B, B + 15};  // -1: a padding row
        int32_t* dslot = upload(slot);
        const size_t kvn = (size_t)blocks * B * hs.nkv * hs.hd;
        for (int fp8 = 0; fp8 < 2; ++fp8)
          for (int R = 1; R <= 4; ++R) {
            std::vector<float> tab((size_t)2 * R * half);  // cos [R, half], then sin [R, half]
            for (int r = 0; r < R; ++r)
              for (int j = 0; j < half; ++j) {
                const double a = (5.0 + 311.0 * r) / std::pow(10000.0, 2.0 * j / hs.hd);
                tab[(size_t)r * half + j] = static_cast<float>(std::cos(a));
                tab[(size_t)(R + r) * half + j] = static_cast<float>(std::sin(a));
              }
            float* dtab = upload(tab);
            const size_t kvb = fp8 ? kvn : 2 * kvn;
            uint16_t* x = rows(R, K);
            uint16_t *q1, *q2;
            void *k1, *v1, *k2, *v2;
            NS_CUDA(cudaMalloc(&q1, (size_t)R * N * 2)); NS_CUDA(cudaMalloc(&q2, (size_t)R * N * 2));
            for (void** c : {&k1, &v1, &k2, &v2}) { NS_CUDA(cudaMalloc(c, kvb)); NS_CUDA(cudaMemset(*c, 0x5a, kvb)); }
            const void* b = hs.bias ? dbias : nullptr;
            plain(m, x, R, N, K, q1);
            family_qkv(act, q1, b, nullptr, nullptr, 1e-6f, R, hs.nh, hs.nkv, hs.hd, half, dtab, dtab + (size_t)R * half, dslot,
                       KvCache{k1, v1, fp8 == 1, 0.37f, 0.74f}, B, 0);
            GemvFusion f{GemvFuse::RopeKv, q2};
            f.bias = b; f.nh = hs.nh; f.nkv = hs.nkv; f.hd = hs.hd; f.slot = dslot;
            f.cos = dtab; f.sin = dtab + (size_t)R * half;
            f.kv = KvCache{k2, v2, fp8 == 1, 0.37f, 0.74f}; f.block_size = B;
            gemv_fused(act, wt, m.w, m.s, x, R, K, f, 0);
            const double bad = differing(q1, q2, R, N, hs.nh * hs.hd, k1, k2, v1, v2, kvb);
            note("gemv_fused family rope tables " + tag + " nh" + std::to_string(hs.nh) + " nkv" + std::to_string(hs.nkv) + " hd" +
                     std::to_string(hs.hd) + (hs.bias ? " bias" : "") + (fp8 ? " E4M3 cache" : "") + " R" + std::to_string(R) +
                     " (bytes differing)", bad, 0);
            cudaFree(x); cudaFree(q1); cudaFree(q2); cudaFree(k1); cudaFree(v1); cudaFree(k2); cudaFree(v2); cudaFree(dtab);
          }
        cudaFree(m.w); cudaFree(m.s); cudaFree(dbias); cudaFree(dslot);
      }
    }
}

void check_quantize_act() {
  for (DType act : {DType::BF16, DType::F16})
    for (int variant = 0; variant < 3; ++variant) {  // dynamic, dynamic with an amax cap, static
      const int M = 37, K = 4096 + 8;
      std::normal_distribution<float> nd(0.f, 3.f);
      std::vector<uint16_t> x((size_t)M * K);
      for (auto& v : x) v = to16(act, nd(rng));
      for (int k = 0; k < K; ++k) x[(size_t)5 * K + k] = 0;  // an all-zero row (a padded graph slot)
      const float ub = variant == 1 ? 6.f : 0.f, st = 0.03125f;
      std::vector<float> sstat{st};
      uint16_t* dx = upload(x);
      float* dst = upload(sstat);
      uint8_t* dq = nullptr;
      float* dsc = nullptr;
      NS_CUDA(cudaMalloc(&dq, (size_t)M * K));
      NS_CUDA(cudaMalloc(&dsc, 4 * M));
      quantize_act(act, dx, M, K, variant == 2 ? dst : nullptr, ub, dq, dsc, 0);
      const auto q = download(dq, (size_t)M * K);
      const auto s = download(dsc, M);
      double bad = 0;
      for (int r = 0; r < M; ++r) {
        float amax = 0;
        for (int k = 0; k < K; ++k) amax = std::max(amax, std::fabs(from16(act, x[(size_t)r * K + k])));
        if (ub > 0) amax = std::min(amax, ub);
        const float want = variant == 2 ? st : std::max(amax / 448.f, 1.f / (448.f * 512.f));
        bad += s[r] != want;
        for (int k = 0; k < K; ++k) bad += q[(size_t)r * K + k] != quant::f32_to_e4m3(from16(act, x[(size_t)r * K + k]) / want);
      }
      note(std::string("quantize_act ") + dn(act) + (variant == 0 ? " dynamic" : variant == 1 ? " dynamic, amax cap" : " static") +
               " (codes and scales differing)", bad, 0);
      cudaFree(dx); cudaFree(dst); cudaFree(dq); cudaFree(dsc);
    }
}

// gemm_quant (weight-only products of 5..130 rows on tensor cores): int8 and E4M3 weights, bf16 and
// fp16, the three output modes, against the double product; two runs bit-identical.
void check_gemm_quant() {
  struct Shape { int M, N, K; };
  float* ws = nullptr;
  const size_t ws_bytes = (size_t)64 << 20;
  NS_CUDA(cudaMalloc(&ws, ws_bytes));
  const int sms = sm_count();
  for (WeightFormat fmt : {WeightFormat::Int8, WeightFormat::Fp8})
    for (DType act : {DType::BF16, DType::F16})
      for (const Shape sh : {Shape{5, 272, 256}, Shape{64, 1024, 4096}, Shape{17, 512, 11008}, Shape{130, 400, 1024}}) {
        const int M = sh.M, N = sh.N, K = sh.K;
        std::vector<uint8_t> q;
        std::vector<float> s;
        quantized(N, K, fmt, q, s);
        std::normal_distribution<float> nd(0.f, 1.f);
        std::vector<uint16_t> x16((size_t)M * K);
        std::vector<float> xf((size_t)M * K);
        for (size_t i = 0; i < x16.size(); ++i) { x16[i] = to16(act, nd(rng)); xf[i] = from16(act, x16[i]); }
        std::vector<double> ref((size_t)M * N), mag((size_t)M * N), wd((size_t)N * K);
        for (size_t i = 0; i < wd.size(); ++i) wd[i] = wval(fmt, q[i]);
        for (int m = 0; m < M; ++m)
          for (int n = 0; n < N; ++n) {
            double acc = 0, mg = 0;
            const double* wr = &wd[(size_t)n * K];
            const float* xr = &xf[(size_t)m * K];
            for (int k = 0; k < K; ++k) { const double p = wr[k] * xr[k]; acc += p; mg += std::fabs(p); }
            ref[(size_t)m * N + n] = acc * s[n];
            mag[(size_t)m * N + n] = mg * s[n] + 1e-30;
          }
        uint8_t* dq = upload(q);
        float* ds = upload(s);
        uint16_t* dx = upload(x16);
        for (GemvOut mode : {GemvOut::Act, GemvOut::F32, GemvOut::AddResidual}) {
          const std::string name = std::string("gemm_quant ") + (fmt == WeightFormat::Int8 ? "int8 " : "fp8 W8A16 ") + dn(act) + " M" +
                                   std::to_string(M) + " N" + std::to_string(N) + " K" + std::to_string(K) +
                                   (mode == GemvOut::Act ? " act" : mode == GemvOut::F32 ? " f32" : " add");
          std::vector<float> base((size_t)M * N, 0.25f);
          std::vector<float> got[2];
          for (int rep = 0; rep < 2; ++rep) {
            float* dy = upload(base);
            const bool ok = gemm_quant(act, fmt == WeightFormat::Int8 ? DType::I8 : DType::F8E4M3, QuantGemm{dq, ds, dx, M, N, K, dy}, mode, ws,
                                       ws_bytes, sms, 0);
            if (ok && mode == GemvOut::Act) {
              const auto y = download(reinterpret_cast<uint16_t*>(dy), (size_t)M * N);
              for (auto b : y) got[rep].push_back(from16(act, b));
            } else if (ok) {
              got[rep] = download(dy, (size_t)M * N);
            }
            cudaFree(dy);
          }
          if (got[0].size() != (size_t)M * N || got[1].size() != got[0].size()) { note(name + " (refused)", 1, 0); continue; }
          double err = 0, differ = 0;
          for (size_t i = 0; i < got[0].size(); ++i) {
            err = std::max(err, std::fabs(got[0][i] - (mode == GemvOut::AddResidual ? 0.25 : 0.0) - ref[i]) / mag[i]);
            differ += got[0][i] != got[1][i];
          }
          note(name, err, mode == GemvOut::Act ? (act == DType::BF16 ? 8e-3 : 2e-3) : 1e-5);
          note(name + " (elements differing between two runs)", differ, 0);
        }
        cudaFree(dq); cudaFree(ds); cudaFree(dx);
      }
  cudaFree(ws);
}

void check_fused_input_quant() {
  for (DType act : {DType::BF16, DType::F16})
    for (int variant = 0; variant < 3; ++variant)  // dynamic, dynamic with an amax cap, static
      for (int R : {5, 64}) {
        const int H = 4096, I = 11008;
        std::normal_distribution<float> nd(0.f, 1.f);
        std::vector<float> x((size_t)R * H), w(H);
        for (auto& v : x) v = 3.f * nd(rng);
        for (auto& v : w) v = 1.f + 0.1f * nd(rng);
        std::vector<uint16_t> gu((size_t)R * 2 * I);
        for (auto& v : gu) v = to16(act, 2.f * nd(rng));
        const std::vector<float> st = {0.05f};
        float* dst = upload(st);
        const float* stat = variant == 2 ? dst : nullptr;
        const float ub = variant == 1 ? 4.f : 0.f;
        float *dx = upload(x), *dw = upload(w);
        uint16_t* dgu = upload(gu);
        const size_t width = std::max(H, I);
        void *y16, *qa, *qb;
        float *sa, *sb;
        NS_CUDA(cudaMalloc(&y16, 2 * R * width)); NS_CUDA(cudaMalloc(&qa, R * width)); NS_CUDA(cudaMalloc(&qb, R * width));
        NS_CUDA(cudaMalloc(&sa, 4 * R)); NS_CUDA(cudaMalloc(&sb, 4 * R));
        for (int which = 0; which < 2; ++which) {  // rmsnorm, swiglu
          const int K = which == 0 ? H : I;
          bool ran;
          if (which == 0) {
            rmsnorm(act, dx, nullptr, R, H, dw, 1e-5f, y16, 0);
            ran = rmsnorm_quant(act, dx, R, H, dw, 1e-5f, stat, ub, qb, sb, 0);
          } else {
            swiglu(act, dgu, R, I, y16, 0);
            ran = swiglu_quant(act, dgu, R, I, stat, ub, qb, sb, 0);
          }
          quantize_act(act, y16, R, K, stat, ub, qa, sa, 0);
          const auto ha = download(static_cast<uint8_t*>(qa), (size_t)R * K), hb = download(static_cast<uint8_t*>(qb), (size_t)R * K);
          const auto ssa = download(sa, R), ssb = download(sb, R);
          double bad = ran ? 0 : 1;
          for (size_t i = 0; i < ha.size(); ++i) bad += ha[i] != hb[i];
          for (int r = 0; r < R; ++r) bad += ssa[r] != ssb[r];
          note(std::string(which == 0 ? "rmsnorm_quant " : "swiglu_quant ") + dn(act) + (variant == 0 ? " dynamic" : variant == 1 ? " amax cap" : " static") +
                   " R" + std::to_string(R) + " (codes and scales differing from the unfused kernels)", bad, 0);
        }
        cudaFree(dst); cudaFree(dx); cudaFree(dw); cudaFree(dgu); cudaFree(y16); cudaFree(qa); cudaFree(qb); cudaFree(sa); cudaFree(sb);
      }
}

void check_fp8_gemm() {
  std::string why;
  auto lt = LtGemm::create(0, &why);
  if (!lt) { note("cuBLASLt for the E4M3 GEMM: " + why, 1, 0); return; }
  for (int N : {512, 2048})
    for (int M : {5, 64, 300}) {
      const int K = 1024, MP = (M + 15) / 16 * 16;
      std::vector<uint8_t> w;
      std::vector<float> ws;
      quantized(N, K, WeightFormat::Fp8, w, ws);
      std::vector<uint8_t> x;
      std::vector<float> xs;
      e4m3_rows(M, K, MP, x, xs);  // padding rows hold NaN codes: their results must never matter
      std::vector<double> ref, mag;
      e4m3_product(w, ws, x, xs, M, N, K, ref, mag);
      uint8_t* dw = upload(w);
      uint8_t* dx = upload(x);
      float* dws = upload(ws);
      float* dxs = upload(xs);
      float* acc = nullptr;
      NS_CUDA(cudaMalloc(&acc, (size_t)4 * MP * N));
      if (!lt->fp8(MP, N, K, dw, dx, acc, &why)) { note("cuBLASLt E4M3 GEMM: " + why, 1, 0); continue; }
      for (GemvOut mode : {GemvOut::F32, GemvOut::Act}) {
        std::vector<float> zero((size_t)M * N, 0.f);
        float* dy = upload(zero);
        fp8_epilogue(DType::BF16, acc, dxs, dws, M, N, dy, mode, 0);
        std::vector<float> yf;
        if (mode == GemvOut::F32) yf = download(dy, (size_t)M * N);
        else {
          const auto y = download(reinterpret_cast<uint16_t*>(dy), (size_t)M * N);
          for (auto b : y) yf.push_back(bf16_to_f32(b));
        }
        double err = 0;
        for (size_t i = 0; i < (size_t)M * N; ++i) err = std::max(err, std::fabs(yf[i] - ref[i]) / mag[i]);
        // cuBLASLt accumulates E4M3 products in f32 (with its periodic promotion on Hopper).
        note("cuBLASLt E4M3 GEMM + epilogue M" + std::to_string(M) + " N" + std::to_string(N) + (mode == GemvOut::F32 ? " f32" : " bf16"), err,
             mode == GemvOut::F32 ? 1e-4 : 8e-3);
        cudaFree(dy);
      }
      cudaFree(dw); cudaFree(dx); cudaFree(dws); cudaFree(dxs); cudaFree(acc);
    }
}

void check_fp8_scaled_gemm() {
  std::string why;
  auto lt = LtGemm::create(0, &why);
  if (!lt) { note("cuBLASLt for the scaled E4M3 GEMM: " + why, 1, 0); return; }
  for (int N : {512, 2048})
    for (int M : {5, 64, 300}) {
      const int K = 1024;
      std::vector<uint8_t> w, w2;
      std::vector<float> ws, ws2;
      quantized(N, K, WeightFormat::Fp8, w, ws);
      quantized(N, K, WeightFormat::Fp8, w2, ws2);  // a second matrix of the shape for tune_fp8
      std::vector<uint8_t> x;
      std::vector<float> xs;
      e4m3_rows(M, K, M, x, xs);
      std::vector<double> ref, mag;
      e4m3_product(w, ws, x, xs, M, N, K, ref, mag);
      uint8_t* dw = upload(w);
      uint8_t* dw2 = upload(w2);
      uint8_t* dx = upload(x);
      float* dws = upload(ws);
      float* dxs = upload(xs);
      // bf16 out, f32 out, f32 accumulated onto 0.25 (the residual stream); M = 64 planned by tune_fp8
      // first, which times the scaled form against the f32 one + epilogue and keeps the faster: the
      // product is then run as matmul_fp8 runs it (scaled, or, where declined, f32 + fp8_epilogue with
      // the algorithm tune_fp8 measured), and the f32 form's tuned algorithm is checked either way.
      for (int mode = 0; mode < 3; ++mode) {
        const LtGemm::Fp8 shape{M, N, K, mode == 0 ? CUDA_R_16BF : CUDA_R_32F, mode == 2};
        const GemvOut out = mode == 0 ? GemvOut::Act : mode == 1 ? GemvOut::F32 : GemvOut::AddResidual;
        const size_t guard = 4096;  // floats past y's M rows that must stay untouched
        std::vector<float> base((size_t)M * N + guard, 0.25f);
        float* dy = upload(base);
        float* acc = nullptr;  // room for 4 K-slice partial products
        NS_CUDA(cudaMalloc(&acc, (size_t)4 * 4 * M * N));
        auto epilogue = [&](int parts) { fp8_epilogue(DType::BF16, acc, dxs, dws, M, N, dy, out, 0, parts, (size_t)M * N); };
        if (M == 64) lt->tune_fp8(shape, {dw2, dw}, dws, dx, dxs, dy, {M, acc, (size_t)4 * M * N, epilogue});
        const int parts = lt->fp8_parts(M, N, K);
        const std::string what = "cuBLASLt E4M3 GEMM M" + std::to_string(M) + " N" + std::to_string(N) +
                                 (mode == 0 ? " bf16" : mode == 1 ? " f32" : " f32 accumulated");
        // form 0: as matmul_fp8 runs it; form 1 (tuned shapes): the f32 form with its measured algorithm.
        for (int form = 0; form < (M == 64 ? 2 : 1); ++form) {
          NS_CUDA(cudaMemcpy(dy, base.data(), base.size() * 4, cudaMemcpyHostToDevice));
          why.clear();
          bool scaled = form == 0 && lt->fp8_scaled(shape, dw, dws, dx, dxs, dy, &why);
          std::string name = what + (form == 1 ? " f32 form (tuned)" : scaled ? " scaled in cuBLASLt" : " f32 + epilogue") +
                             (M == 64 && form == 0 ? " (tuned)" : "") + (!scaled && parts > 1 ? " K in " + std::to_string(parts) + " slices" : "");
          if (!scaled) {
            if (!why.empty() || (M != 64 && form == 0)) {  // untuned shapes run scaled on cuBLASLt 12.9+
              note(name + (why.empty() ? ": no algorithm" : ": " + why), 1, 0);
              continue;
            }
            if (!lt->fp8(M, N, K, dw, dx, acc, &why)) { note(name + ": " + why, 1, 0); continue; }
            epilogue(parts);
          }
          const auto yf32 = download(dy, base.size());
          double err = 0, past = 0;
          for (int m = 0; m < M; ++m)
            for (int n = 0; n < N; ++n) {
              const size_t i = (size_t)m * N + n;
              const double got = mode == 0 ? bf16_to_f32(reinterpret_cast<const uint16_t*>(yf32.data())[i]) : yf32[i] - (mode == 2 ? 0.25 : 0);
              err = std::max(err, std::fabs(got - ref[i]) / mag[i]);
            }
          const size_t end = mode == 0 ? (size_t)M * N / 2 : (size_t)M * N;  // bf16 fills the first half of the floats (M N even)
          for (size_t i = end; i < base.size(); ++i) past += yf32[i] != 0.25f;
          // f32 accumulation of E4M3 products (with Hopper's periodic promotion), then one rounding.
          note(name, err, mode == 0 ? 8e-3 : 1e-4);
          note(name + " (floats written past y)", past, 0);
        }
        cudaFree(dy);
        cudaFree(acc);
      }
      cudaFree(dw); cudaFree(dw2); cudaFree(dx); cudaFree(dws); cudaFree(dxs);
    }
  std::fprintf(stderr, "%s\n", lt->fp8_summary().c_str());
}

void check_dequantize() {
  const int N = 300, K = 1024;
  for (WeightFormat fmt : {WeightFormat::Int8, WeightFormat::Fp8}) {
    std::vector<uint8_t> q;
    std::vector<float> s;
    quantized(N, K, fmt, q, s);
    for (DType act : {DType::BF16, DType::F16}) {
      uint8_t* dq = upload(q);
      float* ds = upload(s);
      uint16_t* out = nullptr;
      NS_CUDA(cudaMalloc(&out, (size_t)2 * N * K));
      dequantize(act, fmt == WeightFormat::Int8 ? DType::I8 : DType::F8E4M3, dq, ds, N, K, out, 0);
      const auto y = download(out, (size_t)N * K);
      double bad = 0;
      for (int n = 0; n < N; ++n)
        for (int k = 0; k < K; ++k) bad += y[(size_t)n * K + k] != to16(act, static_cast<float>(wval(fmt, q[(size_t)n * K + k])) * s[n]);
      note(std::string("dequantize ") + (fmt == WeightFormat::Int8 ? "int8 " : "fp8 ") + dn(act) + " (elements differing)", bad, 0);
      cudaFree(dq); cudaFree(ds); cudaFree(out);
    }
  }
}

// A paged step: S sequences of (start position, new tokens); blocks shuffled.
struct Step {
  int nh, nkv, hd, B = 16, T = 0, n_blocks = 0;
  std::vector<int32_t> pos, seq, bt_off, bt, slot, tiles, simt;
};
Step make_step(int nh, int nkv, int hd, const std::vector<std::pair<int, int>>& seqs, int B = 16) {
  Step s{nh, nkv, hd, B};
  for (auto [p, n] : seqs) s.n_blocks += (p + n + s.B - 1) / s.B;
  std::vector<int32_t> perm(s.n_blocks);
  for (int i = 0; i < s.n_blocks; ++i) perm[i] = i;
  std::shuffle(perm.begin(), perm.end(), rng);
  int used = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    auto [p, n] = seqs[i];
    s.bt_off.push_back((int32_t)s.bt.size());
    const int first = s.T;
    for (int b = 0; b < (p + n + s.B - 1) / s.B; ++b) s.bt.push_back(perm[used++]);
    for (int j = 0; j < n; ++j, ++s.T) {
      s.pos.push_back(p + j);
      s.seq.push_back((int32_t)i);
      s.slot.push_back(s.bt[s.bt_off[i] + (p + j) / s.B] * s.B + (p + j) % s.B);
    }
    if (n >= kFlashMinTokens)
      for (int i0 = 0; i0 < n; i0 += kFlashTileQ) { s.tiles.push_back(first + i0); s.tiles.push_back(std::min(kFlashTileQ, n - i0)); }
    else
      for (int j = 0; j < n; ++j) s.simt.push_back(first + j);
  }
  return s;
}

void check_rope_kv() {
  for (int hd : {128, 72}) {
    const int nh = 8, nkv = 2;
    Step st = make_step(nh, nkv, hd, {{0, 40}, {17, 1}, {100, 3}});
    std::normal_distribution<float> nd(0.f, 2.f);
    const size_t row = (size_t)(nh + 2 * nkv) * hd, kv = (size_t)st.n_blocks * st.B * nkv * hd;
    std::vector<uint16_t> qkv(st.T * row);
    for (auto& v : qkv) v = f32_to_bf16(nd(rng));
    std::vector<float> inv(hd / 2);
    for (int j = 0; j < hd / 2; ++j) inv[j] = 1.f / std::pow(10000.f, 2.f * j / hd);
    int32_t *dpos = upload(st.pos), *dslot = upload(st.slot);
    float* dinv = upload(inv);
    for (float scale : {1.f, 0.37f}) {
      uint16_t* q1 = upload(qkv);
      uint16_t* q2 = upload(qkv);
      uint16_t *k16, *v16;
      uint8_t *k8, *v8;
      NS_CUDA(cudaMalloc(&k16, 2 * kv)); NS_CUDA(cudaMalloc(&v16, 2 * kv));
      NS_CUDA(cudaMalloc(&k8, kv)); NS_CUDA(cudaMalloc(&v8, kv));
      NS_CUDA(cudaMemset(k16, 0, 2 * kv)); NS_CUDA(cudaMemset(v16, 0, 2 * kv));
      NS_CUDA(cudaMemset(k8, 0, kv)); NS_CUDA(cudaMemset(v8, 0, kv));
      rope_kv_write(DType::BF16, q1, nullptr, st.T, nh, nkv, hd, dpos, dslot, dinv, KvCache{k16, v16}, st.B, 0);
      rope_kv_write(DType::BF16, q2, nullptr, st.T, nh, nkv, hd, dpos, dslot, dinv, KvCache{k8, v8, true, scale, scale * 2}, st.B, 0);
      const auto hk16 = download(k16, kv), hv16 = download(v16, kv);
      const auto hk8 = download(k8, kv), hv8 = download(v8, kv);
      const auto hq1 = download(q1, st.T * row), hq2 = download(q2, st.T * row);
      double bad = 0;
      for (size_t i = 0; i < kv; ++i) {
        bad += hk8[i] != quant::f32_to_e4m3(bf16_to_f32(hk16[i]) / scale);
        bad += hv8[i] != quant::f32_to_e4m3(bf16_to_f32(hv16[i]) / (scale * 2));
      }
      for (size_t i = 0; i < hq1.size(); ++i) bad += hq1[i] != hq2[i];  // q is rotated the same either way
      note("rope_kv_write E4M3 cache hd" + std::to_string(hd) + " scale " + std::to_string(scale) + " (bytes differing)", bad, 0);
      cudaFree(q1); cudaFree(q2); cudaFree(k16); cudaFree(v16); cudaFree(k8); cudaFree(v8);
    }
    cudaFree(dpos); cudaFree(dslot); cudaFree(dinv);
  }
}

void check_attention() {
  for (int hd : {128, 64, 256})
    for (float ks : {1.f, 0.5f})
      for (int B : {16, 12}) {  // 12: the decode kernels' block lookup by division (16: by shift)
      const int nh = 8, nkv = 4;
      // {900, 1}: a context past one block's share of split keys (attention.cu attn_vec_kernel kSplitKeys)
      Step st = make_step(nh, nkv, hd, {{0, 80}, {30, 1}, {200, 1}, {63, 5}, {5, 20}, {900, 1}}, B);
      const size_t row = (size_t)(nh + 2 * nkv) * hd, kv = (size_t)st.n_blocks * st.B * nkv * hd;
      std::normal_distribution<float> nd(0.f, 1.f);
      std::vector<uint16_t> q(st.T * row), k16(kv), v16(kv);
      std::vector<uint8_t> k8(kv), v8(kv);
      const float vs = 2 * ks;
      for (auto& x : q) x = f32_to_bf16(2.f * nd(rng));
      for (size_t i = 0; i < kv; ++i) {  // E4M3 codes, and the bf16 cache of their values (exact: powers of two)
        k8[i] = quant::f32_to_e4m3(nd(rng) / ks);
        v8[i] = quant::f32_to_e4m3(nd(rng) / vs);
        k16[i] = f32_to_bf16(quant::e4m3_to_f32(k8[i]) * ks);
        v16[i] = f32_to_bf16(quant::e4m3_to_f32(v8[i]) * vs);
      }
      AttnArgs a{};
      a.qkv = upload(q); a.T = st.T; a.nh = nh; a.nkv = nkv; a.hd = hd;
      a.tok_pos = upload(st.pos); a.tok_seq = upload(st.seq); a.seq_bt_off = upload(st.bt_off); a.block_tables = upload(st.bt);
      a.block_size = st.B;
      uint16_t* out = nullptr;
      NS_CUDA(cudaMalloc(&out, (size_t)2 * st.T * nh * hd));
      a.out = out;
      float* ws = nullptr;
      NS_CUDA(cudaMalloc(&ws, attention_ws_floats(16, st.T, nh, hd) * 4));
      NS_CUDA(cudaMemset(ws, 0, attention_ws_floats(16, st.T, nh, hd) * 4));
      a.ws = ws;
      a.round_p = false;
      void *dk16 = upload(k16), *dv16 = upload(v16), *dk8 = upload(k8), *dv8 = upload(v8);
      for (int split = B == 16 && hd != 256 ? 0 : 1; split < 2; ++split) {  // flash tiles: head_dim 64 / 128  // engine-like split (flash tiles + SIMT tokens), then SIMT only
        AttnArgs b = a;
        if (split == 0) {
          b.tiles = upload(st.tiles); b.n_tiles = (int)st.tiles.size() / 2;
          b.simt_tokens = upload(st.simt); b.n_simt = (int)st.simt.size();
        } else {
          b.n_simt = st.T;
        }
        // SIMT only: also one block per (token, head) (the many-streams case, 16 x 2 by default).
        for (int n_splits : {b.n_simt > 0 ? splits_for(b.n_simt, nh) : 1, 1}) {
          if (split == 0 && n_splits == 1) continue;
          b.n_splits = n_splits;
          std::vector<uint16_t> ref;
          for (const bool fp8 : {false, true}) {  // the bf16 cache (the reference), then the E4M3 cache
            AttnArgs c = b;
            c.kcache = fp8 ? dk8 : dk16; c.vcache = fp8 ? dv8 : dv16;
            c.kv_fp8 = fp8; c.k_scale = ks; c.v_scale = vs;
            NS_CUDA(cudaMemset(out, 0xff, (size_t)2 * st.T * nh * hd));
            attention(DType::BF16, c, 0);
            const auto res = download(out, (size_t)st.T * nh * hd);
            if (!fp8) { ref = res; continue; }
            double err = 0, vmax = 0;
            for (auto x : v16) vmax = std::max(vmax, (double)std::fabs(bf16_to_f32(x)));
            for (size_t i = 0; i < res.size(); ++i) err = std::max(err, std::fabs((double)bf16_to_f32(res[i]) - bf16_to_f32(ref[i])) / vmax);
            note("attention E4M3 vs bf16 cache hd" + std::to_string(hd) + " k_scale " + std::to_string(ks) + " block " + std::to_string(B) +
                     (split == 0 ? " flash+simt" : " simt") + " splits " + std::to_string(n_splits),
                 err, 2e-3);
          }
        }
      }
    }
}

// The quantized experts (moe.cu's grouped GEMV with 1-byte weights, moe_quant.cu) on a routing of T tokens x top-k over E local experts built
// on the host (moe_plan.h's build_groups, rows in token order within an expert): the grouped GEMV,
// gated (with the shared expert as its extra group) and down, against a double product of the same
// quantized weights and bf16 inputs (error / sum |w x| as above; the gated output's bf16 rounding
// relative to its largest value); moe_dequant_active bit-exact against the host; and the prefill
// path (a few slots at a time dequantized, moe_mma by_slot) against the double product.
void check_moe_quant() {
  const int H = 512, I = 256, E = 8, KT = 2, Is = 384;
  for (WeightFormat fmt : {WeightFormat::Int8, WeightFormat::Fp8}) {
    const DType wt = fmt == WeightFormat::Int8 ? DType::I8 : DType::F8E4M3;
    const std::string tag = std::string("moe ") + (fmt == WeightFormat::Int8 ? "int8" : "fp8");
    std::vector<uint8_t> gq, dq, sgq, sdq;
    std::vector<float> gs, ds, sgs, sds;
    quantized(E * 2 * I, H, fmt, gq, gs);  // [E][2I, H]: expert e's rows e * 2I..
    quantized(E * H, I, fmt, dq, ds);      // [E][H, I]
    quantized(2 * Is, H, fmt, sgq, sgs);
    quantized(H, Is, fmt, sdq, sds);
    auto w = [&](const std::vector<uint8_t>& q, const std::vector<float>& s, size_t row, int K, int k) {
      return wval(fmt, q[row * K + k]) * (double)s[row];
    };
    for (int T : {1, 3, 8, 40}) {
      // Routing: token t's picks, distinct experts.
      std::vector<int> ids(T * KT);
      for (int t = 0; t < T; ++t) {
        std::vector<int> e(E);
        for (int i = 0; i < E; ++i) e[i] = i;
        std::shuffle(e.begin(), e.end(), rng);
        for (int j = 0; j < KT; ++j) ids[t * KT + j] = e[j];
      }
      const moe::Layout L = moe::layout(T, KT, E);
      std::vector<int32_t> meta(L.words, 0);
      std::vector<int> cnt(E, 0), off(E, 0), cur(E, 0);
      for (int i : ids) ++cnt[i];
      moe::build_groups(cnt.data(), E, L, meta.data(), off.data());
      const int rows = T * KT;
      std::vector<int> row_token(rows), row_expert(rows);
      for (int i = 0; i < rows; ++i) {
        const int e = ids[i], r = off[e] + cur[e]++;
        meta[L.perm + r] = i / KT;
        meta[L.inv + i] = r;
        row_token[r] = i / KT;
        row_expert[r] = e;
      }
      std::normal_distribution<float> nd(0.f, 1.f);
      std::vector<uint16_t> x((size_t)T * H), xa((size_t)rows * I), xs((size_t)T * Is);
      for (auto& v : x) v = f32_to_bf16(nd(rng));
      for (auto& v : xa) v = f32_to_bf16(nd(rng));
      for (auto& v : xs) v = f32_to_bf16(nd(rng));
      // Double references: gate|up rows of every row (and the shared expert's of every token), down rows.
      std::vector<double> gu((size_t)rows * 2 * I), gmag(gu.size()), dn_ref((size_t)rows * H), dmag(dn_ref.size());
      for (int r = 0; r < rows; ++r)
        for (int n = 0; n < 2 * I; ++n) {
          double a = 0, m = 0;
          for (int k = 0; k < H; ++k) {
            const double p = w(gq, gs, (size_t)row_expert[r] * 2 * I + n, H, k) * bf16_to_f32(x[(size_t)row_token[r] * H + k]);
            a += p; m += std::fabs(p);
          }
          gu[(size_t)r * 2 * I + n] = a;
          gmag[(size_t)r * 2 * I + n] = m + 1e-30;
        }
      for (int r = 0; r < rows; ++r)
        for (int n = 0; n < H; ++n) {
          double a = 0, m = 0;
          for (int k = 0; k < I; ++k) {
            const double p = w(dq, ds, (size_t)row_expert[r] * H + n, I, k) * bf16_to_f32(xa[(size_t)r * I + k]);
            a += p; m += std::fabs(p);
          }
          dn_ref[(size_t)r * H + n] = a;
          dmag[(size_t)r * H + n] = m + 1e-30;
        }
      auto silu = [](double g) { return g / (1 + std::exp(-g)); };
      uint8_t *d_gq = upload(gq), *d_dq = upload(dq), *d_sgq = upload(sgq), *d_sdq = upload(sdq);
      float *d_gs = upload(gs), *d_ds = upload(ds), *d_sgs = upload(sgs), *d_sds = upload(sds);
      uint16_t *d_x = upload(x), *d_xa = upload(xa), *d_xs = upload(xs);
      int32_t* d_meta = upload(meta);
      const int groups = moe::max_active(T, KT, E);
      if (moe::use_gemv(T, KT, E) || T <= 8) {
        const int mt = moe::gemv_tokens(T);
        uint16_t* d_act = upload(std::vector<uint16_t>((size_t)rows * I, 0));
        uint16_t* d_sact = upload(std::vector<uint16_t>((size_t)T * Is, 0));
        float* d_out = upload(std::vector<float>((size_t)rows * H, 0.f));
        float* d_sout = upload(std::vector<float>((size_t)T * H, 0.f));
        MoeGemvArgs g{d_gq, (size_t)2 * I * H, I, H, d_x, d_act, groups, d_sgq, Is, H, d_x, d_sact, T, d_meta, L, false, d_gs, d_sgs};
        moe_gemv(DType::BF16, wt, g, /*gated=*/true, mt, 0);
        MoeGemvArgs d{d_dq, (size_t)H * I, H, I, d_xa, d_out, groups, d_sdq, H, Is, d_xs, d_sout, T, d_meta, L, false, d_ds, d_sds};
        moe_gemv(DType::BF16, wt, d, /*gated=*/false, mt, 0);
        const auto act = download(d_act, (size_t)rows * I);
        double err = 0, big = 1e-30;
        for (int r = 0; r < rows; ++r)
          for (int n = 0; n < I; ++n) big = std::max(big, std::fabs(silu(gu[(size_t)r * 2 * I + n]) * gu[(size_t)r * 2 * I + I + n]));
        for (int r = 0; r < rows; ++r)
          for (int n = 0; n < I; ++n) {
            const double ref = silu(gu[(size_t)r * 2 * I + n]) * gu[(size_t)r * 2 * I + I + n];
            err = std::max(err, std::fabs(bf16_to_f32(act[(size_t)r * I + n]) - ref) / big);
          }
        note(tag + " gemv gated T" + std::to_string(T) + " (error / max |out|)", err, 8e-3);
        const auto out = download(d_out, (size_t)rows * H);
        err = 0;
        for (size_t i = 0; i < out.size(); ++i) err = std::max(err, std::fabs(out[i] - dn_ref[i]) / dmag[i]);
        note(tag + " gemv down T" + std::to_string(T), err, 1e-5);
        // The shared expert (its group in the same launches): gated of x, down of its own rows xs.
        const auto sact = download(d_sact, (size_t)T * Is);
        const auto sout = download(d_sout, (size_t)T * H);
        double serr = 0, sbig = 1e-30, derr = 0;
        std::vector<double> sref((size_t)T * Is);
        for (int t = 0; t < T; ++t)
          for (int n = 0; n < Is; ++n) {
            double g0 = 0, u0 = 0;
            for (int k = 0; k < H; ++k) {
              const double xv = bf16_to_f32(x[(size_t)t * H + k]);
              g0 += w(sgq, sgs, n, H, k) * xv;
              u0 += w(sgq, sgs, Is + n, H, k) * xv;
            }
            sref[(size_t)t * Is + n] = silu(g0) * u0;
            sbig = std::max(sbig, std::fabs(sref[(size_t)t * Is + n]));
          }
        for (size_t i = 0; i < sref.size(); ++i) serr = std::max(serr, std::fabs(bf16_to_f32(sact[i]) - sref[i]) / sbig);
        for (int t = 0; t < T; ++t)
          for (int n = 0; n < H; ++n) {
            double a = 0, m = 0;
            for (int k = 0; k < Is; ++k) {
              const double p = w(sdq, sds, n, Is, k) * bf16_to_f32(xs[(size_t)t * Is + k]);
              a += p; m += std::fabs(p);
            }
            derr = std::max(derr, std::fabs(sout[(size_t)t * H + n] - a) / (m + 1e-30));
          }
        note(tag + " gemv shared expert gated T" + std::to_string(T) + " (error / max |out|)", serr, 8e-3);
        note(tag + " gemv shared expert down T" + std::to_string(T), derr, 1e-5);
        cudaFree(d_act); cudaFree(d_sact); cudaFree(d_out); cudaFree(d_sout);
      }
      {  // prefill: 3 slots at a time dequantized, their tiles on the tensor cores
        const int step = 3;
        uint16_t* d_deq = upload(std::vector<uint16_t>((size_t)step * 2 * I * H, 0));
        uint16_t* d_gu = upload(std::vector<uint16_t>((size_t)rows * 2 * I, 0));
        const int tiles = moe::max_tiles(T, KT, E);
        double bad = 0;
        for (int g0 = 0; g0 < groups; g0 += step) {
          const int g1 = std::min(groups, g0 + step);
          moe_dequant_active(DType::BF16, wt, d_gq, d_gs, (size_t)2 * I * H, 2 * I, H, d_meta, L, g0, g1, d_deq, 0);
          const auto deq = download(d_deq, (size_t)step * 2 * I * H);
          for (int g = g0; g < std::min(g1, meta[L.n_active]); ++g) {
            const int e = meta[L.active_e + g];
            for (size_t i = 0; i < (size_t)2 * I * H; ++i)
              bad += deq[(size_t)(g - g0) * 2 * I * H + i] != f32_to_bf16(static_cast<float>(wval(fmt, gq[(size_t)e * 2 * I * H + i])) * gs[(size_t)e * 2 * I + i / H]);
          }
          MoeMmaArgs a{d_x, /*gather=*/true, d_deq, (size_t)2 * I * H, 2 * I, H, d_gu, false, tiles, d_meta, L};
          a.by_slot = true; a.g0 = g0; a.g1 = g1;
          moe_mma(DType::BF16, a, 0);
        }
        note(tag + " dequant_active T" + std::to_string(T) + " (elements differing)", bad, 0);
        const auto y = download(d_gu, (size_t)rows * 2 * I);
        double err = 0;
        for (size_t i = 0; i < y.size(); ++i) err = std::max(err, std::fabs(bf16_to_f32(y[i]) - gu[i]) / gmag[i]);
        // bf16 weights (the dequantized q * s rounded) and bf16 output: a few 2^-8 relative.
        note(tag + " prefill by slot T" + std::to_string(T), err, 1.5e-2);
        cudaFree(d_deq); cudaFree(d_gu);
      }
      cudaFree(d_gq); cudaFree(d_dq); cudaFree(d_sgq); cudaFree(d_sdq); cudaFree(d_gs); cudaFree(d_ds); cudaFree(d_sgs); cudaFree(d_sds);
      cudaFree(d_x); cudaFree(d_xa); cudaFree(d_xs); cudaFree(d_meta);
    }
  }
}

}  // namespace

int main() {
  cudaDeviceProp p{};
  NS_CUDA(cudaGetDeviceProperties(&p, 0));
  std::fprintf(stderr, "%s, compute capability %d.%d\n", p.name, p.major, p.minor);
  check_dequantize();
  check_gemv();
  check_gemv_fused();
  check_gemm_quant();
  check_quantize_act();
  check_fused_input_quant();
  check_fp8_scaled_gemm();
  check_fp8_gemm();
  check_rope_kv();
  check_attention();
  check_moe_quant();
  std::printf("{\"ok\":%s,\"gpu\":\"%s\",\"failures\":%d,\"checks\":[%s]}\n", failures ? "false" : "true", p.name, failures, report.c_str());
  return failures ? 1 : 0;
}
