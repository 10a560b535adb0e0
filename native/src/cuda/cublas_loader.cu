// Loads libcublas at run time through the shared search of common/dl (NODESPEED_CUBLAS, the
// directories of LD_LIBRARY_PATH, the CUDA install, the nvidia/*/lib folders of Python wheels)
// and resolves the few entry points of cublas_api.h.
#include <mutex>

#include "common/dl.h"
#include "common/settings.h"
#include "cuda/cublas_api.h"

namespace ns::cuda {
namespace {

CublasApi g_api;
std::string g_error;
std::once_flag g_once;

void load() {
  const dl::Library lib = dl::open_library("cuBLAS", "NODESPEED_CUBLAS", settings().cublas_path, {"libcublas.so.13", "libcublas.so.12", "libcublas.so"});
  if (!lib.handle) {
    g_error = lib.error;
    return;
  }
  auto sym = [&](const char* name) -> void* {
    void* s = dl::symbol(lib.handle, name);
    if (!s && g_error.empty()) g_error = "cuBLAS at " + lib.path + " lacks " + name;
    return s;
  };
  g_api.create = reinterpret_cast<decltype(g_api.create)>(sym("cublasCreate_v2"));
  g_api.destroy = reinterpret_cast<decltype(g_api.destroy)>(sym("cublasDestroy_v2"));
  g_api.set_stream = reinterpret_cast<decltype(g_api.set_stream)>(sym("cublasSetStream_v2"));
  g_api.gemm_ex = reinterpret_cast<decltype(g_api.gemm_ex)>(sym("cublasGemmEx"));
  g_api.set_workspace = reinterpret_cast<decltype(g_api.set_workspace)>(dl::symbol(lib.handle, "cublasSetWorkspace_v2"));
  g_api.path = lib.path;
}

}  // namespace

const CublasApi* cublas_api(std::string* why) {
  std::call_once(g_once, load);
  if (!g_error.empty()) {
    if (why) *why = g_error;
    return nullptr;
  }
  return &g_api;
}

}  // namespace ns::cuda
