// Finds and dlopens libcublas at run time, in the order the design gives: NODESPEED_CUBLAS, the
// directories of LD_LIBRARY_PATH, the CUDA install, then the nvidia/*/lib folders of Python
// wheels (pip's nvidia-cublas, e.g. the torch venv in /opt/torch/.venv).
#include <dlfcn.h>
#include <glob.h>

#include <cstdlib>
#include <mutex>
#include <sstream>
#include <vector>

#include "cuda/cublas_api.h"

namespace ns::cuda {
namespace {

const char* kSonames[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so"};

std::vector<std::string> candidate_dirs() {
  std::vector<std::string> dirs;
  if (const char* ld = std::getenv("LD_LIBRARY_PATH")) {
    std::stringstream ss(ld);
    std::string d;
    while (std::getline(ss, d, ':')) if (!d.empty()) dirs.push_back(d);
  }
  if (const char* home = std::getenv("CUDA_HOME")) dirs.push_back(std::string(home) + "/lib64");
  dirs.push_back("/usr/local/cuda/lib64");
  const char* patterns[] = {
      "/opt/torch/.venv/lib/python3*/site-packages/nvidia/*/lib",
      "/usr/local/lib/python3*/dist-packages/nvidia/*/lib",
      "/usr/local/lib/python3*/site-packages/nvidia/*/lib",
      "/usr/lib/python3*/dist-packages/nvidia/*/lib",
  };
  for (const char* p : patterns) {
    glob_t g{};
    if (glob(p, 0, nullptr, &g) == 0)
      for (size_t i = 0; i < g.gl_pathc; ++i) dirs.push_back(g.gl_pathv[i]);
    globfree(&g);
  }
  return dirs;
}

void* try_open(const std::string& path) { return dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL); }

CublasApi g_api;
std::string g_error;
std::once_flag g_once;

void load() {
  void* h = nullptr;
  std::string where;
  std::vector<std::string> tried;
  if (const char* env = std::getenv("NODESPEED_CUBLAS")) {
    tried.push_back(std::string("NODESPEED_CUBLAS=") + env);
    if ((h = try_open(env))) where = env;
  }
  if (!h) {
    for (const auto& d : candidate_dirs()) {
      tried.push_back(d);
      for (const char* so : kSonames) {
        std::string p = d + "/" + so;
        if ((h = try_open(p))) { where = p; break; }
      }
      if (h) break;
    }
  }
  if (!h) {
    std::string all;
    for (auto& t : tried) all += (all.empty() ? "" : ", ") + t;
    g_error = "cuBLAS not found (looked in " + all + "; set NODESPEED_CUBLAS to libcublas.so)";
    return;
  }
  auto sym = [&](const char* name) -> void* {
    void* s = dlsym(h, name);
    if (!s && g_error.empty()) g_error = std::string("cuBLAS at ") + where + " lacks " + name;
    return s;
  };
  g_api.create = reinterpret_cast<decltype(g_api.create)>(sym("cublasCreate_v2"));
  g_api.destroy = reinterpret_cast<decltype(g_api.destroy)>(sym("cublasDestroy_v2"));
  g_api.set_stream = reinterpret_cast<decltype(g_api.set_stream)>(sym("cublasSetStream_v2"));
  g_api.gemm_ex = reinterpret_cast<decltype(g_api.gemm_ex)>(sym("cublasGemmEx"));
  g_api.path = where;
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
