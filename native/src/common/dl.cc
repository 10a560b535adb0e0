#include "common/dl.h"

#include <dlfcn.h>
#include <glob.h>
#include <sys/stat.h>

#include <cstdlib>
#include <sstream>

namespace ns::dl {
namespace {

void add_unique(std::vector<std::string>& v, const std::string& d) {
  if (d.empty()) return;
  for (const auto& x : v)
    if (x == d) return;
  v.push_back(d);
}

void add_glob(std::vector<std::string>& v, const char* pattern) {
  glob_t g{};
  if (glob(pattern, GLOB_ONLYDIR, nullptr, &g) == 0)
    for (size_t i = 0; i < g.gl_pathc; ++i) add_unique(v, g.gl_pathv[i]);
  globfree(&g);
}

bool is_file(const std::string& p) {
  struct stat st{};
  return stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace

std::vector<std::string> search_dirs() {
  std::vector<std::string> dirs;
  if (const char* ld = std::getenv("LD_LIBRARY_PATH")) {
    std::stringstream ss(ld);
    std::string d;
    while (std::getline(ss, d, ':')) add_unique(dirs, d);
  }
  if (const char* home = std::getenv("CUDA_HOME")) add_unique(dirs, std::string(home) + "/lib64");
  add_unique(dirs, "/usr/local/cuda/lib64");
  add_unique(dirs, "/usr/lib/x86_64-linux-gnu");
  // pip wheels (nvidia-nccl-cu12, nvidia-cublas-cu13, ...) put their .so files in nvidia/<pkg>/lib.
  const char* patterns[] = {
      "/opt/torch/.venv/lib/python3*/site-packages/nvidia/*/lib",
      "/usr/local/lib/python3*/site-packages/nvidia/*/lib",
      "/usr/local/lib/python3*/dist-packages/nvidia/*/lib",
      "/usr/lib/python3*/site-packages/nvidia/*/lib",
      "/usr/lib/python3*/dist-packages/nvidia/*/lib",
      "/usr/lib/python3/dist-packages/nvidia/*/lib",
  };
  for (const char* p : patterns) add_glob(dirs, p);
  if (const char* home = std::getenv("HOME")) {
    add_glob(dirs, (std::string(home) + "/.local/lib/python3*/site-packages/nvidia/*/lib").c_str());
  }
  return dirs;
}

Library open_library(const char* what, const char* setting, const std::string& path, const std::vector<std::string>& sonames) {
  Library lib;
  if (!path.empty()) {
    lib.handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib.handle) {
      lib.path = path;
      return lib;
    }
    const char* why = dlerror();
    lib.error = std::string(what) + " not loaded: " + setting + "=" + path + " cannot be opened (" +
                (why ? why : "unknown error") + ")";
    return lib;
  }
  std::string looked, failures;
  for (const auto& dir : search_dirs()) {
    looked += (looked.empty() ? "" : ", ") + dir;
    for (const auto& so : sonames) {
      std::string p = dir + "/" + so;
      if (!is_file(p)) continue;
      lib.handle = dlopen(p.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (lib.handle) {
        lib.path = p;
        return lib;
      }
      const char* why = dlerror();
      failures += "; " + p + ": " + (why ? why : "dlopen failed");
    }
  }
  std::string names;
  for (const auto& so : sonames) names += (names.empty() ? "" : "/") + so;
  lib.error = std::string(what) + " not found (" + names + " in " + looked + failures + "; set " +
              setting + " to the library file)";
  return lib;
}

void* symbol(void* handle, const char* name) { return handle ? dlsym(handle, name) : nullptr; }

}  // namespace ns::dl
