// Launchers of the mixture-of-experts kernels (moe.cu; the plan and metadata layout: moe_plan.h).
// `act` is the activation/weight dtype; pointers are device memory; enqueued on `s`, no host wait.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuda/moe_plan.h"
#include "engine.h"

namespace ns::cuda {

// Top-k of every token (common/moe_route.h) and the permutation of this rank's assignments into
// `meta` (moe_plan.h Layout). Tokens whose slot < 0 (a CUDA-graph step's padding) are not placed.
struct MoeRouteArgs {
  const float* logits; int ld;   // [T, ld] router logits (ld: num_experts, + 1 with a shared expert's gate)
  int T, n_experts, top_k;
  bool norm;                     // renormalise the top-k weights
  int expert_start, local_experts;
  const int32_t* slot;
  int32_t* meta; moe::Layout layout;
};
void moe_route(const MoeRouteArgs& a, cudaStream_t s);

// Per token: the sum of its experts' rows (in expert id order) times their weights, plus the shared
// expert's row times sigmoid(its gate logit, column n_experts of the router logits); into `part`,
// or with `res` added to the residual stream at once (add_norm semantics, family_kernels.h; `part`
// is then scratch).
struct MoeCombineArgs {
  const float* y;                  // [rows, H] the experts' outputs (permuted rows)
  const float* shared_y;           // [T, H] or null
  const float* logits; int ld; int n_experts;
  int T, H, top_k;
  const int32_t* meta; moe::Layout layout;
  float* part;
  float* res; const float* post_w; const float* next_w; float eps; void* xb;  // res null: part only
  bool round_norm = false;         // set by the launchers (kRoundNorm)
};
void moe_combine(DType act, const MoeCombineArgs& a, cudaStream_t s);

// Grouped GEMV over the active experts (and the shared expert when `sw` is set): gated, the
// gate|up weights [2n, k] give act(gate) * up rows of n (activation dtype); else down [n, k] gives
// f32 rows of n. Routed rows: gated reads x rows via the permutation (token rows of [T, k]) and
// writes y rows in permuted order; down reads and writes permuted rows. Weights `wt`: the activation
// dtype, or int8 / E4M3 (weight-only) with one f32 scale per weight row: `scale` holds every local
// expert's back to back ([n_local][2n] gated, [n_local][n] down), `s_scale` the shared expert's.
struct MoeGemvArgs {
  const void* w; size_t w_stride;  // this rank's experts back to back, elements per expert
  int n, k;
  const void* x; void* y;
  int groups;                      // active experts the grid covers (moe::max_active)
  const void* sw; int sn, sk;      // the shared expert (null: none in this launch)
  const void* sx; void* sy; int s_rows;
  const int32_t* meta; moe::Layout layout;
  bool gelu;                       // gated: tanh GELU, else SiLU
  const float* scale = nullptr;
  const float* s_scale = nullptr;
  // Gated launches of a step moe::route_in_gemv takes: the routing moe_route would do (its meta and
  // layout those above), done by the launch's routed blocks instead (moe_route is then not called).
  bool route_in = false;
  MoeRouteArgs route{};
};
void moe_gemv(DType act, DType wt, const MoeGemvArgs& a, bool gated, int tokens_per_pass, cudaStream_t s);

// Grouped tensor-core GEMM over the tiles of moe_plan.h: y[row, n] = x[src(row)] . w_e[n]^T for
// every row of every active expert e, src = the permutation (gather) or the row itself.
// by_slot: the weights of active slots [g0, g1) only, back to back in slot order (the quantized
// experts' dequantized slices, moe_dequant_active); tiles of other slots are left to other launches.
struct MoeMmaArgs {
  const void* x; bool gather;
  const void* w; size_t w_stride;
  int N, K;
  void* y; bool f32_out;
  int grid_tiles;                  // moe::max_tiles of the step
  const int32_t* meta; moe::Layout layout;
  bool by_slot = false;
  int g0 = 0, g1 = 0;
};
void moe_mma(DType act, const MoeMmaArgs& a, cudaStream_t s);

// Quantized routed experts (moe_quant.cu; int8 or E4M3 weights `q` with one f32 scale per weight
// row) for the tensor-core path: the weights [N, K] of active slots [g0, g1) (their expert ids from
// meta) times their row scales into `out` ([g1 - g0][N, K], activation dtype), for moe_mma's by_slot
// launches. (Decode reads them in moe_gemv.)
void moe_dequant_active(DType act, DType wt, const void* q, const float* scale, size_t stride, int N, int K, const int32_t* meta,
                        const moe::Layout& layout, int g0, int g1, void* out, cudaStream_t s);

// out[r, i] = act(gu[r, i]) * gu[r, I + i] for the step's rows (meta's n_rows, at most max_rows).
void moe_gated_act(DType act, const void* gu, const int32_t* meta, const moe::Layout& layout, int max_rows, int I,
                   bool gelu, void* out, cudaStream_t s);

}  // namespace ns::cuda
