// Decode attention microbenchmark: one layer of the 7B shape (32 heads of 128, no GQA, 16-token
// blocks in shuffled order) for S decoding sequences at context C, the bf16 cache beside the E4M3
// cache (attention.cu launch_vec: the form each takes), back-to-back launches on one stream. One
// layer's K/V exceeds the L2 at these sizes (every launch reads them from HBM). One JSON
// line: us per launch, the K/V bytes read, GB/s and the share of the copy bandwidth measured here
// (cudaMemcpy device to device, read + write), the roofline of a kernel that only has to read K/V.
// usage (repo root, GPU host; build/cuda/libnscuda.a from `npm run build:native`):
//   nvcc -O3 -std=c++17 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -Inative/src bench/gpu/attn-kv8.cu \
//     native/src/common/{dl,quant,settings}.cc build/cuda/libnscuda.a -ldl -o /tmp/attn-kv8 && /tmp/attn-kv8
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "cuda/cuda_common.h"
#include "cuda/kernels.h"

namespace ns::cuda {
bool pdl_enabled() { return true; }  // as the engine on sm_90 (the kernels wait on their predecessor)
}  // namespace ns::cuda

using namespace ns;
using namespace ns::cuda;

namespace {

// Deterministic cache contents without a host copy: E4M3 codes of moderate magnitude (exponent
// fields 3..10, no NaN) and bf16 values of the same range.
__global__ void fill_kernel(uint8_t* k8, uint16_t* k16, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    uint32_t h = (uint32_t)i * 2654435761u ^ seed;
    h ^= h >> 15; h *= 2246822519u; h ^= h >> 13;
    const uint32_t sign = h & 0x80, e = 3 + (h >> 8) % 8, m = (h >> 16) & 7;
    if (k8) k8[i] = static_cast<uint8_t>(sign | (e << 3) | m);
    if (k16) k16[i] = static_cast<uint16_t>((sign << 8) | ((e + 120) << 7) | (m << 4));
  }
}

float time_us(cudaStream_t st, int reps, const std::function<void()>& run) {
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  for (int i = 0; i < 3; ++i) run();
  cudaEventRecord(e0, st);
  for (int i = 0; i < reps; ++i) run();
  cudaEventRecord(e1, st);
  NS_CUDA(cudaEventSynchronize(e1));
  float ms = 0;
  cudaEventElapsedTime(&ms, e0, e1);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return 1000.f * ms / reps;
}

int sm_count() {
  int dev = 0, n = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
  return n;
}

}  // namespace

int main() {
  const int nh = 32, nkv = 32, hd = 128, B = 16;
  cudaStream_t st;
  NS_CUDA(cudaStreamCreate(&st));
  std::mt19937 rng(11);
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);

  // Copy bandwidth: 1 GiB device to device, read + write.
  const size_t cp = 1u << 30;
  void *ca = nullptr, *cb = nullptr;
  NS_CUDA(cudaMalloc(&ca, cp));
  NS_CUDA(cudaMalloc(&cb, cp));
  const float cp_us = time_us(st, 10, [&] { cudaMemcpyAsync(cb, ca, cp, cudaMemcpyDeviceToDevice, st); });
  const double copy_gbs = 2.0 * cp / (cp_us * 1e3);
  cudaFree(ca);
  cudaFree(cb);

  std::string out = "{\"gpu\":\"" + std::string(prop.name) + "\",\"copy_gbs\":" + std::to_string(copy_gbs) + ",\"runs\":[";
  bool first = true;
  struct Case { int S, C; };
  for (const Case cs : {Case{64, 512}, Case{64, 640}, Case{64, 768}, Case{32, 640}, Case{1, 640}}) {
    const int S = cs.S, C = cs.C, per = (C + B - 1) / B, nblocks = S * per;
    const size_t kv = (size_t)nblocks * B * nkv * hd;
    uint8_t *k8, *v8;
    uint16_t *k16, *v16;
    NS_CUDA(cudaMalloc(&k8, kv)); NS_CUDA(cudaMalloc(&v8, kv));
    NS_CUDA(cudaMalloc(&k16, 2 * kv)); NS_CUDA(cudaMalloc(&v16, 2 * kv));
    fill_kernel<<<1024, 256, 0, st>>>(k8, k16, kv, 1);
    fill_kernel<<<1024, 256, 0, st>>>(v8, v16, kv, 2);
    std::vector<int32_t> perm(nblocks), pos(S, C - 1), seq(S), off(S);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    for (int s = 0; s < S; ++s) { seq[s] = s; off[s] = s * per; }
    auto up = [&](const std::vector<int32_t>& h) {
      int32_t* d = nullptr;
      NS_CUDA(cudaMalloc(&d, h.size() * 4));
      NS_CUDA(cudaMemcpy(d, h.data(), h.size() * 4, cudaMemcpyHostToDevice));
      return d;
    };
    const size_t row = (size_t)(nh + 2 * nkv) * hd;
    std::vector<uint16_t> q(S * row);
    std::normal_distribution<float> nd(0.f, 1.f);
    for (auto& x : q) { const float f = nd(rng); uint32_t u; std::memcpy(&u, &f, 4); x = static_cast<uint16_t>(u >> 16); }
    uint16_t* dq = nullptr;
    NS_CUDA(cudaMalloc(&dq, q.size() * 2));
    NS_CUDA(cudaMemcpy(dq, q.data(), q.size() * 2, cudaMemcpyHostToDevice));
    void* dout = nullptr;
    NS_CUDA(cudaMalloc(&dout, (size_t)2 * S * nh * hd));
    // The engine's split count (CudaBackend::attention_splits).
    const int base = S * nh, sms = sm_count();
    const int splits = base >= 2 * sms || base > kAttnSplitCounters ? 1 : std::min(16, (2 * sms + base - 1) / base);
    float* ws = nullptr;
    const size_t wsf = std::max<size_t>(1, attention_ws_floats(splits, S, nh, hd));
    NS_CUDA(cudaMalloc(&ws, wsf * 4));
    NS_CUDA(cudaMemset(ws, 0, wsf * 4));
    AttnArgs a{};
    a.qkv = dq; a.T = S; a.nh = nh; a.nkv = nkv; a.hd = hd;
    a.tok_pos = up(pos); a.tok_seq = up(seq); a.seq_bt_off = up(off); a.block_tables = up(perm);
    a.block_size = B; a.out = dout; a.n_splits = splits; a.ws = ws; a.n_simt = S; a.round_p = false;
    const int reps = S == 1 ? 200 : 20;
    for (const bool fp8 : {false, true}) {
      AttnArgs c = a;
      c.kv_fp8 = fp8;
      c.kcache = fp8 ? static_cast<void*>(k8) : k16;
      c.vcache = fp8 ? static_cast<void*>(v8) : v16;
      const float us = time_us(st, reps, [&] { attention(DType::BF16, c, st); });
      const double bytes = (double)S * C * nkv * hd * 2 * (fp8 ? 1 : 2);
      const double gbs = bytes / (us * 1e3);
      char buf[320];
      std::snprintf(buf, sizeof buf, "%s{\"S\":%d,\"C\":%d,\"splits\":%d,\"cache\":\"%s\",\"us\":%.2f,\"kv_mb\":%.1f,\"gbs\":%.1f,\"of_copy\":%.3f}",
                    first ? "" : ",", S, C, splits, fp8 ? "e4m3" : "bf16", us, bytes / 1e6, gbs, gbs / copy_gbs);
      out += buf;
      first = false;
    }
    NS_CUDA(cudaStreamSynchronize(st));
    NS_CUDA(cudaGetLastError());
    for (void* p : {(void*)k8, (void*)v8, (void*)k16, (void*)v16, (void*)dq, dout, (void*)ws, (void*)a.tok_pos, (void*)a.tok_seq,
                    (void*)a.seq_bt_off, (void*)a.block_tables})
      cudaFree(p);
  }
  std::printf("%s]}\n", out.c_str());
  return 0;
}
