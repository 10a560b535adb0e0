// Kernel-level check of the attention launcher (native/src/cuda/attention.cu +
// attention_prefill.cu) on a GPU, without a model: random q and paged K/V (shuffled block tables),
// steps mixing prefill tiles, short chunks and decode tokens, MHA and GQA, head_dim 64 and 128
// (and 256 and 96 through the SIMT kernels only),
// bf16 and fp16, block sizes 16 and 5. Each step runs twice: split like the engine does (flash
// tiles + SIMT token list) and SIMT-only; both are compared with a double-precision causal
// attention on the same rounded inputs (error relative to max |v|). Then times one layer of the
// serving prefill shape (4 x 512 new tokens, 32 heads, head_dim 128, bf16): flash vs SIMT, one
// layer of a 64-decode step, and one layer of a batch-1 decode step at contexts 130, 192 and 1024
// (the split-keys form: keys over the blocks of one head, fewer where a context is short).
// If test/gpu/attention-flash.test.ts fails, this says whether the kernel or the step plumbing is off.
// usage (repo root, on the GPU host):
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_80,code=sm_80 -Inative/src \
//     test/gpu/flash-kernel.cu native/src/cuda/attention.cu native/src/cuda/attention_prefill.cu -o /tmp/flash-kernel \
//     && /tmp/flash-kernel          (one JSON line; exit 1 on failure)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "cuda/cuda_common.h"
#include "cuda/kernels.h"
#include "cuda/kv_layout.h"
#include "kernel_test.h"

using namespace ns;
using namespace ns::cuda;
using namespace ns::cuda::test;

namespace {

struct Case {
  const char* name; DType dt; int nh, nkv, hd, B;
  std::vector<std::pair<int, int>> seqs;  // {start position, new tokens}
  bool short_flash = false;  // short sequences (decodes) take flash tiles too (the engine's flash_short)
};

// n decode tokens at contexts spread over [lo, hi).
std::vector<std::pair<int, int>> decodes(int n, int lo, int hi) {
  std::vector<std::pair<int, int>> s;
  for (int i = 0; i < n; ++i) s.push_back({lo + (int)((int64_t)(hi - lo) * i / n), 1});
  return s;
}

uint16_t bits(DType dt, float x) {
  if (dt == DType::BF16) { __nv_bfloat16 v = __float2bfloat16(x); return *reinterpret_cast<uint16_t*>(&v); }
  __half v = __float2half(x);
  return *reinterpret_cast<uint16_t*>(&v);
}
float value(DType dt, uint16_t b) {
  if (dt == DType::BF16) return __bfloat162float(*reinterpret_cast<__nv_bfloat16*>(&b));
  return __half2float(*reinterpret_cast<__half*>(&b));
}

struct Built {
  AttnArgs a{};  // split: flash tiles + SIMT list
  int T = 0;
  std::vector<uint16_t> q, k, v;
  std::vector<int32_t> pos, seq, bt_off, bt;
  std::vector<void*> frees;
  ~Built() { for (void* p : frees) cudaFree(p); }
};

// Inputs on host and device; a.* set up for the engine-like split.
void build(const Case& c, uint32_t seed, Built& b) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  int n_blocks = 0;
  std::vector<int> first;
  for (auto [p, n] : c.seqs) { first.push_back(b.T); b.T += n; n_blocks += (p + n + c.B - 1) / c.B; }
  std::vector<int32_t> perm(n_blocks);
  for (int i = 0; i < n_blocks; ++i) perm[i] = i;
  std::shuffle(perm.begin(), perm.end(), rng);
  const size_t kv = (size_t)n_blocks * c.B * c.nkv * c.hd, row = (size_t)(c.nh + 2 * c.nkv) * c.hd;
  b.q.resize((size_t)b.T * row);
  b.k.resize(kv);
  b.v.resize(kv);
  for (auto& x : b.q) x = bits(c.dt, 2.f * nd(rng));
  for (auto& x : b.k) x = bits(c.dt, nd(rng));
  for (auto& x : b.v) x = bits(c.dt, nd(rng));
  int used = 0;
  std::vector<int32_t> tiles, simt;
  for (size_t s = 0; s < c.seqs.size(); ++s) {
    auto [p, n] = c.seqs[s];
    b.bt_off.push_back((int32_t)b.bt.size());
    for (int i = 0; i < (p + n + c.B - 1) / c.B; ++i) b.bt.push_back(perm[used++]);
    for (int i = 0; i < n; ++i) { b.pos.push_back(p + i); b.seq.push_back((int32_t)s); }
    if (n >= kFlashMinTokens || c.short_flash)
      for (int i0 = 0; i0 < n; i0 += kFlashTileQ) { tiles.push_back(first[s] + i0); tiles.push_back(std::min(kFlashTileQ, n - i0)); }
    else
      for (int i = 0; i < n; ++i) simt.push_back(first[s] + i);
  }
  AttnArgs& a = b.a;
  auto keep = [&](auto* p) { b.frees.push_back(p); return p; };
  a.qkv = keep(upload(b.q)); a.T = b.T; a.nh = c.nh; a.nkv = c.nkv; a.hd = c.hd;
  a.tok_pos = keep(upload(b.pos)); a.tok_seq = keep(upload(b.seq)); a.seq_bt_off = keep(upload(b.bt_off));
  a.block_tables = keep(upload(b.bt)); a.block_size = c.B;
  a.kcache = keep(upload(b.k)); a.vcache = keep(upload(b.v));
  void* out = nullptr;
  NS_CUDA(cudaMalloc(&out, (size_t)b.T * c.nh * c.hd * 2));
  a.out = keep(out);
  a.n_simt = (int)simt.size();
  a.n_splits = a.n_simt > 0 ? splits_for(a.n_simt, c.nh) : 1;
  const int max_splits = splits_for(1, c.nh);  // enough workspace for the SIMT-only run too
  float* ws = nullptr;
  const size_t ws_bytes = attention_ws_floats(std::max(max_splits, 2), b.T, c.nh, c.hd) * 4;
  NS_CUDA(cudaMalloc(&ws, ws_bytes));
  NS_CUDA(cudaMemset(ws, 0, ws_bytes));
  a.ws = keep(ws);
  a.simt_tokens = keep(upload(simt));
  a.tiles = keep(upload(tiles));
  a.n_tiles = (int)tiles.size() / 2;
}

// The same step with every token through the SIMT kernel (the engine's split count for them).
AttnArgs simt_only(const Built& b, int nh) {
  AttnArgs a = b.a;
  a.tiles = nullptr; a.n_tiles = 0; a.simt_tokens = nullptr; a.n_simt = b.T;
  a.n_splits = splits_for(b.T, nh);
  return a;
}

std::vector<uint16_t> run(const Case& c, const AttnArgs& a) {
  NS_CUDA(cudaMemset(a.out, 0xff, (size_t)a.T * a.nh * a.hd * 2));  // NaN canary
  attention(c.dt, a, 0);
  NS_CUDA(cudaDeviceSynchronize());
  std::vector<uint16_t> h((size_t)a.T * a.nh * a.hd);
  NS_CUDA(cudaMemcpy(h.data(), a.out, h.size() * 2, cudaMemcpyDeviceToHost));
  return h;
}

// max over tokens, heads, dims of |out - ref| / max|v| (NaN -> inf).
double error(const Case& c, const Built& b, const std::vector<uint16_t>& out) {
  double worst = 0;
  const size_t row = (size_t)(c.nh + 2 * c.nkv) * c.hd;
  for (int t = 0; t < b.T; ++t) {
    const int32_t* bt = b.bt.data() + b.bt_off[b.seq[t]];
    for (int h = 0; h < c.nh; ++h) {
      const int kh = h / (c.nh / c.nkv), p = b.pos[t];
      std::vector<double> sc(p + 1), ref(c.hd, 0.0);
      double mx = -1e300, sum = 0, vmax = 1e-30;
      for (int j = 0; j <= p; ++j) {
        const size_t base = kv_offset(bt[j / c.B], j % c.B, kh, c.nkv, c.B, c.hd);
        double dot = 0;
        for (int d = 0; d < c.hd; ++d) dot += (double)value(c.dt, b.q[t * row + h * c.hd + d]) * value(c.dt, b.k[base + d]);
        sc[j] = dot / std::sqrt((double)c.hd);
        mx = std::max(mx, sc[j]);
      }
      for (int j = 0; j <= p; ++j) {
        const size_t base = kv_offset(bt[j / c.B], j % c.B, kh, c.nkv, c.B, c.hd);
        const double w = std::exp(sc[j] - mx);
        sum += w;
        for (int d = 0; d < c.hd; ++d) {
          const double x = value(c.dt, b.v[base + d]);
          ref[d] += w * x;
          vmax = std::max(vmax, std::fabs(x));
        }
      }
      for (int d = 0; d < c.hd; ++d) {
        const double e = std::fabs(value(c.dt, out[((size_t)t * c.nh + h) * c.hd + d]) - ref[d] / sum) / vmax;
        worst = std::isnan(e) ? INFINITY : std::max(worst, e);
      }
    }
  }
  return worst;
}

float time_ms(const Case& c, const AttnArgs& a, int reps) {
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  attention(c.dt, a, 0);  // warm-up
  cudaEventRecord(e0);
  for (int i = 0; i < reps; ++i) attention(c.dt, a, 0);
  cudaEventRecord(e1);
  NS_CUDA(cudaEventSynchronize(e1));
  float ms = 0;
  cudaEventElapsedTime(&ms, e0, e1);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return ms / reps;
}

}  // namespace

int main() {
  const double kTol = 1.5e-2;  // P and the output are rounded to bf16/fp16
  const std::vector<Case> cases = {
      {"prefill 300, MHA", DType::BF16, 8, 8, 128, 16, {{0, 300}}},
      {"mixed: 200 + 77 + decode + 9, GQA", DType::BF16, 8, 2, 128, 16, {{0, 200}, {0, 77}, {40, 1}, {5, 9}}},
      {"chunks at pos 150 and 250, B=5", DType::BF16, 4, 4, 128, 5, {{150, 100}, {250, 20}, {900, 1}}},
      {"fp16, GQA 8/1, long context", DType::F16, 8, 1, 128, 16, {{1000, 130}, {64, 16}, {7, 1}}},
      {"head_dim 64, GQA 12/4", DType::BF16, 12, 4, 64, 16, {{0, 150}, {17, 70}, {3, 1}}},
      {"head_dim 64 fp16", DType::F16, 4, 2, 64, 16, {{33, 64}, {0, 15}}},
      {"64 decodes through flash, MHA", DType::BF16, 8, 8, 128, 16, decodes(64, 0, 700), true},
      {"decodes + chunk tail through flash, GQA", DType::BF16, 8, 2, 128, 5, {{300, 1}, {0, 200}, {17, 7}, {64, 1}, {0, 1}}, true},
      {"decodes through flash, hd 64 fp16", DType::F16, 12, 4, 64, 16, decodes(16, 100, 900), true},
      {"head_dim 256: decodes + short chunk (SIMT only)", DType::BF16, 4, 2, 256, 16, {{500, 1}, {0, 9}, {77, 1}, {3000, 1}}},
      {"head_dim 96 (per-key kernel), GQA 6/2", DType::F16, 6, 2, 96, 5, {{300, 1}, {0, 12}, {41, 1}}},
      // Few decode tokens (split keys): contexts within one block's share, just past it, and long.
      {"few decodes: contexts 130, 256, 257, 1501, MHA", DType::BF16, 8, 8, 128, 16, {{129, 1}, {255, 1}, {256, 1}, {1500, 1}}},
      {"few decodes, hd 64 fp16, GQA 8/2, B=5", DType::F16, 8, 2, 64, 5, {{99, 1}, {511, 1}, {512, 1}, {2000, 1}}},
  };
  bool ok = true;
  std::string json = "{\"cases\":[";
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const std::string name = c.name;
    Built b;
    build(c, 1234 + (uint32_t)i, b);
    const double e_split = error(c, b, run(c, b.a));
    const double e_simt = error(c, b, run(c, simt_only(b, c.nh)));
    const bool pass = e_split < kTol && e_simt < kTol;
    ok &= pass;
    char line[512];
    std::snprintf(line, sizeof line, "%s{\"name\":\"%s\",\"tiles\":%d,\"simtTokens\":%d,\"errFlashSplit\":%.3g,\"errSimtOnly\":%.3g,\"pass\":%s}",
                  i ? "," : "", name.c_str(), b.a.n_tiles, b.a.n_simt, e_split, e_simt, pass ? "true" : "false");
    json += line;
    std::fprintf(stderr, "%-53s tiles %3d simt %3d  err flash+simt %.2e  simt-only %.2e  %s\n", name.c_str(), b.a.n_tiles,
                 b.a.n_simt, e_split, e_simt, pass ? "ok" : "FAIL");
  }
  // One layer of the serving prefill step: 4 sequences x 512 new tokens, 32 heads, head_dim 128.
  const Case perf{"4 x 512, 32 heads, hd 128", DType::BF16, 32, 32, 128, 16, {{0, 512}, {0, 512}, {0, 512}, {0, 512}}};
  Built b;
  build(perf, 99, b);
  const float ms_flash = time_ms(perf, b.a, 20), ms_simt = time_ms(perf, simt_only(b, perf.nh), 5);
  const double flops = 4.0 * 32 * (512.0 * 513 / 2) * 128 * 4;  // QK^T and PV over the causal pairs
  // One layer of a serving decode step: 64 decodes at contexts 512..767, 32 heads, hd 128: the SIMT
  // kernel (as the engine splits it) vs one flash tile per sequence; GB/s of K and V read.
  auto decode_perf = [] {
    Case dec{"64 decodes, ctx 512..767, 32 heads, hd 128", DType::BF16, 32, 32, 128, 16, decodes(64, 512, 768), true};
    Built bd;
    build(dec, 7, bd);
    const float dms_flash = time_ms(dec, bd.a, 50), dms_simt = time_ms(dec, simt_only(bd, dec.nh), 50);
    double kv_bytes = 0;
    for (auto [p, n] : dec.seqs) kv_bytes += 2.0 * (p + n) * dec.nkv * dec.hd * 2;
    char out[512];
    std::snprintf(out, sizeof out, "{\"shape\":\"%s\",\"flashMsPerLayer\":%.4f,\"simtMsPerLayer\":%.4f,\"flashGBs\":%.0f,\"simtGBs\":%.0f}",
                  dec.name, dms_flash, dms_simt, kv_bytes / (dms_flash * 1e-3) / 1e9, kv_bytes / (dms_simt * 1e-3) / 1e9);
    std::fprintf(stderr, "decode layer: flash %.1f us (%.0f GB/s), SIMT %.1f us (%.0f GB/s)\n",
                 dms_flash * 1e3, kv_bytes / (dms_flash * 1e-3) / 1e9, dms_simt * 1e3, kv_bytes / (dms_simt * 1e-3) / 1e9);
    return std::string(out);
  };
  const std::string dec = decode_perf();
  // One layer of a batch-1 decode step (32 heads, hd 128, bf16), us per call at three contexts.
  std::string b1 = "{";
  for (int ctx : {130, 192, 1024}) {
    const Case one{"batch 1", DType::BF16, 32, 32, 128, 16, {{ctx - 1, 1}}};
    Built bo;
    build(one, 11, bo);
    const float us = 1e3f * time_ms(one, bo.a, 200);
    char o[64];
    std::snprintf(o, sizeof o, "%s\"ctx%d\":%.2f", ctx == 130 ? "" : ",", ctx, us);
    b1 += o;
    std::fprintf(stderr, "batch-1 decode layer, context %d: %.2f us\n", ctx, us);
  }
  b1 += "}";
  char tail[1024];
  std::snprintf(tail, sizeof tail, "],\"perf\":{\"shape\":\"%s\",\"flashMsPerLayer\":%.4f,\"simtMsPerLayer\":%.4f,"
                "\"flashMsPer32Layers\":%.3f,\"simtMsPer32Layers\":%.2f,\"flashTflops\":%.1f},"
                "\"decodePerf\":%s,\"batch1UsPerLayer\":%s,\"ok\":%s}",
                perf.name, ms_flash, ms_simt, 32 * ms_flash, 32 * ms_simt, flops / (ms_flash * 1e-3) / 1e12,
                dec.c_str(), b1.c_str(), ok ? "true" : "false");
  json += tail;
  std::printf("%s\n", json.c_str());
  return ok ? 0 : 1;
}
