// What a launch boundary costs the batch-1 decode GEMVs. The 7B shape's 128 layer products (32 x q|k|v,
// o, gate|up, down; one row) as a chain, each reading the output of the one before it, timed on one
// GPU at bf16 and at E4M3 weights:
//   kernels     the engine's decode GEMVs (gemv.cu, quant_gemm.cu), one launch a product, replayed as a
//               CUDA graph with programmatic dependent launch (as the engine's decode step runs them)
//   one         the same bytes as one GEMV launch (the chain's weights, one buffer, as rows of 4096)
//   read        the same bytes read by a plain streaming kernel (the read roofline)
//   persistent  one cooperative launch of 128 blocks x 32 warps (one an SM) walking the 128 products,
//               a grid barrier between two: each block copies the product's f32 input row into shared
//               memory, the rows split evenly over the 4096 warps (gate|up's rows in 8 parts summed
//               with atomic adds), 4 weight loads in flight a lane across row ends; before the
//               barrier each warp pulls its first chunks of the next product into L2
//   persistentU8      the same with 8 loads in flight a lane
//   persistentNoPull  persistent without the pull (what it is worth)
//   perProduct  the persistent kernel launched once a product (graph, no PDL): the same code with
//               launch boundaries instead of barriers
// (kernels - one) / 128 is what a boundary costs a GEMV in the engine's form, (persistent - one) / 128
// what it costs the persistent form; kernels - persistent is what a persistent decode of these
// products would gain. The persistent form's first product is checked against the engine's GEMV
// (max |diff| / max |y|). One JSON line on stdout (each figure also on stderr as it is measured).
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

// The persistent form: one block of 32 warps an SM on 128 SMs, so that every product's rows split
// evenly over the 4096 warps (12288 = 3 x 4096; 22016 x 8 = 43 x 4096 with rows split in 8).
constexpr int kLayers = 32, kPhases = 4 * kLayers, kMaxN = 22016, kMaxK = 11008, kBlockWarps = 32, kGrid = 128;
struct Mat { int N, K; };
constexpr Mat kMats[4] = {{12288, 4096}, {4096, 4096}, {22016, 4096}, {4096, 11008}};

// y[n] = ws[n] * sum_k x[k] * W[n, k]; in the persistent form ks warps share a row (pick_ks).
struct Phase {
  const uint8_t* w; const float* ws; int N, K, ks;
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
      while (load_acquire(gen) == g) {
      }
    }
    __threadfence();
  }
  __syncthreads();
}

// A warp's work in a phase: units (row n, K part q) gw, gw + nw, ...; in each, lane l takes the
// unit's 16-byte chunks l, l + 32, ... (Lc a lane, the last ones past the unit's end empty). The
// walk is flattened over (unit, chunk) so that U loads stay in flight across unit ends.
struct Walk {
  int k = 0, j = 0;  // unit ordinal, chunk ordinal within it
  __device__ __forceinline__ void next(int Lc) { if (++j == Lc) { j = 0; ++k; } }
};

template <DType W>
__device__ __forceinline__ void fma_chunk(const uint4& wv, const float* xs, float& acc) {
  constexpr int kEl = W == DType::F8E4M3 ? 16 : 8;
  float wf[kEl];
  if constexpr (W == DType::F8E4M3) unpack16<W>(wv, wf);
  else unpack8<__nv_bfloat16>(wv, wf);
  const float4* x4 = reinterpret_cast<const float4*>(xs);
#pragma unroll
  for (int e = 0; e < kEl / 4; ++e) {
    const float4 x = x4[e];
    acc += wf[4 * e] * x.x + wf[4 * e + 1] * x.y + wf[4 * e + 2] * x.z + wf[4 * e + 3] * x.w;
  }
}

// Phases p0 .. p1-1 of the chain in one launch (a grid barrier between two). Phase p reads its f32
// input row from bufs[p % 3] into shared memory, writes bufs[(p+1) % 3] (stores, or atomic adds
// when a row is split over warps: that buffer was zeroed in phase p-1) and zeroes bufs[(p+2) % 3]
// (phase p-1's input, read by every block before the last barrier) for phase p+1.
template <DType W, int U, bool kPull>
__global__ void __launch_bounds__(kBlockWarps * 32, 1) chain_kernel(const Phase* __restrict__ phases, int p0, int p1, float* bufs, unsigned* bar) {
  constexpr int kEl = W == DType::F8E4M3 ? 16 : 8;
  extern __shared__ float4 xs4[];
  float* xs = reinterpret_cast<float*>(xs4);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int gw = blockIdx.x * kBlockWarps + warp, nw = gridDim.x * kBlockWarps;
  for (int p = p0; p < p1; ++p) {
    const Phase P = phases[p];
    const float* x = bufs + (p % 3) * kMaxN;
    float* y = bufs + ((p + 1) % 3) * kMaxN;
    float* z = bufs + ((p + 2) % 3) * kMaxN;
    for (int i = threadIdx.x; i < P.K / 4; i += blockDim.x) xs4[i] = __ldcg(reinterpret_cast<const float4*>(x) + i);
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < kMaxN; i += gridDim.x * blockDim.x) z[i] = 0.f;
    __syncthreads();
    const int C = P.K / kEl, Cu = C / P.ks, Lc = (Cu + 31) / 32, units = P.N * P.ks;
    const int mine = units > gw ? (units - gw + nw - 1) / nw : 0;
    const uint4* w = reinterpret_cast<const uint4*>(P.w);
    // chunk (unit ordinal k, lane chunk j) -> its index in w, or -1 past the unit's end
    auto at = [&](const Walk& s) -> long long {
      const int c = lane + 32 * s.j;
      if (s.k >= mine || c >= Cu) return -1;
      const int unit = gw + s.k * nw, n = unit / P.ks, q = unit - n * P.ks;
      return (long long)n * C + q * Cu + c;
    };
    Walk ld, use;
    float acc = 0.f;
    const int T = mine * Lc;
    for (int t0 = 0; t0 < T; t0 += U) {
      uint4 wv[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const long long i = at(ld);
        wv[u] = i >= 0 ? __ldg(w + i) : make_uint4(0, 0, 0, 0);
        ld.next(Lc);
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (t0 + u < T) {
          const int c = lane + 32 * use.j;
          const int unit = gw + use.k * nw, n = unit / P.ks, q = unit - n * P.ks;
          if (c < Cu) fma_chunk<W>(wv[u], xs + (q * Cu + c) * kEl, acc);
          if (use.j == Lc - 1) {  // the unit's last chunks: its sum goes out
            acc = warp_sum(acc);
            if (lane == 0) {
              if (P.ks == 1) y[n] = acc * P.ws[n];
              else atomicAdd(y + n, acc * P.ws[n]);
            }
            acc = 0.f;
          }
          use.next(Lc);
        }
      }
    }
    if (p + 1 < p1) {
      if (kPull) {  // this warp's first U chunks of the next phase, into L2 while the grid gathers
        const Phase Q = phases[p + 1];
        const int QC = Q.K / kEl, QCu = QC / Q.ks, QLc = (QCu + 31) / 32;
        Walk s;
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int c = lane + 32 * s.j, unit = gw + s.k * nw;
          if (unit < Q.N * Q.ks && c < QCu) {
            const int n = unit / Q.ks, q = unit - n * Q.ks;
            asm volatile("prefetch.global.L2 [%0];" ::"l"(reinterpret_cast<const uint4*>(Q.w) + (size_t)n * QC + q * QCu + c));
          }
          s.next(QLc);
        }
      }
      grid_barrier(bar, bar + 1);
    }
  }
}

__global__ void to_f32_kernel(const __nv_bfloat16* a, float* b, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) b[i] = __bfloat162float(a[i]);
}

// The smallest split of rows over warps that gives every warp the same work (else the least uneven).
int pick_ks(const Mat& m, int elt, int nw) {
  int best = 1;
  double best_cost = 1e30;
  for (int ks = 1; ks <= 16; ks *= 2) {
    const int C = m.K * elt / 16;
    if (C % ks) break;
    const double cost = std::ceil((double)m.N * ks / nw) / ks;
    if (cost < best_cost - 1e-9) { best = ks; best_cost = cost; }
  }
  return best;
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
  float* fbuf = nullptr;  // the persistent forms' three f32 rows (phase p reads fbuf + (p % 3) * kMaxN)
  NS_CUDA(cudaMalloc(&fbuf, 3 * kMaxN * sizeof(float)));
  NS_CUDA(cudaMemset(fbuf, 0, 3 * kMaxN * sizeof(float)));
  to_f32_kernel<<<64, 256, 0, s>>>(buf[1], fbuf, kMaxN);
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
        ph.push_back({w + off, ws, m.N, m.K, pick_ks(m, elt, kGrid * kBlockWarps)});
        off += (size_t)m.N * m.K * elt;
      }
    Phase* dph = nullptr;
    NS_CUDA(cudaMalloc(&dph, ph.size() * sizeof(Phase)));
    NS_CUDA(cudaMemcpy(dph, ph.data(), ph.size() * sizeof(Phase), cudaMemcpyHostToDevice));

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
    cudaGraph_t graph, graph2;
    cudaGraphExec_t exec, exec2;
    NS_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    for (int p = 0; p < kPhases; ++p) engine_gemv(p);
    NS_CUDA(cudaStreamEndCapture(s, &graph));
    NS_CUDA(cudaGraphInstantiate(&exec, graph, 0));
    const float kernels_us = timed("kernels", [&] { NS_CUDA(cudaGraphLaunch(exec, s)); });

    const float one_us = timed("one", [&] {
      if (!fp8) gemv(DType::BF16, w, buf[1], 1, big_n, 4096, ybig, GemvOut::Act, s);
      else gemv_quant(DType::BF16, DType::F8E4M3, QuantGemv{w, ws, buf[1], 1, big_n, 4096, ybig}, GemvOut::Act, s);
    });
    const float read_us = timed("read", [&] { read_kernel<<<sms * 8, 256, 0, s>>>(reinterpret_cast<const uint4*>(w), total / 16, bar + 2); });

    // The persistent forms: 4 (U) or 8 weight loads in flight a lane, with and without the pull.
    using Kernel = void (*)(const Phase*, int, int, float*, unsigned*);
    const Kernel k4 = fp8 ? chain_kernel<DType::F8E4M3, 4, true> : chain_kernel<DType::BF16, 4, true>;
    const Kernel k8 = fp8 ? chain_kernel<DType::F8E4M3, 8, true> : chain_kernel<DType::BF16, 8, true>;
    const Kernel k4n = fp8 ? chain_kernel<DType::F8E4M3, 4, false> : chain_kernel<DType::BF16, 4, false>;
    const int smem = kMaxK * 4;
    for (Kernel k : {k4, k8, k4n}) {
      int per_sm = 0;
      NS_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k, kBlockWarps * 32, smem));
      if (per_sm < 1 || sms < kGrid) {
        fprintf(stderr, "decode-chain: the persistent form needs %d SMs with one %d-thread block each (%d SMs, %d a SM)\n", kGrid,
                kBlockWarps * 32, sms, per_sm);
        return 1;
      }
    }
    auto persistent = [&](Kernel k, int p0, int p1) {
      void* args[] = {&dph, &p0, &p1, &fbuf, &bar};
      NS_CUDA(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(k), dim3(kGrid), dim3(kBlockWarps * 32), args, smem, s));
    };
    const float persistent_us = timed("persistent", [&] { persistent(k4, 0, kPhases); });
    const float persistent8_us = timed("persistentU8", [&] { persistent(k8, 0, kPhases); });
    const float nopull_us = timed("persistentNoPull", [&] { persistent(k4n, 0, kPhases); });
    // The same kernel launched once a product (no barrier then): the boundary alone, same code.
    NS_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    for (int p = 0; p < kPhases; ++p) k4<<<kGrid, kBlockWarps * 32, smem, s>>>(dph, p, p + 1, fbuf, bar);
    NS_CUDA(cudaStreamEndCapture(s, &graph2));
    NS_CUDA(cudaGraphInstantiate(&exec2, graph2, 0));
    const float per_product_us = timed("perProduct", [&] { NS_CUDA(cudaGraphLaunch(exec2, s)); });

    // The persistent form's first product against the engine's GEMV, from a fresh input row (the
    // chain's values drift to zero or overflow over 128 products; the timing does not depend on them).
    std::vector<uint16_t> a(ph[0].N);
    std::vector<float> b(ph[0].N);
    fill_kernel<<<64, 256, 0, s>>>(reinterpret_cast<uint8_t*>(buf[1]), kMaxN * 2, 99, false);
    to_f32_kernel<<<64, 256, 0, s>>>(buf[1], fbuf, kMaxN);
    engine_gemv(0);
    NS_CUDA(cudaMemcpyAsync(a.data(), buf[0], a.size() * 2, cudaMemcpyDeviceToHost, s));
    NS_CUDA(cudaMemsetAsync(fbuf + kMaxN, 0, kMaxN * 4, s));
    persistent(k8, 0, 1);
    NS_CUDA(cudaMemcpyAsync(b.data(), fbuf + kMaxN, b.size() * 4, cudaMemcpyDeviceToHost, s));
    NS_CUDA(cudaStreamSynchronize(s));
    auto f = [](uint16_t v) { uint32_t u = static_cast<uint32_t>(v) << 16; float x; memcpy(&x, &u, 4); return x; };
    double dmax = 0, ymax = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      dmax = std::max(dmax, (double)std::fabs(f(a[i]) - b[i]));
      ymax = std::max(ymax, (double)std::fabs(f(a[i])));
    }
    const double rel = ymax > 0 ? dmax / ymax : 1.0;
    if (!(rel <= 1e-2) || !(ymax > 0)) ok = false;
    std::string ks;
    for (int m = 0; m < 4; ++m) ks += (m ? "," : "") + std::to_string(ph[m].ks);

    const double gb = total / 1e9;
    char line[1024];
    snprintf(line, sizeof line,
             "%s{\"weights\":\"%s\",\"GB\":%.3f,\"kernelsUs\":%.1f,\"oneUs\":%.1f,\"readUs\":%.1f,\"persistentUs\":%.1f,\"persistentU8Us\":%.1f,"
             "\"persistentNoPullUs\":%.1f,\"perProductUs\":%.1f,\"kernelsTBs\":%.2f,\"oneTBs\":%.2f,\"readTBs\":%.2f,\"persistentTBs\":%.2f,"
             "\"persistentU8TBs\":%.2f,\"boundaryUsPerGemv\":%.2f,\"barrierUsPerProduct\":%.2f,\"persistentGrid\":\"%dx%d warps\",\"ks\":\"%s\",\"firstProductRelDiff\":%.2e}",
             fp8 ? "," : "", fp8 ? "fp8" : "bf16", gb, kernels_us, one_us, read_us, persistent_us, persistent8_us, nopull_us, per_product_us,
             gb * 1e3 / kernels_us, gb * 1e3 / one_us, gb * 1e3 / read_us, gb * 1e3 / persistent_us, gb * 1e3 / persistent8_us,
             (kernels_us - one_us) / kPhases, (persistent_us - one_us) / kPhases, kGrid, kBlockWarps, ks.c_str(), rel);
    out += line;
    for (cudaGraphExec_t e : {exec, exec2}) NS_CUDA(cudaGraphExecDestroy(e));
    for (cudaGraph_t g : {graph, graph2}) NS_CUDA(cudaGraphDestroy(g));
    for (void* p : {static_cast<void*>(w), static_cast<void*>(ws), static_cast<void*>(ybig), static_cast<void*>(dph)}) NS_CUDA(cudaFree(p));
  }
  NS_CUDA(cudaGetLastError());
  printf("%s],\"ok\":%s}\n", out.c_str(), ok ? "true" : "false");
  return ok ? 0 : 1;
}
