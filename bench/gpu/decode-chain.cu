// What a dependency boundary costs the batch-1 decode GEMVs. The 7B shape's 128 layer products (32 x
// q|k|v, o, gate|up, down; one row) as a chain, each reading the output of the one before it, timed
// on one GPU at bf16 and at E4M3 weights:
//   kernels  the engine's decode GEMVs (gemv.cu, quant_gemm.cu), one launch a product, replayed as a
//            CUDA graph with programmatic dependent launch (as the engine's decode step runs them)
//   one      the same bytes as one GEMV launch (the chain's weights, one buffer, as rows of 4096):
//            each precision's streaming rate without the boundaries
//   read     the same bytes read by a plain streaming kernel (the read roofline)
// (kernels - one) / 128 is what a boundary costs a GEMV. One JSON line on stdout (each figure also
// on stderr as it is measured). docs/ENGINE.md ("Tried and removed") has the persistent forms this
// benchmark also timed, and why they went.
// usage (repo root, GPU host):
//   nvcc -O3 -std=c++17 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -Inative/src bench/gpu/decode-chain.cu \
//     native/src/cuda/{quant_gemm,gemv,kernels_basic}.cu native/src/common/{dl,quant,settings}.cc -ldl -o /tmp/decode-chain && /tmp/decode-chain
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "cuda/cuda_common.h"
#include "cuda/kernels.h"

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

    // The engine's GEMV of phase p: bf16 rows in buf[(p + 1) & 1], out to buf[p & 1].
    auto engine_gemv = [&](int p) {
      const Phase& q = ph[p];
      const __nv_bfloat16* x = buf[(p + 1) & 1];
      __nv_bfloat16* y = buf[p & 1];
      if (!fp8) gemv(DType::BF16, q.w, x, 1, q.N, q.K, y, GemvOut::Act, s);
      else gemv_quant(DType::BF16, DType::F8E4M3, QuantGemv{q.w, q.ws, x, 1, q.N, q.K, y}, GemvOut::Act, s);
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
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    NS_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    for (int p = 0; p < kPhases; ++p) engine_gemv(p);
    NS_CUDA(cudaStreamEndCapture(s, &graph));
    NS_CUDA(cudaGraphInstantiate(&exec, graph, 0));
    const float kernels_us = timed("kernels", [&] { NS_CUDA(cudaGraphLaunch(exec, s)); });

    const float one_us = timed("one", [&] {
      if (!fp8) gemv(DType::BF16, w, buf[1], 1, big_n, 4096, ybig, GemvOut::Act, s);
      else gemv_quant(DType::BF16, DType::F8E4M3, QuantGemv{w, ws, buf[1], 1, big_n, 4096, ybig}, GemvOut::Act, s);
    });
    const float read_us = timed("read", [&] { read_kernel<<<sms * 8, 256, 0, s>>>(reinterpret_cast<const uint4*>(w), total / 16, sink); });

    const double gb = total / 1e9;
    char line[512];
    snprintf(line, sizeof line,
             "%s{\"weights\":\"%s\",\"GB\":%.3f,\"kernelsUs\":%.1f,\"oneUs\":%.1f,\"readUs\":%.1f,\"kernelsTBs\":%.2f,\"oneTBs\":%.2f,"
             "\"readTBs\":%.2f,\"boundaryUsPerGemv\":%.2f}",
             fp8 ? "," : "", fp8 ? "fp8" : "bf16", gb, kernels_us, one_us, read_us, gb * 1e3 / kernels_us, gb * 1e3 / one_us,
             gb * 1e3 / read_us, (kernels_us - one_us) / kPhases);
    out += line;
    NS_CUDA(cudaGraphExecDestroy(exec));
    NS_CUDA(cudaGraphDestroy(graph));
    for (void* p : {static_cast<void*>(w), static_cast<void*>(ws), static_cast<void*>(ybig)}) NS_CUDA(cudaFree(p));
  }
  NS_CUDA(cudaGetLastError());
  printf("%s]}\n", out.c_str());
  return 0;
}
