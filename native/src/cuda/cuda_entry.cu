// Entry points named in engine.h: whether CUDA can be used here, and the backend factory.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "cuda/cublas_api.h"
#include "cuda/cuda_backend.h"
#include "engine.h"

namespace ns {

std::string cuda_unavailable_reason() {
  int driver = 0;
  cudaDriverGetVersion(&driver);
  if (driver == 0) return "no CUDA device (no NVIDIA driver found)";
  int runtime = 0;
  cudaRuntimeGetVersion(&runtime);
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e == cudaErrorInsufficientDriver || driver < runtime) {
    cudaGetLastError();
    return "CUDA driver too old (driver supports " + std::to_string(driver / 1000) + "." +
           std::to_string(driver % 1000 / 10) + ", built with CUDA " + std::to_string(runtime / 1000) + "." +
           std::to_string(runtime % 1000 / 10) + ")";
  }
  if (e == cudaErrorNoDevice || (e == cudaSuccess && count == 0)) {
    cudaGetLastError();
    return "no CUDA device";
  }
  if (e != cudaSuccess) {
    cudaGetLastError();
    return std::string("CUDA error: ") + cudaGetErrorString(e);
  }
  int major = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0);
  if (major < 8) return "GPU compute capability " + std::to_string(major) + ".x < 8.0 (kernels are built for sm_80+)";
  std::string why;
  if (!cuda::cublas_api(&why)) return why;
  return "";
}

std::unique_ptr<Backend> make_cuda_backend(const ShardConfig& cfg) {
  const std::string why = cuda_unavailable_reason();
  if (!why.empty()) throw std::runtime_error("cuda: unavailable (" + why + ")");
  return std::make_unique<cuda::CudaBackend>(cfg);
}

}  // namespace ns
