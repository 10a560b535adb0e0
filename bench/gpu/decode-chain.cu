// What a dependency boundary costs the batch-1 decode GEMVs. The 7B shape's 128 layer products (32 x
// q|k|v, o, gate|up, down; one row) as a chain, each reading the output of the one before it, timed
// on one GPU at bf16 and at E4M3 weights:
//   kernels  the engine's decode GEMVs (gemv.cu, quant_gemm.cu), one launch a product, replayed as a
//            CUDA graph with programmatic dependent launch (as the engine's decode step runs them)
//   one      the same bytes as one GEMV launch (the chain's weights, one buffer, as rows of 4096):
//            each precision's streaming rate without the boundaries
//   read     the same bytes read by a plain streaming kernel (the read roofline)
//   loads    the engine's GEMV launches with their arithmetic replaced by XOR (same grid, prefetch,
//            PDL wait, loads in flight, reduction and store): what the chain would take if
//            unpacking and multiplying the weights cost nothing; "loads one": the same as one launch
//   diag     (E4M3 only) the engine's GEMV layout with the products on the tensor cores (the mma
//            diagonal below), weights widened to bf16 (exact) or to f16 with the input rounded to
//            f16; its largest difference from the engine's output over the largest output
// (kernels - one) / 128 is what a boundary costs a GEMV; kernels - loads bounds what fewer
// instructions a weight could take off the chain. One JSON line on stdout (each figure also on
// stderr as it is measured). docs/ENGINE.md ("Tried and removed") has the persistent forms and the
// 16-row tensor-core tiles this benchmark also timed, and why they went.
// usage (repo root, GPU host):
//   nvcc -O3 -std=c++17 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -Inative/src bench/gpu/decode-chain.cu \
//     native/src/cuda/{quant_gemm,gemv,kernels_basic}.cu native/src/common/{dl,quant,settings}.cc -ldl -o /tmp/decode-chain && /tmp/decode-chain
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda/cuda_common.h"
#include "cuda/gemv_common.h"
#include "cuda/kernels.h"
#include "cuda/mma.h"

namespace ns::cuda {
bool pdl_enabled() { return true; }
}  // namespace ns::cuda

using namespace ns;
using namespace ns::cuda;

namespace {

constexpr int kLayers = 32, kPhases = 4 * kLayers, kMaxN = 22016;
struct Mat { int N, K; };
constexpr Mat kMats[4] = {{12288, 4096}, {4096, 4096}, {22016, 4096}, {4096, 11008}};

// y[n] = ws[n] * sum_k x[k] * W[n, k]
struct Phase {
  const uint8_t* w; const float* ws; int N, K;
};

// Deterministic bytes: E4M3 without NaN, or bf16 of magnitude ~2^-7.
__global__ void fill_kernel(uint8_t* p, size_t n, uint32_t seed, bool fp8) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15; h *= 2246822519u; h ^= h >> 13;
    uint8_t b = h & 0xff;
    if (fp8) { if ((b & 0x7f) == 0x7f) b &= 0xfe; }
    else if (i & 1) b = static_cast<uint8_t>((b & 0x80) | 0x3c | ((b >> 6) & 1));
    p[i] = b;
  }
}

__global__ void read_kernel(const uint4* __restrict__ p, size_t n16, unsigned* sink) {
  const size_t st = (size_t)gridDim.x * blockDim.x;
  size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  uint32_t a = 0;
  for (; i + 3 * st < n16; i += 4 * st) {
    const uint4 v0 = __ldg(p + i), v1 = __ldg(p + i + st), v2 = __ldg(p + i + 2 * st), v3 = __ldg(p + i + 3 * st);
    a ^= v0.x ^ v0.y ^ v0.z ^ v0.w ^ v1.x ^ v1.y ^ v1.z ^ v1.w ^ v2.x ^ v2.y ^ v2.z ^ v2.w ^ v3.x ^ v3.y ^ v3.z ^ v3.w;
  }
  for (; i < n16; i += st) { const uint4 v = __ldg(p + i); a ^= v.x ^ v.y ^ v.z ^ v.w; }
  if (a == 0x9e3779b9u) atomicAdd(sink, 1u);  // keeps the loads
}

// The engine's GEMV start: the lane's first 4 chunks of its row pulled into L2, the wait for the
// previous kernel, the early launch of the next.
template <int kStride>
__device__ __forceinline__ void gemv_start(const uint4* w, bool row, int i0, int KC) {
  if (row)
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (i0 + j * kStride < KC) asm volatile("prefetch.global.L2 [%0];" ::"l"(w + i0 + j * kStride));
  grid_dependency_wait();
  grid_dependents_launch();
}

// gemv.cu / quant_gemm.cu's decode GEMV (8 warps a block, KS warps a row, 4 prefetched chunks, 4 loads
// in flight a lane) with each 16-byte weight chunk and its input bytes XORed instead of multiplied.
template <int EB, int KS>
__global__ void __launch_bounds__(256) loads_kernel(const uint8_t* __restrict__ W, const __nv_bfloat16* __restrict__ x, int N, int K,
                                                     __nv_bfloat16* __restrict__ y) {
  constexpr int kStride = 32 * KS, kXChunks = 2 / EB;  // input uint4s a weight chunk meets
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n = blockIdx.x * (8 / KS) + warp / KS, part = warp % KS;
  const int KC = K * EB / 16;
  const uint4* w = reinterpret_cast<const uint4*>(W + (size_t)n * K * EB);
  const uint4* xv = reinterpret_cast<const uint4*>(x);
  gemv_start<kStride>(w, n < N, part * 32 + lane, KC);
  uint32_t a = 0;
  auto fold = [&](const uint4& v, int i) {
    a ^= v.x ^ v.y ^ v.z ^ v.w;
#pragma unroll
    for (int c = 0; c < kXChunks; ++c) { const uint4 u = __ldg(xv + kXChunks * i + c); a ^= u.x ^ u.y ^ u.z ^ u.w; }
  };
  if (n < N) {
    int i = part * 32 + lane;
    for (; i + 3 * kStride < KC; i += 4 * kStride) {
      const uint4 w0 = __ldg(w + i), w1 = __ldg(w + i + kStride), w2 = __ldg(w + i + 2 * kStride), w3 = __ldg(w + i + 3 * kStride);
      fold(w0, i); fold(w1, i + kStride); fold(w2, i + 2 * kStride); fold(w3, i + 3 * kStride);
    }
    for (; i < KC; i += kStride) fold(__ldg(w + i), i);
  }
  float acc[1] = {__uint_as_float((a & 0x807fffffu) | 0x3c000000u)};  // a finite value that depends on every byte
  if (!gemv_reduce<8, 1, KS>(acc, warp, lane, part, n, N)) return;
  gemv_store<__nv_bfloat16, 1, GemvOut::Act>(acc, n, N, y, false);
}

template <int EB>
void launch_loads(const uint8_t* W, const __nv_bfloat16* x, int N, int K, __nv_bfloat16* y, cudaStream_t s) {
  if (N >= 12288) launch("loads", loads_kernel<EB, 1>, dim3(ceil_div(N, 8)), dim3(256), s, W, x, N, K, y);
  else launch("loads", loads_kernel<EB, 2>, dim3(ceil_div(N, 4)), dim3(256), s, W, x, N, K, y);
}

// Two E4M3 weights to the mma input type TH: __half (one cvt, exact) or __nv_bfloat16 (through f32,
// exact); a pair of bf16 inputs to TH (__half: rounded).
template <typename TH>
__device__ __forceinline__ uint32_t mma_widen(uint32_t w2) {
  const __half2 h = __half2(__nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(w2), __NV_E4M3));
  if constexpr (std::is_same_v<TH, __half>) return *reinterpret_cast<const uint32_t*>(&h);
  const float2 f = __half22float2(h);
  const __nv_bfloat162 b = __floats2bfloat162_rn(f.x, f.y);
  return *reinterpret_cast<const uint32_t*>(&b);
}
template <typename TH>
__device__ __forceinline__ uint32_t mma_input(uint32_t bf2) {
  if constexpr (std::is_same_v<TH, __nv_bfloat16>) return bf2;
  const __half2 h = __floats2half2_rn(__uint_as_float(bf2 << 16), __uint_as_float(bf2 & 0xffff0000u));
  return *reinterpret_cast<const uint32_t*>(&h);
}

// The E4M3 GEMV with its products on the tensor cores (probe), in the engine's layout (a warp a row,
// KS warps a row, each lane 16 weights a load, 4 loads in flight). A warp's load covers 512 columns of
// its row; they are taken as 8 segments of 64 (lanes 4 s .. 4 s + 3) and mma.m16n8k16 multiplies the
// segments' inputs (A rows 0..7) by their weights (B columns 0..7): the diagonal D[s][s] is segment
// s's dot product, the rest is discarded. Lane (g, t) holds A row g and B column g at fragment
// positions {2t, 2t+1, 2t+8, 2t+9}, which k-step j maps to its own columns 16 t + 4 j + {0..3}, so
// each lane feeds its own input and weights. TH: __half (weights E4M3 -> f16, one cvt a pair; the
// input rounded to f16) or __nv_bfloat16 (weights E4M3 -> f16 -> f32 -> bf16; the input as it is).
template <typename TH, int KS>
__global__ void __launch_bounds__(256) diag_gemv_kernel(const uint8_t* __restrict__ W, const float* __restrict__ ws,
                                                         const __nv_bfloat16* __restrict__ x, int N, int K, __nv_bfloat16* __restrict__ y) {
  constexpr int kStride = 32 * KS;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int n = blockIdx.x * (8 / KS) + warp / KS, part = warp % KS;
  const int KC = K / 16;
  const uint4* w = reinterpret_cast<const uint4*>(W + (size_t)n * K);
  const uint4* xv = reinterpret_cast<const uint4*>(x);
  gemv_start<kStride>(w, n < N, part * 32 + lane, KC);
  float c[4] = {0.f, 0.f, 0.f, 0.f};
  auto step = [&](const uint4& v, int i) {
    const uint4 xa = __ldg(xv + 2 * i), xb = __ldg(xv + 2 * i + 1);
    const uint32_t Wd[4] = {v.x, v.y, v.z, v.w}, X[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t a[4] = {mma_input<TH>(X[2 * j]), 0u, mma_input<TH>(X[2 * j + 1]), 0u};
      mma16816(c, a, mma_widen<TH>(Wd[j] & 0xffffu), mma_widen<TH>(Wd[j] >> 16), static_cast<TH*>(nullptr));
    }
  };
  if (n < N) {
    int i = part * 32 + lane;
    // Loop bounds are the warp's (mma.sync is warp-wide): a lane past the row's end joins with zeros.
    for (; i - lane + 3 * kStride + 32 <= KC; i += 4 * kStride) {
      const uint4 w0 = __ldg(w + i), w1 = __ldg(w + i + kStride), w2 = __ldg(w + i + 2 * kStride), w3 = __ldg(w + i + 3 * kStride);
      step(w0, i); step(w1, i + kStride); step(w2, i + 2 * kStride); step(w3, i + 3 * kStride);
    }
    for (; i - lane < KC; i += kStride) step(i < KC ? __ldg(w + i) : uint4{0, 0, 0, 0}, i < KC ? i : 0);
  }
  float acc[1] = {t == (g >> 1) ? c[g & 1] : 0.f};
  if (!gemv_reduce<8, 1, KS>(acc, warp, lane, part, n, N)) return;
  acc[0] *= ws[n];
  gemv_store<__nv_bfloat16, 1, GemvOut::Act>(acc, n, N, y, false);
}

template <typename TH>
void launch_diag_gemv(const uint8_t* W, const float* ws, const __nv_bfloat16* x, int N, int K, __nv_bfloat16* y, cudaStream_t s) {
  if (N >= 12288) launch("diag_gemv", diag_gemv_kernel<TH, 1>, dim3(ceil_div(N, 8)), dim3(256), s, W, ws, x, N, K, y);
  else launch("diag_gemv", diag_gemv_kernel<TH, 2>, dim3(ceil_div(N, 4)), dim3(256), s, W, ws, x, N, K, y);
}

float median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main() {
  int dev = 0, sms = 0;
  NS_CUDA(cudaGetDevice(&dev));
  NS_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  cudaDeviceProp prop{};
  NS_CUDA(cudaGetDeviceProperties(&prop, dev));
  cudaStream_t s;
  NS_CUDA(cudaStreamCreate(&s));
  cudaEvent_t e0, e1;
  NS_CUDA(cudaEventCreate(&e0));
  NS_CUDA(cudaEventCreate(&e1));
  __nv_bfloat16* buf[2];
  for (auto& b : buf) NS_CUDA(cudaMalloc(&b, kMaxN * 2));
  NS_CUDA(cudaMemset(buf[1], 0, kMaxN * 2));
  fill_kernel<<<64, 256, 0, s>>>(reinterpret_cast<uint8_t*>(buf[1]), kMaxN * 2, 99, false);  // phase 0's x
  unsigned* sink = nullptr;
  NS_CUDA(cudaMalloc(&sink, sizeof(unsigned)));
  std::string out = "{\"gpu\":\"" + std::string(prop.name) + "\",\"layers\":32,\"rows\":1,\"results\":[";

  for (int fp8 = 0; fp8 < 2; ++fp8) {
    const int elt = fp8 ? 1 : 2;
    size_t total = 0;
    for (int l = 0; l < kLayers; ++l)
      for (const Mat& m : kMats) total += (size_t)m.N * m.K * elt;
    uint8_t* w = nullptr;
    NS_CUDA(cudaMalloc(&w, total));
    fill_kernel<<<sms * 16, 256, 0, s>>>(w, total, 7, fp8 == 1);
    const int big_n = static_cast<int>(total / (4096 * elt));  // the chain's bytes as rows of 4096
    float* ws = nullptr;
    __nv_bfloat16* ybig = nullptr;
    NS_CUDA(cudaMalloc(&ws, (size_t)big_n * 4));
    NS_CUDA(cudaMalloc(&ybig, (size_t)big_n * 2));
    {
      std::vector<float> h((size_t)big_n, fp8 ? 2e-4f : 1.f);  // fp8: ~1 / (sqrt(K) * rms of random E4M3)
      NS_CUDA(cudaMemcpy(ws, h.data(), h.size() * 4, cudaMemcpyHostToDevice));
    }
    std::vector<Phase> ph;
    size_t off = 0;
    for (int l = 0; l < kLayers; ++l)
      for (const Mat& m : kMats) {
        ph.push_back({w + off, ws, m.N, m.K});
        off += (size_t)m.N * m.K * elt;
      }

    const Phase all{w, ws, big_n, 4096};  // the chain's bytes as one product

    // The forms, each one product: q's weights times the bf16 row x, into y.
    auto engine_gemv = [&](const Phase& q, const __nv_bfloat16* x, __nv_bfloat16* y) {
      if (!fp8) gemv(DType::BF16, q.w, x, 1, q.N, q.K, y, GemvOut::Act, s);
      else gemv_quant(DType::BF16, DType::F8E4M3, QuantGemv{q.w, q.ws, x, 1, q.N, q.K, y}, GemvOut::Act, s);
    };
    auto loads_gemv = [&](const Phase& q, const __nv_bfloat16* x, __nv_bfloat16* y) {
      if (!fp8) launch_loads<2>(q.w, x, q.N, q.K, y, s);
      else launch_loads<1>(q.w, x, q.N, q.K, y, s);
    };
    auto diag_f16 = [&](const Phase& q, const __nv_bfloat16* x, __nv_bfloat16* y) { launch_diag_gemv<__half>(q.w, q.ws, x, q.N, q.K, y, s); };
    auto diag_bf16 = [&](const Phase& q, const __nv_bfloat16* x, __nv_bfloat16* y) { launch_diag_gemv<__nv_bfloat16>(q.w, q.ws, x, q.N, q.K, y, s); };

    // Each figure also goes to stderr as it is measured: a run cut short still leaves the ones before.
    auto timed = [&](const char* name, auto&& body) {
      std::vector<float> t;
      for (int i = 0; i < 12; ++i) {
        NS_CUDA(cudaEventRecord(e0, s));
        body();
        NS_CUDA(cudaEventRecord(e1, s));
        NS_CUDA(cudaEventSynchronize(e1));
        float ms = 0;
        NS_CUDA(cudaEventElapsedTime(&ms, e0, e1));
        if (i >= 2) t.push_back(ms * 1e3f);
      }
      const float us = median(t);
      fprintf(stderr, "decode-chain %s %s: %.1f us\n", fp8 ? "fp8" : "bf16", name, us);
      return us;
    };
    // A form over the chain (product p: input buf[(p + 1) & 1], output buf[p & 1]) captured once as a
    // graph, replayed.
    auto timed_chain = [&](const char* name, auto&& form) {
      cudaGraph_t graph;
      cudaGraphExec_t exec;
      NS_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
      for (int p = 0; p < kPhases; ++p) form(ph[p], buf[(p + 1) & 1], buf[p & 1]);
      NS_CUDA(cudaStreamEndCapture(s, &graph));
      NS_CUDA(cudaGraphInstantiate(&exec, graph, 0));
      const float us = timed(name, [&] { NS_CUDA(cudaGraphLaunch(exec, s)); });
      NS_CUDA(cudaGraphExecDestroy(exec));
      NS_CUDA(cudaGraphDestroy(graph));
      return us;
    };
    // A form over the chain's bytes as one launch.
    auto timed_one = [&](const char* name, auto&& form) { return timed(name, [&] { form(all, buf[1], ybig); }); };

    const float kernels_us = timed_chain("kernels", engine_gemv);
    const float loads_us = timed_chain("loads", loads_gemv);
    const float loads_one_us = timed_one("loads one", loads_gemv);
    const float one_us = timed_one("one", engine_gemv);
    float diag_us[2] = {0, 0}, diag_one_us[2] = {0, 0}, diag_diff[2] = {0, 0};
    if (fp8) {
      // Phase 0 (q|k|v) by the engine and by each probe: max |difference| over max |engine|.
      std::vector<__nv_bfloat16> ref(ph[0].N), got(ph[0].N);
      __nv_bfloat16* yy = nullptr;
      NS_CUDA(cudaMalloc(&yy, (size_t)ph[0].N * 2));
      auto phase0 = [&](auto&& form, std::vector<__nv_bfloat16>& host) {
        form(ph[0], buf[1], yy);
        NS_CUDA(cudaMemcpyAsync(host.data(), yy, host.size() * 2, cudaMemcpyDeviceToHost, s));
        NS_CUDA(cudaStreamSynchronize(s));
      };
      phase0(engine_gemv, ref);
      auto probe = [&](int v, const char* name, auto&& form) {
        phase0(form, got);
        float mx = 0, md = 0;
        for (size_t i = 0; i < ref.size(); ++i) {
          const float a = __bfloat162float(ref[i]), b = __bfloat162float(got[i]);
          mx = std::max(mx, std::fabs(a)); md = std::max(md, std::fabs(a - b));
        }
        diag_diff[v] = md / std::max(mx, 1e-30f);
        diag_us[v] = timed_chain(name, form);
        diag_one_us[v] = timed_one((std::string(name) + " one").c_str(), form);
        fprintf(stderr, "decode-chain fp8 %s: max diff / max |y| %.2e\n", name, diag_diff[v]);
      };
      probe(0, "diag f16", diag_f16);
      probe(1, "diag bf16", diag_bf16);
      NS_CUDA(cudaFree(yy));
    }
    const float read_us = timed("read", [&] { read_kernel<<<sms * 8, 256, 0, s>>>(reinterpret_cast<const uint4*>(w), total / 16, sink); });

    const double gb = total / 1e9;
    char line[512];
    snprintf(line, sizeof line,
             "%s{\"weights\":\"%s\",\"GB\":%.3f,\"kernelsUs\":%.1f,\"oneUs\":%.1f,\"readUs\":%.1f,\"kernelsTBs\":%.2f,\"oneTBs\":%.2f,"
             "\"readTBs\":%.2f,\"boundaryUsPerGemv\":%.2f,\"loadsUs\":%.1f,\"loadsOneUs\":%.1f,\"loadsBoundaryUsPerGemv\":%.2f,\"diagF16Us\":%.1f,\"diagF16OneUs\":%.1f,\"diagF16Diff\":%.2e,"
             "\"diagBf16Us\":%.1f,\"diagBf16OneUs\":%.1f,\"diagBf16Diff\":%.2e}",
             fp8 ? "," : "", fp8 ? "fp8" : "bf16", gb, kernels_us, one_us, read_us, gb * 1e3 / kernels_us, gb * 1e3 / one_us,
             gb * 1e3 / read_us, (kernels_us - one_us) / kPhases, loads_us, loads_one_us, (loads_us - loads_one_us) / kPhases, diag_us[0], diag_one_us[0],
             diag_diff[0], diag_us[1], diag_one_us[1], diag_diff[1]);
    out += line;
    for (void* p : {static_cast<void*>(w), static_cast<void*>(ws), static_cast<void*>(ybig)}) NS_CUDA(cudaFree(p));
  }
  NS_CUDA(cudaGetLastError());
  printf("%s]}\n", out.c_str());
  return 0;
}
