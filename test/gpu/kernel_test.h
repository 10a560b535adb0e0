// Shared by the stand-alone kernel test programs of test/gpu (flash-kernel.cu, quant-kernels.cu; one
// translation unit each with the kernels' sources): host <-> device copies (download waits for the
// device first), the engine's attention split count, and pdl_enabled() (off: it lives in
// cuda_backend.cu, which needs the whole backend).
#pragma once

#include <algorithm>
#include <vector>

#include "cuda/cuda_common.h"
#include "cuda/kernels.h"

namespace ns::cuda {
bool pdl_enabled() { return false; }
}  // namespace ns::cuda

namespace ns::cuda::test {

template <typename X>
X* upload(const std::vector<X>& h) {
  X* d = nullptr;
  NS_CUDA(cudaMalloc(&d, std::max<size_t>(1, h.size()) * sizeof(X)));
  if (!h.empty()) NS_CUDA(cudaMemcpy(d, h.data(), h.size() * sizeof(X), cudaMemcpyHostToDevice));
  return d;
}

template <typename X>
std::vector<X> download(const X* d, size_t n) {
  std::vector<X> h(n);
  NS_CUDA(cudaDeviceSynchronize());
  NS_CUDA(cudaMemcpy(h.data(), d, n * sizeof(X), cudaMemcpyDeviceToHost));
  return h;
}

inline int sm_count() {
  int dev = 0, n = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
  return n;
}

// CudaBackend::attention_splits: enough (token, head, split) blocks to fill the GPU twice, at most 16.
inline int splits_for(int tokens, int nh) {
  const int base = tokens * nh, sms = sm_count();
  return base >= 2 * sms || base > kAttnSplitCounters ? 1 : std::min(16, (2 * sms + base - 1) / base);
}

}  // namespace ns::cuda::test
