// Decode GEMV microbenchmark: the 7B shape's matrices (qkv, o, gate|up, down, LM head) at one row,
// bf16 (gemv.cu) beside int8 and E4M3 weights (quant_gemm.cu's gemv_quant), back-to-back launches
// on one stream. Each matrix has enough copies to exceed the L2 (every call reads its weights from
// HBM); one JSON line: us per call, GB/s, and the quantized / bf16 time ratio (the weights' 2x is
// the roofline).
// usage (repo root, GPU host):
//   nvcc -O3 -std=c++17 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -Inative/src bench/gpu/gemv-quant.cu \
//     native/src/cuda/{quant_gemm,gemv,kernels_basic}.cu native/src/common/{dl,quant,settings}.cc -ldl -o /tmp/gemv-quant && /tmp/gemv-quant
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "cuda/cuda_common.h"
#include "cuda/kernels.h"

namespace ns::cuda {
bool pdl_enabled() { return true; }
}  // namespace ns::cuda

using namespace ns;
using namespace ns::cuda;

struct Shape { const char* name; int N, K; GemvOut mode; };

int main() {
  const Shape shapes[] = {{"qkv", 12288, 4096, GemvOut::Act}, {"o", 4096, 4096, GemvOut::AddResidual},
                          {"gate_up", 22016, 4096, GemvOut::Act}, {"down", 4096, 11008, GemvOut::AddResidual},
                          {"head", 32000, 4096, GemvOut::F32}};
  std::mt19937 rng(7);
  void* x = nullptr; float* y = nullptr; float* scale = nullptr;
  NS_CUDA(cudaMalloc(&x, 11008 * 2));
  NS_CUDA(cudaMalloc(&y, 32000 * 4));
  NS_CUDA(cudaMalloc(&scale, 32000 * 4));
  {
    std::vector<uint16_t> hx(11008);
    for (auto& v : hx) v = 0x3c00 + (rng() % 256);  // bf16 around 0.008..0.03
    NS_CUDA(cudaMemcpy(x, hx.data(), hx.size() * 2, cudaMemcpyHostToDevice));
    std::vector<float> hs(32000, 1e-3f);
    NS_CUDA(cudaMemcpy(scale, hs.data(), hs.size() * 4, cudaMemcpyHostToDevice));
    NS_CUDA(cudaMemset(y, 0, 32000 * 4));
  }
  cudaStream_t s;
  NS_CUDA(cudaStreamCreate(&s));
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  std::string out = "{\"results\":[";
  bool first = true;
  for (const Shape& sh : shapes) {
    double bf16_us = 0;
    for (int wt = 0; wt < 3; ++wt) {  // bf16, int8, fp8
      const size_t bytes = (size_t)sh.N * sh.K * (wt == 0 ? 2 : 1);
      const int copies = (int)std::max<size_t>(2, (160u << 20) / bytes + 1);
      std::vector<void*> w(copies);
      std::vector<uint8_t> hw(bytes);
      for (auto& b : hw) { b = rng() & 0xff; if (wt == 2 && (b & 0x7f) == 0x7f) b &= 0xfe; if (wt == 0) b &= 0x3f; }
      for (auto& p : w) { NS_CUDA(cudaMalloc(&p, bytes)); NS_CUDA(cudaMemcpy(p, hw.data(), bytes, cudaMemcpyHostToDevice)); }
      auto call = [&](int i) {
        if (wt == 0) gemv(DType::BF16, w[i % copies], x, 1, sh.N, sh.K, y, sh.mode, s);
        else gemv_quant(DType::BF16, wt == 1 ? DType::I8 : DType::F8E4M3, QuantGemv{w[i % copies], scale, x, 1, sh.N, sh.K, y}, sh.mode, s);
      };
      for (int i = 0; i < 20; ++i) call(i);
      const int iters = 200;
      cudaEventRecord(e0, s);
      for (int i = 0; i < iters; ++i) call(i);
      cudaEventRecord(e1, s);
      NS_CUDA(cudaEventSynchronize(e1));
      float ms = 0;
      cudaEventElapsedTime(&ms, e0, e1);
      const double us = ms * 1e3 / iters;
      if (wt == 0) bf16_us = us;
      char buf[256];
      snprintf(buf, sizeof buf, "%s{\"matrix\":\"%s\",\"N\":%d,\"K\":%d,\"weights\":\"%s\",\"us\":%.2f,\"GBps\":%.0f,\"speedupVsBf16\":%.3f}",
               first ? "" : ",", sh.name, sh.N, sh.K, wt == 0 ? "bf16" : wt == 1 ? "int8" : "fp8", us, bytes / us / 1e3, bf16_us / us);
      out += buf;
      first = false;
      for (auto p : w) cudaFree(p);
    }
  }
  NS_CUDA(cudaGetLastError());
  printf("%s]}\n", out.c_str());
  return 0;
}
