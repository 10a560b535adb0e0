// What a launch boundary costs the batch-1 decode GEMVs. The 7B shape's 128 layer products (32 x q|k|v,
// o, gate|up, down; one row) as a chain, each reading the output of the one before it, timed seven ways
// on one GPU at bf16 and at E4M3 weights:
//   kernels     the engine's decode GEMVs (gemv.cu, quant_gemm.cu), one launch a product, replayed as a
//               CUDA graph with programmatic dependent launch (as the engine's decode step runs them)
//   one         the same bytes as one GEMV launch (the chain's weights, one buffer, as rows of 4096)
//   read        the same bytes read by a plain streaming kernel (the read roofline)
//   persistent  one cooperative launch whose blocks walk the 128 products, a grid barrier between two;
//               before reducing a row group, and before arriving at a barrier, a warp pulls its next
//               rows' first chunks into L2 (so the weight stream does not stop at a product's end)
//   perProduct  the persistent kernel launched once a product (graph, no PDL): the same code with
//               launch boundaries instead of barriers
//   persistentNoPull  persistent without pulling the next rows into L2 (what the pull is worth)
//   perLayer    the persistent kernel launched once a layer (its 4 products, 3 barriers): 32 launches
// (kernels - one) / 128 is what a boundary costs a GEMV in the engine's form; kernels - persistent
// what a persistent decode of these products would gain. The persistent form's first product is
// checked against the engine's GEMV (max |diff| / max |y|). One JSON line on stdout (each figure also on
// stderr as it is measured).
// usage (repo root, GPU host):
//   nvcc -O3 -std=c++17 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -Inative/src bench/gpu/decode-chain.cu \
//     native/src/cuda/{quant_gemm,gemv,kernels_basic}.cu native/src/common/{dl,quant,settings}.cc -ldl -o /tmp/decode-chain && /tmp/decode-chain
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cuda/cuda_common.h"
#include "cuda/kernels.h"
#include "cuda/quant.h"

namespace ns::cuda {
bool pdl_enabled() { return true; }
}  // namespace ns::cuda

using namespace ns;
using namespace ns::cuda;

namespace {

constexpr int kLayers = 32, kPhases = 4 * kLayers, kWarps = 8, kMaxN = 22016;
struct Mat { int N, K; };
constexpr Mat kMats[4] = {{12288, 4096}, {4096, 4096}, {22016, 4096}, {4096, 11008}};

// y[n] = ws[n] * sum_k x[k] * W[n, k]; ks warps share a row (the engine's choice: 1 from 12288 rows).
struct Phase {
  const uint8_t* w; const float* ws; const __nv_bfloat16* x; __nv_bfloat16* y; int N, K, ks;
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

// One 16-byte weight chunk (16 E4M3 or 8 bf16 weights, chunk i of the row) against x. x was written
// by other blocks during this launch: read through L2 (__ldcg), never the non-coherent path.
template <DType W>
__device__ __forceinline__ void fma_chunk(const uint4& wv, const __nv_bfloat16* x, int i, float& acc) {
  if constexpr (W == DType::F8E4M3) {
    float wf[16], xf[16];
    unpack16<W>(wv, wf);
    const uint4* xr = reinterpret_cast<const uint4*>(x) + 2 * i;
    unpack8<__nv_bfloat16>(__ldcg(xr), xf);
    unpack8<__nv_bfloat16>(__ldcg(xr + 1), xf + 8);
#pragma unroll
    for (int e = 0; e < 16; ++e) acc += wf[e] * xf[e];
  } else {
    float wf[8], xf[8];
    unpack8<__nv_bfloat16>(wv, wf);
    unpack8<__nv_bfloat16>(__ldcg(reinterpret_cast<const uint4*>(x) + i), xf);
#pragma unroll
    for (int e = 0; e < 8; ++e) acc += wf[e] * xf[e];
  }
}

__device__ __forceinline__ unsigned load_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// Every block of the (co-resident) grid arrives; the last one opens the next generation.
__device__ __forceinline__ void grid_barrier(unsigned* count, unsigned* gen) {
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned g = load_acquire(gen);
    __threadfence();
    if (atomicAdd(count, 1u) == gridDim.x - 1) {
      atomicExch(count, 0u);
      __threadfence();
      atomicAdd(gen, 1u);
    } else {
      while (load_acquire(gen) == g) __nanosleep(64);
    }
    __threadfence();
  }
  __syncthreads();
}

template <DType W>
__device__ __forceinline__ void prefetch_rows(const Phase& q, int g, int warp, int lane) {
  constexpr int kEl = W == DType::F8E4M3 ? 16 : 8;
  const int n = g * (kWarps / q.ks) + warp / q.ks, part = warp % q.ks, C = q.K / kEl;
  if (n >= q.N) return;
  const uint4* w = reinterpret_cast<const uint4*>(q.w) + (size_t)n * C;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int i = part * 32 + lane + j * 32 * q.ks;
    if (i < C) asm volatile("prefetch.global.L2 [%0];" ::"l"(w + i));
  }
}

template <DType W, bool kPull>
__global__ void __launch_bounds__(kWarps * 32, 8) chain_kernel(const Phase* __restrict__ phases, int nph, unsigned* bar) {
  constexpr int kEl = W == DType::F8E4M3 ? 16 : 8;
  __shared__ float red[kWarps];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int p = 0; p < nph; ++p) {
    const Phase P = phases[p];
    const int rpb = kWarps / P.ks, groups = (P.N + rpb - 1) / rpb, C = P.K / kEl, stride = 32 * P.ks, part = warp % P.ks;
    if (kPull && p == 0) prefetch_rows<W>(P, blockIdx.x, warp, lane);
    for (int g = blockIdx.x; g < groups; g += gridDim.x) {
      const int n = g * rpb + warp / P.ks;
      float acc = 0.f;
      if (n < P.N) {
        const uint4* w = reinterpret_cast<const uint4*>(P.w) + (size_t)n * C;
        int i = part * 32 + lane;
        for (; i + 3 * stride < C; i += 4 * stride) {
          const uint4 w0 = __ldg(w + i), w1 = __ldg(w + i + stride), w2 = __ldg(w + i + 2 * stride), w3 = __ldg(w + i + 3 * stride);
          fma_chunk<W>(w0, P.x, i, acc);
          fma_chunk<W>(w1, P.x, i + stride, acc);
          fma_chunk<W>(w2, P.x, i + 2 * stride, acc);
          fma_chunk<W>(w3, P.x, i + 3 * stride, acc);
        }
        for (; i < C; i += stride) fma_chunk<W>(__ldg(w + i), P.x, i, acc);
      }
      // The block's next rows: this product's next group, else the next product's first. (A block
      // without rows in a product, 32 of 1056 in o_proj/down, pulls nothing: the check spilled.)
      if (kPull) {
        if (g + (int)gridDim.x < groups) prefetch_rows<W>(P, g + gridDim.x, warp, lane);
        else if (p + 1 < nph) prefetch_rows<W>(phases[p + 1], blockIdx.x, warp, lane);
      }
      acc = warp_sum(acc);
      if (P.ks > 1) {
        if (lane == 0) red[warp] = acc;
        __syncthreads();
        if (part == 0 && lane == 0 && n < P.N) {
          float s = 0.f;
          for (int q = 0; q < P.ks; ++q) s += red[warp + q];
          P.y[n] = __float2bfloat16(s * P.ws[n]);
        }
        __syncthreads();
      } else if (lane == 0 && n < P.N) {
        P.y[n] = __float2bfloat16(acc * P.ws[n]);
      }
    }
    if (p + 1 < nph) grid_barrier(bar, bar + 1);
  }
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
  unsigned* bar = nullptr;
  NS_CUDA(cudaMalloc(&bar, 3 * sizeof(unsigned)));
  NS_CUDA(cudaMemset(bar, 0, 3 * sizeof(unsigned)));
  std::string out = "{\"gpu\":\"" + std::string(prop.name) + "\",\"layers\":32,\"rows\":1,\"results\":[";
  bool ok = true;

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
        const int p = static_cast<int>(ph.size());
        ph.push_back({w + off, ws, buf[(p + 1) & 1], buf[p & 1], m.N, m.K, m.N >= 12288 ? 1 : 2});
        off += (size_t)m.N * m.K * elt;
      }
    Phase* dph = nullptr;
    NS_CUDA(cudaMalloc(&dph, ph.size() * sizeof(Phase)));
    NS_CUDA(cudaMemcpy(dph, ph.data(), ph.size() * sizeof(Phase), cudaMemcpyHostToDevice));

    auto engine_gemv = [&](const Phase& p) {
      if (!fp8) gemv(DType::BF16, p.w, p.x, 1, p.N, p.K, p.y, GemvOut::Act, s);
      else gemv_quant(DType::BF16, DType::F8E4M3, QuantGemv{p.w, p.ws, p.x, 1, p.N, p.K, p.y}, GemvOut::Act, s);
    };
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

    // kernels: the chain captured once, replayed.
    cudaGraph_t graph, graph2;
    cudaGraphExec_t exec, exec2;
    NS_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    for (const Phase& p : ph) engine_gemv(p);
    NS_CUDA(cudaStreamEndCapture(s, &graph));
    NS_CUDA(cudaGraphInstantiate(&exec, graph, 0));
    const float kernels_us = timed("kernels", [&] { NS_CUDA(cudaGraphLaunch(exec, s)); });

    const float one_us = timed("one", [&] {
      if (!fp8) gemv(DType::BF16, w, buf[1], 1, big_n, 4096, ybig, GemvOut::Act, s);
      else gemv_quant(DType::BF16, DType::F8E4M3, QuantGemv{w, ws, buf[1], 1, big_n, 4096, ybig}, GemvOut::Act, s);
    });
    const float read_us = timed("read", [&] { read_kernel<<<sms * 8, 256, 0, s>>>(reinterpret_cast<const uint4*>(w), total / 16, bar + 2); });

    auto* kernel = fp8 ? chain_kernel<DType::F8E4M3, true> : chain_kernel<DType::BF16, true>;
    auto* kernel_nopull = fp8 ? chain_kernel<DType::F8E4M3, false> : chain_kernel<DType::BF16, false>;
    int per_sm = 0;
    NS_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kWarps * 32, 0));
    const int grid = per_sm * sms;
    auto persistent = [&](int nph, bool pull) {
      void* args[] = {&dph, &nph, &bar};
      NS_CUDA(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(pull ? kernel : kernel_nopull), dim3(grid), dim3(kWarps * 32), args, 0, s));
    };
    const float persistent_us = timed("persistent", [&] { persistent(kPhases, true); });
    const float nopull_us = timed("persistentNoPull", [&] { persistent(kPhases, false); });
    // The same kernel launched once a product (no barrier then): the boundary alone, same code.
    NS_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    for (int p = 0; p < kPhases; ++p) kernel<<<grid, kWarps * 32, 0, s>>>(dph + p, 1, bar);
    NS_CUDA(cudaStreamEndCapture(s, &graph2));
    NS_CUDA(cudaGraphInstantiate(&exec2, graph2, 0));
    const float per_product_us = timed("perProduct", [&] { NS_CUDA(cudaGraphLaunch(exec2, s)); });
    // Once a layer (4 products, 3 barriers): the grid fits the GPU and the launch before it has ended,
    // so every block is resident without the cooperative launch.
    cudaGraph_t graph3;
    cudaGraphExec_t exec3;
    NS_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    for (int l = 0; l < kLayers; ++l) kernel<<<grid, kWarps * 32, 0, s>>>(dph + 4 * l, 4, bar);
    NS_CUDA(cudaStreamEndCapture(s, &graph3));
    NS_CUDA(cudaGraphInstantiate(&exec3, graph3, 0));
    const float per_layer_us = timed("perLayer", [&] { NS_CUDA(cudaGraphLaunch(exec3, s)); });

    // The persistent form's first product against the engine's GEMV, from a fresh input row (the
    // chain's values drift to zero or overflow over 128 products; the timing does not depend on them).
    std::vector<uint16_t> a(ph[0].N), b(ph[0].N);
    fill_kernel<<<64, 256, 0, s>>>(reinterpret_cast<uint8_t*>(buf[1]), kMaxN * 2, 99, false);
    engine_gemv(ph[0]);
    NS_CUDA(cudaMemcpyAsync(a.data(), ph[0].y, a.size() * 2, cudaMemcpyDeviceToHost, s));
    NS_CUDA(cudaMemsetAsync(ph[0].y, 0, a.size() * 2, s));
    persistent(1, true);
    NS_CUDA(cudaMemcpyAsync(b.data(), ph[0].y, b.size() * 2, cudaMemcpyDeviceToHost, s));
    NS_CUDA(cudaStreamSynchronize(s));
    auto f = [](uint16_t v) { uint32_t u = static_cast<uint32_t>(v) << 16; float x; memcpy(&x, &u, 4); return x; };
    double dmax = 0, ymax = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      dmax = std::max(dmax, (double)std::fabs(f(a[i]) - f(b[i])));
      ymax = std::max(ymax, (double)std::fabs(f(a[i])));
    }
    const double rel = ymax > 0 ? dmax / ymax : 1.0;
    if (!(rel <= 1e-2) || !(ymax > 0)) ok = false;

    const double gb = total / 1e9;
    char line[768];
    snprintf(line, sizeof line,
             "%s{\"weights\":\"%s\",\"GB\":%.3f,\"kernelsUs\":%.1f,\"oneUs\":%.1f,\"readUs\":%.1f,\"persistentUs\":%.1f,\"perProductUs\":%.1f,\"persistentNoPullUs\":%.1f,\"perLayerUs\":%.1f,"
             "\"kernelsTBs\":%.2f,\"oneTBs\":%.2f,\"readTBs\":%.2f,\"persistentTBs\":%.2f,\"boundaryUsPerGemv\":%.2f,"
             "\"persistentGrid\":%d,\"firstProductRelDiff\":%.2e}",
             fp8 ? "," : "", fp8 ? "fp8" : "bf16", gb, kernels_us, one_us, read_us, persistent_us, per_product_us, nopull_us, per_layer_us, gb * 1e3 / kernels_us,
             gb * 1e3 / one_us, gb * 1e3 / read_us, gb * 1e3 / persistent_us, (kernels_us - one_us) / kPhases, grid, rel);
    out += line;
    for (cudaGraphExec_t e : {exec, exec2, exec3}) NS_CUDA(cudaGraphExecDestroy(e));
    for (cudaGraph_t g : {graph, graph2, graph3}) NS_CUDA(cudaGraphDestroy(g));
    for (void* p : {static_cast<void*>(w), static_cast<void*>(ws), static_cast<void*>(ybig), static_cast<void*>(dph)}) NS_CUDA(cudaFree(p));
  }
  NS_CUDA(cudaGetLastError());
  printf("%s],\"ok\":%s}\n", out.c_str(), ok ? "true" : "false");
  return ok ? 0 : 1;
}
