// The plan of the CUDA mixture-of-experts layer (cuda/moe.cu): which path a step takes, how its
// routing metadata is laid out in device memory, how the permutation groups the rows, and which
// (expert, rows, features) each block of the grouped kernels computes. Plain integer functions,
// shared with the host emulation test/flash-emu/moe_emu.cc.
//
// A step of T tokens: the router logits [T, E (+1 for the shared expert's gate)] come from one
// matmul; the route kernel gives each token its top-k (common/moe_route.h, one warp a token); the
// permute kernel counts the assignments to this rank's experts, lays them out expert by expert
// (rows [off_e, off_e + cnt_e) of the expert outputs: the token → expert permutation), lists the
// active experts in id order and the tensor-core tiles, and records each assignment's row (inv).
// Then every active expert runs on its rows in one launch of a grouped kernel (gate|up + activation,
// then down), reading only the active experts' weights, and the combine kernel sums each token's
// rows (its experts in id order, weighted) plus the shared expert. Nothing goes back to the host,
// so the step can be a CUDA graph.
#pragma once

#include "cuda/flash_layout.h"  // NS_FLASH_HD

namespace ns::cuda::moe {

// Grouped GEMV (decode): two weight rows streamed per warp (gemv_warp_features), 8 warps a block,
// up to kGemvTokens rows per pass over the weights (more rows: more passes, the weights then come
// from L1/L2).
constexpr int kGemvWarps = 8;
constexpr int kGemvTokens = 8;
// Steps of up to this many tokens run the shared expert inside the grouped GEMV launches (it is
// then just one more group whose rows are all tokens); larger ones give it to cuBLAS.
constexpr int kSharedInGemvTokens = 8;
// Decode steps of at most 32 assignments and kGemvWarps tokens route inside the gate|up launch
// (route_in_gemv): every routed block routes the step itself (a warp a token) and permutes it (one
// warp) into kRouteWords of shared memory, the launch's first routed block also into the layer's
// metadata for the down launch and the combine. No route + permute launch between the router GEMV
// and the grouped GEMV: the shared expert's blocks start streaming when the router GEMV ends.
constexpr int kRouteWords = 320;
// Grouped tensor-core GEMM (prefill, larger batches): kTileM rows x kTileN features a block (8
// warps of 16 features), K in chunks of kTileK (8 chunks of 16 bytes a row) through a ring of
// kStages cp.async stages.
constexpr int kTileM = 64;
constexpr int kTileN = 128;
constexpr int kTileK = 64;
constexpr int kStages = 4;
constexpr int kMmaThreads = kTileN / 16 * 32;
// The route and permute kernels run in one block of this many threads; up to kFusedRouteTokens
// tokens (one warp each) it also routes them, else a grid of warps routes first. A step of at most
// 32 assignments (decode) gets one warp a token and its permutation on one warp (moe.cu).
constexpr int kPermuteThreads = 1024;
constexpr int kFusedRouteTokens = kPermuteThreads / 32;

NS_FLASH_HD int imin(int a, int b) { return a < b ? a : b; }

// The GEMV path while an expert gets few rows on average (T K / E <= 4): reading the weights is the
// cost and CUDA cores keep up; past that the tensor-core tiles.
NS_FLASH_HD bool use_gemv(int T, int top_k, int n_experts) { return T <= 64 && T * top_k <= 4 * n_experts; }
// The step's routing and permutation happen inside the gate|up GEMV launch (see kRouteWords): the
// GEMV path, one warp a token, one warp's permutation (permute_warp), this rank holding experts.
NS_FLASH_HD bool route_in_gemv(int T, int top_k, int n_experts, int local_experts) {
  return use_gemv(T, top_k, n_experts) && T >= 1 && T <= kGemvWarps && T * top_k <= 32 && local_experts > 0;
}
// Rows the GEMV kernel keeps per pass: the smallest power of two >= T, at most kGemvTokens.
NS_FLASH_HD int gemv_tokens(int T) { return T <= 1 ? 1 : T <= 2 ? 2 : T <= 4 ? 4 : kGemvTokens; }
// Experts of this rank that a step of T tokens can activate.
NS_FLASH_HD int max_active(int T, int top_k, int local_experts) { return imin(local_experts, T * top_k); }
// Tensor-core tiles: every active expert's rows in tiles of kTileM; at most one partial tile each.
NS_FLASH_HD int max_tiles(int T, int top_k, int local_experts) {
  return (T * top_k + kTileM - 1) / kTileM + max_active(T, top_k, local_experts);
}

// The routing metadata of one layer (int32 words; `w` holds floats), laid out for steps of up to
// `cap` tokens so the offsets do not change from step to step (CUDA graphs keep the pointers).
struct Layout {
  int n_active, n_tiles, n_rows;     // counts (one word each)
  int active_e, active_off, active_cnt;  // [local_experts] each: local expert id, first row, rows
  int tiles;                         // [max_tiles][2]: active slot, first row within the expert
  int ids, w;                        // [cap * top_k]: each token's experts (global ids), weights
  int perm;                          // [cap * top_k]: the token of each row
  int inv;                           // [cap * top_k]: each assignment's row, -1 on another rank
  int words;
};

NS_FLASH_HD Layout layout(int cap, int top_k, int local_experts) {
  Layout L{};
  int o = 0;
  L.n_active = o++;
  L.n_tiles = o++;
  L.n_rows = o++;
  L.active_e = o; o += local_experts;
  L.active_off = o; o += local_experts;
  L.active_cnt = o; o += local_experts;
  L.tiles = o; o += 2 * max_tiles(cap, top_k, local_experts);
  const int tk = cap * top_k;
  L.ids = o; o += tk;
  L.w = o; o += tk;
  L.perm = o; o += tk;
  L.inv = o; o += tk;
  L.words = o;
  return L;
}

// What the permute block's first thread does once every assignment is counted (cnt[e] rows for
// local expert e): the active experts in id order with their first rows, the tensor-core tiles,
// the row count, and off[e] (first row of every local expert) for the placement that follows.
NS_FLASH_HD void build_groups(const int* cnt, int local_experts, const Layout& L, int* meta, int* off) {
  int rows = 0, active = 0, tiles = 0;
  for (int e = 0; e < local_experts; ++e) {
    off[e] = rows;
    if (cnt[e] == 0) continue;
    meta[L.active_e + active] = e;
    meta[L.active_off + active] = rows;
    meta[L.active_cnt + active] = cnt[e];
    for (int m0 = 0; m0 < cnt[e]; m0 += kTileM, ++tiles) {
      meta[L.tiles + 2 * tiles] = active;
      meta[L.tiles + 2 * tiles + 1] = m0;
    }
    ++active;
    rows += cnt[e];
  }
  meta[L.n_active] = active;
  meta[L.n_tiles] = tiles;
  meta[L.n_rows] = rows;
}

// The local expert an assignment (token t, pick j: index t * top_k + j) goes to, or -1 (another
// rank's expert, or a padding token of a CUDA-graph step: slot < 0).
NS_FLASH_HD int local_expert(int expert_id, int expert_start, int local_experts, bool token_valid) {
  const int e = expert_id - expert_start;
  return token_valid && e >= 0 && e < local_experts ? e : -1;
}

// Blocks of a grouped GEMV launch, in this order: the shared expert's (its weights are known before
// the previous kernel ends, and its rows are longest), then `per_group` blocks for each of up to
// `groups` active routed experts.
struct GemvGrid {
  int shared, per_group, groups;
};
constexpr int kSharedGroup = -1;
struct GemvWork {
  int group;    // kSharedGroup, else the active slot
  int feature;  // the warp's output feature (GemvWork::feature counts warps: gemv_warp_features)
};
NS_FLASH_HD int gemv_blocks(int features) { return (features + kGemvWarps - 1) / kGemvWarps; }
// Output features a warp computes: a gated launch's warp one (its gate and up rows, streamed
// together), a down launch's two (two rows streamed together: half the blocks, each of which waits
// for the routing words before its first weight load, and twice the bytes per warp for the short
// rows of the routed experts, 1408 wide in Qwen1.5-MoE-A2.7B).
NS_FLASH_HD int gemv_warp_features(bool gated) { return gated ? 1 : 2; }
// The grid of a grouped GEMV launch: the shared expert's features (0: none in the launch), each
// group's features, the groups.
NS_FLASH_HD GemvGrid gemv_grid(bool gated, int shared_features, int features, int groups) {
  const int wf = gemv_warp_features(gated);
  return {gemv_blocks((shared_features + wf - 1) / wf), gemv_blocks((features + wf - 1) / wf), groups};
}
NS_FLASH_HD int grid_blocks(const GemvGrid& g) { return g.shared + g.groups * g.per_group; }
NS_FLASH_HD GemvWork gemv_work(int block, int warp, const GemvGrid& g) {
  if (block < g.shared) return {kSharedGroup, block * kGemvWarps + warp};
  block -= g.shared;
  return {block / g.per_group, (block % g.per_group) * kGemvWarps + warp};
}

}  // namespace ns::cuda::moe
