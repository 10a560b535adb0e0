// The engine's settings: the native half of the settings registry (src/settings/index.ts, where each one
// is documented with its NODESPEED_* variable). The addon gets them as one struct from JS when it is
// loaded (addon.configure, src/native/addon.ts); native code reads no environment variable of its
// own. The defaults here are the registry's, for programs built without the addon (GPU kernel checks).
#pragma once

#include <string>

namespace ns {

struct Settings {
  int threads = 0;                  // NODESPEED_THREADS: CPU backend threads; 0: the cores in the affinity mask
  int compute_nice = 2;             // NODESPEED_COMPUTE_NICE: nice increment of the CPU compute threads
  bool no_avx2 = false;             // NODESPEED_NO_AVX2: portable CPU kernels only
  std::string nccl_path;            // NODESPEED_NCCL: library file to dlopen ('' : search)
  std::string cublas_path;          // NODESPEED_CUBLAS
  std::string cublaslt_path;        // NODESPEED_CUBLASLT
  bool p2p = true;                  // NODESPEED_P2P: one-shot P2P collectives on one host
  bool p2p_norm = true;             // NODESPEED_P2P_NORM: RMSNorm fused into the P2P all-reduce
  double p2p_timeout_s = 60;        // NODESPEED_P2P_TIMEOUT_S
  int cuda_round = 0;               // NODESPEED_CUDA_ROUND: HF rounding sites (RoundSite mask)
  bool cuda_gemv = true;            // NODESPEED_CUDA_GEMV
  bool cuda_graphs = true;          // NODESPEED_CUDA_GRAPHS
  int cuda_graph_max = 256;         // NODESPEED_CUDA_GRAPH_MAX
  bool cuda_flash = true;           // NODESPEED_CUDA_FLASH
  int cuda_flash_decode_min = 0;    // NODESPEED_CUDA_FLASH_DECODE_MIN; 0: decodes never take flash tiles
  int cuda_attn_splits_max = 16;    // NODESPEED_CUDA_ATTN_SPLITS_MAX
  bool cuda_warmup = true;          // NODESPEED_CUDA_WARMUP
  bool cuda_lt = true;              // NODESPEED_CUDA_LT
  long cuda_profile_step = -1;      // NODESPEED_CUDA_PROFILE_STEP; -1: none
};

// A copy of the current settings (safe from any thread). Values that a kernel caches on first use
// (cuda_round, no_avx2, the library paths, cuda_profile_step) take effect only before that use.
Settings settings();
void set_settings(const Settings& s);

}  // namespace ns
