// Run-time loading of the NVIDIA libraries we never link at build time (NCCL, cuBLAS, cuBLASLt):
// a machine without them still loads the addon, and the error says where we looked. The search
// follows the dynamic loader's own environment (LD_LIBRARY_PATH, CUDA_HOME, HOME): this is the one
// native file that reads environment variables; nodespeed's own settings come from common/settings.h.
#pragma once

#include <string>
#include <vector>

namespace ns::dl {

// Directories searched, in order: each LD_LIBRARY_PATH entry, $CUDA_HOME/lib64,
// /usr/local/cuda/lib64, /usr/lib/x86_64-linux-gnu, then the nvidia/*/lib folders of Python
// wheels (system dist-packages, /usr/local site/dist-packages, the torch venv /opt/torch/.venv).
std::vector<std::string> search_dirs();

struct Library {
  void* handle = nullptr;  // dlopen handle, nullptr when not found
  std::string path;        // the file that was opened
  std::string error;       // when handle is nullptr: what was tried and why it failed
};

// Opens the first of `sonames` (e.g. {"libnccl.so.2"}) found. `path` (the user's choice, e.g. the
// NODESPEED_NCCL setting, named by `setting` in messages), when not empty, is an exact file tried
// first; if it cannot be opened that is an error (we do not silently fall back to another copy than
// the one the user asked for). `what` names the library in messages ("NCCL"). Thread-safe; opens
// with RTLD_NOW | RTLD_LOCAL.
Library open_library(const char* what, const char* setting, const std::string& path, const std::vector<std::string>& sonames);

// dlsym that returns nullptr when missing (callers name the symbol in their own error).
void* symbol(void* handle, const char* name);

}  // namespace ns::dl
