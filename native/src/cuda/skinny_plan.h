// Tiling and split-K plan of the skinny decode GEMM (skinny_gemm.cu): plain integer functions,
// shared with the host emulation test/flash-emu/skinny_emu.cc.
#pragma once

#include "cuda/flash_layout.h"  // NS_FLASH_HD

namespace ns::cuda::skinny {

constexpr int kTileN = 128;  // output features per block (16 per warp)
constexpr int kTileK = 64;   // K per pipeline stage (8 chunks of 16 bytes a row)
constexpr int kStages = 4;
constexpr int kWarps = kTileN / 16;
constexpr int kThreads = kWarps * 32;
constexpr int kMaxM = 64;

struct Plan {
  int splits;       // K slices (gridDim.y)
  int k_per_split;  // multiple of kTileK; the last slice may be shorter or empty
};

// Split K until the blocks fill the GPU twice over, keeping >= 4 chunks a slice (N % kTileN == 0,
// K % kTileK == 0).
NS_FLASH_HD Plan plan(int N, int K, int sm_count) {
  const int blocks = N / kTileN, chunks = K / kTileK;
  int splits = 1;
  while (blocks * splits < 2 * sm_count && chunks / (2 * splits) >= 4 && splits < 16) splits *= 2;
  const int k_per_split = (chunks + splits - 1) / splits * kTileK;
  return {(K + k_per_split - 1) / k_per_split, k_per_split};
}

}  // namespace ns::cuda::skinny
