// The mixture-of-experts layer on the GPU without a host round trip (the plan: moe_plan.h):
// routing (softmax + top-k, one warp a token, bit-identical to common/moe_route.h), the permutation
// of this rank's assignments expert by expert, the grouped expert products (a GEMV over the rows of
// every active expert in one launch for decode, for any weight format; tensor-core tiles for larger
// steps), and the weighted combine, fused with the residual add and the next RMSNorm at tp 1.
#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common/moe_route.h"
#include "cuda/add_norm.h"
#include "cuda/cuda_common.h"
#include "cuda/flash_layout.h"
#include "cuda/mma.h"
#include "cuda/moe.h"
#include "cuda/quant.h"

namespace ns::cuda {
namespace {

using moe::Layout;
constexpr unsigned kFull = 0xffffffffu;

// One token's router on one warp: the arithmetic of ns::moe::route_topk (lane l holds experts
// l, l + 32, ...; the sum over experts in the same lane-then-xor-pairs order), so the picks and
// weights are the CPU backend's bit for bit.
__device__ void route_token(const float* logits, int E, int K, bool norm, int32_t* ids, float* w, int lane) {
  using ns::moe::kPerLane;
  float p[kPerLane];
  float mx = -INFINITY;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int e = lane + 32 * i;
    p[i] = e < E ? logits[e] : -INFINITY;
    mx = fmaxf(mx, p[i]);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, o));
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i)
    if (lane + 32 * i < E) {
      p[i] = ns::moe::route_exp(p[i] - mx);
      s = __fadd_rn(s, p[i]);
    }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s = __fadd_rn(s, __shfl_xor_sync(kFull, s, o));
#pragma unroll
  for (int i = 0; i < kPerLane; ++i)
    if (lane + 32 * i < E) p[i] = __fdiv_rn(p[i], s);
  unsigned taken = 0;
  float picked = 0.f, mine = 0.f;
  for (int j = 0; j < K; ++j) {
    float bv = 0.f;
    int bid = -1;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int e = lane + 32 * i;
      if (e < E && !((taken >> i) & 1u) && ns::moe::ranks_before(p[i], e, bv, bid)) { bv = p[i]; bid = e; }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(kFull, bv, o);
      const int oid = __shfl_xor_sync(kFull, bid, o);
      if (ns::moe::ranks_before(ov, oid, bv, bid)) { bv = ov; bid = oid; }
    }
    if (bid >= 0 && (bid & 31) == lane) taken |= 1u << (bid >> 5);
    if (lane == j) { ids[j] = bid; mine = bv; }
    picked = __fadd_rn(picked, bv);
  }
  if (lane < K) w[lane] = norm ? __fdiv_rn(mine, picked) : mine;
}

__device__ __forceinline__ void route_rows(const MoeRouteArgs& a, int t, int lane) {
  const Layout& L = a.layout;
  route_token(a.logits + (size_t)t * a.ld, a.n_experts, a.top_k, a.norm, a.meta + L.ids + (size_t)t * a.top_k,
              reinterpret_cast<float*>(a.meta + L.w) + (size_t)t * a.top_k, lane);
}

// The permutation, one block (the tokens' picks are in meta already): count each local expert's
// assignments, lay the experts out in id order (moe::build_groups), then give every assignment a
// row of its expert. The order of rows within an expert follows the atomics; no result depends on
// it (every row is computed on its own, and each token sums its experts in id order).
__device__ void permute_block(const MoeRouteArgs& a) {
  __shared__ int cnt[ns::moe::kMaxExperts], off[ns::moe::kMaxExperts], cur[ns::moe::kMaxExperts];
  const Layout& L = a.layout;
  int32_t* meta = a.meta;
  for (int e = threadIdx.x; e < a.local_experts; e += blockDim.x) cnt[e] = cur[e] = 0;
  __syncthreads();
  const int TK = a.T * a.top_k;
  for (int i = threadIdx.x; i < TK; i += blockDim.x) {
    const int e = moe::local_expert(meta[L.ids + i], a.expert_start, a.local_experts, a.slot[i / a.top_k] >= 0);
    if (e >= 0) atomicAdd(&cnt[e], 1);
  }
  __syncthreads();
  if (threadIdx.x == 0) moe::build_groups(cnt, a.local_experts, L, meta, off);
  __syncthreads();
  for (int i = threadIdx.x; i < TK; i += blockDim.x) {
    const int e = moe::local_expert(meta[L.ids + i], a.expert_start, a.local_experts, a.slot[i / a.top_k] >= 0);
    int row = -1;
    if (e >= 0) {
      row = off[e] + atomicAdd(&cur[e], 1);
      meta[L.perm + row] = i / a.top_k;
    }
    meta[L.inv + i] = row;
  }
}

// The same permutation for up to 32 assignments (a decode step's), on one warp with lane i holding
// assignment i: a lane's row is the count of assignments to lower experts plus those to its expert
// on lower lanes, the first lane of each expert lists it; no shared memory, no atomics, no serial
// loop over the experts (permute_block's thread 0 walks all of them). An expert gets at most 32 <=
// kTileM rows here: one tile each.
static_assert(moe::kTileM >= 32, "permute_warp gives each active expert one tile");
__device__ void permute_warp(const MoeRouteArgs& a, int lane) {
  const Layout& L = a.layout;
  int32_t* meta = a.meta;
  const int TK = a.T * a.top_k;
  const int e = lane < TK ? moe::local_expert(meta[L.ids + lane], a.expert_start, a.local_experts, a.slot[lane / a.top_k] >= 0) : -1;
  const unsigned lower_lanes = (1u << lane) - 1u;
  const unsigned same = __match_any_sync(kFull, e);  // lanes with my expert (or, for e < 0, none of this rank's)
  const bool lead = e >= 0 && (same & lower_lanes) == 0;
  const unsigned leads = __ballot_sync(kFull, lead), valid = __ballot_sync(kFull, e >= 0);
  int rows_below = 0, experts_below = 0;  // assignments to, and active experts, below mine
  for (int o = 0; o < 32; ++o) {
    const int eo = __shfl_sync(kFull, e, o);
    const bool below = eo >= 0 && eo < e;
    rows_below += below;
    experts_below += below && ((leads >> o) & 1u);
  }
  const int row = e >= 0 ? rows_below + __popc(same & lower_lanes) : -1;
  if (lane < TK) meta[L.inv + lane] = row;
  if (e >= 0) meta[L.perm + row] = lane / a.top_k;
  if (lead) {
    meta[L.active_e + experts_below] = e;
    meta[L.active_off + experts_below] = rows_below;
    meta[L.active_cnt + experts_below] = __popc(same);
    meta[L.tiles + 2 * experts_below] = experts_below;
    meta[L.tiles + 2 * experts_below + 1] = 0;
  }
  if (lane == 0) {
    meta[L.n_active] = meta[L.n_tiles] = __popc(leads);
    meta[L.n_rows] = __popc(valid);
  }
}

// Route and permute in one block (up to kFusedRouteTokens tokens, a warp each): the warp
// permutation when the step has at most 32 assignments (launched with one warp a token), else the
// block's.
__global__ void __launch_bounds__(moe::kPermuteThreads) route_permute_kernel(MoeRouteArgs a) {
  grid_dependency_wait();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int t = warp; t < a.T; t += blockDim.x / 32) route_rows(a, t, lane);
  __syncthreads();
  if (a.T * a.top_k > 32) permute_block(a);
  else if (warp == 0) permute_warp(a, lane);
}

__global__ void __launch_bounds__(256) route_kernel(MoeRouteArgs a) {
  grid_dependency_wait();
  const int t = blockIdx.x * 8 + (threadIdx.x >> 5);
  if (t < a.T) route_rows(a, t, threadIdx.x & 31);
}

__global__ void __launch_bounds__(moe::kPermuteThreads) permute_kernel(MoeRouteArgs a) {
  grid_dependency_wait();
  permute_block(a);
}

// The gate activation of a gated MLP (family.cu's gated_act).
__device__ __forceinline__ float gate_act(float g, bool gelu) {
  return gelu ? 0.5f * g * (1.f + tanhf(0.7978845608028654f * (g + 0.044715f * g * g * g))) : g / (1.f + __expf(-g));
}

template <typename T>
constexpr DType act_dtype = std::is_same_v<T, __half> ? DType::F16 : DType::BF16;

// The expert weights of a grouped GEMV: the activation dtype T (8 a 16-byte chunk), or int8 / E4M3
// (16 a chunk, one f32 scale per weight row, applied to the row's sum).
template <typename T, DType WT>
struct WeightFmt {
  static constexpr bool kQuant = WT == DType::I8 || WT == DType::F8E4M3;
  static constexpr int kPerChunk = kQuant ? 16 : 8;
  static constexpr int kBytes = kQuant ? 1 : sizeof(T);
  __device__ static void unpack(const uint4& v, float* f) {
    if constexpr (kQuant) unpack16<WT>(v, f);
    else unpack8<T>(v, f);
  }
};

// One chunk (column kPerChunk i) of the gate (and up) row against up to MT input rows.
template <typename T, DType WT, int MT, bool GATED>
__device__ __forceinline__ void gemv_chunk(const uint4& wg, const uint4& wu, const uint4* const (&xr)[MT], int i, int m,
                                           float (&ag)[MT], float (&au)[MT]) {
  using F = WeightFmt<T, WT>;
  constexpr int C = F::kPerChunk;
  float g[C], u[C];
  F::unpack(wg, g);
  if constexpr (GATED) F::unpack(wu, u);
#pragma unroll
  for (int s = 0; s < MT; ++s) {
    if (s >= m) break;
    float x[C];
#pragma unroll
    for (int h = 0; h < C / 8; ++h) unpack8<T>(__ldg(xr[s] + (C / 8) * i + h), x + 8 * h);
#pragma unroll
    for (int e = 0; e < C; ++e) {
      ag[s] += g[e] * x[e];
      if constexpr (GATED) au[s] += u[e] * x[e];
    }
  }
}

// Up to MT rows at a time of one feature: row(s) wg (and wu) of k weights against input rows
// xrow(r) for r in [0, rows), out(r, gate sum, up sum) for each; each lane streams 16-byte chunks,
// kDepth of each weight row in flight, the last pass predicated, chunks added in increasing order.
// (A 1408-wide bf16 expert down row is 5.5 chunks a lane: one pass.)
template <typename T, DType WT, int MT, bool GATED, typename XRow, typename Out>
__device__ __forceinline__ void gemv_feature(const uint4* wg, const uint4* wu, int k, int rows, int lane, XRow xrow, Out out) {
  using F = WeightFmt<T, WT>;
  const int kc = k / F::kPerChunk;
  constexpr int kDepth = (GATED ? 4 : 8) * 8 / F::kPerChunk;
  for (int r0 = 0; r0 < rows; r0 += MT) {
    const int m = min(MT, rows - r0);
    const uint4* xr[MT];
#pragma unroll
    for (int s = 0; s < MT; ++s) xr[s] = reinterpret_cast<const uint4*>(xrow(r0 + min(s, m - 1)));
    float ag[MT], au[MT];
#pragma unroll
    for (int s = 0; s < MT; ++s) ag[s] = au[s] = 0.f;
    for (int i = lane; i < kc; i += 32 * kDepth) {
      uint4 g[kDepth], u[kDepth];
#pragma unroll
      for (int q = 0; q < kDepth; ++q) {
        const int c = i + 32 * q;
        g[q] = c < kc ? __ldg(wg + c) : uint4{};
        u[q] = GATED && c < kc ? __ldg(wu + c) : g[q];
      }
#pragma unroll
      for (int q = 0; q < kDepth; ++q)
        if (i + 32 * q < kc) gemv_chunk<T, WT, MT, GATED>(g[q], u[q], xr, i + 32 * q, m, ag, au);
    }
#pragma unroll
    for (int s = 0; s < MT; ++s) {
      if (s >= m) break;
      const float g = warp_sum(ag[s]);
      const float u = GATED ? warp_sum(au[s]) : 0.f;
      if (lane == s) out(r0 + s, g, u);
    }
  }
}

// Pulls the first 16-byte units of a weight row (`units` of them, the lane's share) into L2.
__device__ __forceinline__ void prefetch_row(const void* row, int row_bytes, int units, int lane) {
  const uint4* w = static_cast<const uint4*>(row);
  for (int i = lane; i < row_bytes / 16 && i < 32 * units; i += 32) asm volatile("prefetch.global.L2 [%0];" ::"l"(w + i));
}

// One warp per output feature of one group (an active expert or the shared expert), passes of up to
// MT rows, the grid of moe_plan.h gemv_work. Down launches (two weight rows a warp: as many loads in
// flight with fewer warps) are held to 3 blocks an SM at 1-2 rows, 2 at 4, so the two rows' loads
// fit without spills; gated ones of one row to 4 (64 registers, as before they could route: the
// routing prelude must not cost the batch-1 launch a block an SM); the others take what they need.
template <int MT, bool GATED>
constexpr int gemv_min_blocks() { return MT > 4 ? 1 : !GATED ? (MT == 4 ? 2 : 3) : MT == 1 ? 4 : 1; }

template <typename T, DType WT, int MT, bool GATED>
__global__ void __launch_bounds__(moe::kGemvWarps * 32, gemv_min_blocks<MT, GATED>()) moe_gemv_kernel(MoeGemvArgs a) {
  using F = WeightFmt<T, WT>;
  using WE = std::conditional_t<F::kQuant, uint8_t, T>;
  constexpr int kWF = GATED ? 1 : 2;  // moe::gemv_warp_features
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const moe::GemvGrid grid = moe::gemv_grid(GATED, a.sw ? a.sn : 0, a.n, a.groups);
  const moe::GemvWork wk = moe::gemv_work(blockIdx.x, warp, grid);
  const Layout& L = a.layout;
  const WE* W;
  const float* S = nullptr;
  const T* X;
  void* Y;
  const int32_t* src = nullptr;
  bool perm_shared = false;  // src in shared memory (the routing done by this block)
  int n, k, row0 = 0, rows = 0;
  bool work = true;
  if (wk.group == moe::kSharedGroup) {
    W = static_cast<const WE*>(a.sw);
    if constexpr (F::kQuant) S = a.s_scale;
    n = a.sn;
    k = a.sk;
    X = static_cast<const T*>(a.sx);
    Y = a.sy;
    rows = a.s_rows;
    // The shared weights do not depend on the previous kernel: start pulling them.
    const int f0 = wk.feature * kWF;
    if (f0 < n) prefetch_row(W + (size_t)f0 * k, min(kWF, n - f0) * k * F::kBytes, 2 * kWF, lane);
    grid_dependency_wait();
  } else {
    if constexpr (!GATED) {
      // The routing is done before this launch starts (the gated launch lets it start only past its
      // own wait for the routing): the active experts are known before this launch's wait, so their
      // rows are pulled into L2 meanwhile. (Only a hint: a stale word would name another valid
      // expert, never a wrong result.)
      const int e = __ldcg(a.meta + L.active_e + wk.group), f0 = wk.feature * kWF;
      if (wk.group < __ldcg(a.meta + L.n_active) && f0 < a.n)
        prefetch_row(static_cast<const WE*>(a.w) + (size_t)e * a.w_stride + (size_t)f0 * a.k, min(kWF, a.n - f0) * a.k * F::kBytes, 1 << 20,
                     lane);
    }
    grid_dependency_wait();
    const int32_t* meta = a.meta;
    Layout Lm = L;
    if constexpr (GATED) {
      if (a.route_in) {
        // The step's routing, here rather than in a route + permute launch (moe_plan.h kRouteWords):
        // this block's copy in shared memory (the same functions as route_permute_kernel, so the
        // same words); the first routed block also writes the layer's metadata, which the down
        // launch and the combine read once this launch has ended.
        __shared__ int32_t route_sm[moe::kRouteWords];
        MoeRouteArgs r = a.route;
        r.meta = route_sm;
        r.layout = moe::layout(r.T, r.top_k, 32);
        const bool writer = (int)blockIdx.x == grid.shared;
        if (warp < r.T) {
          route_rows(r, warp, lane);
          if (writer) route_rows(a.route, warp, lane);
        }
        __syncthreads();
        if (warp == 0) permute_warp(r, lane);
        if (writer && warp == 1) permute_warp(a.route, lane);
        __syncthreads();
        meta = route_sm;
        Lm = r.layout;
        perm_shared = true;
      }
    }
    // All four words at once (the group's slots exist even when it is not active this step): the
    // weights' address waits for one memory latency, not two.
    const int n_active = meta[Lm.n_active], e = meta[Lm.active_e + wk.group];
    row0 = meta[Lm.active_off + wk.group];
    rows = meta[Lm.active_cnt + wk.group];
    work = wk.group < n_active;
    W = static_cast<const WE*>(a.w) + (size_t)e * a.w_stride;
    if constexpr (F::kQuant) S = a.scale + (size_t)e * (GATED ? 2 : 1) * a.n;
    n = a.n;
    k = a.k;
    X = static_cast<const T*>(a.x);
    Y = a.y;
    if constexpr (GATED) src = meta + Lm.perm;
  }
  // Every block of this grid has started: the next kernel may be scheduled (its prefetch overlaps this tail).
  grid_dependents_launch();
  // Gated: row f of the gate and of the up projection; down: rows f and f + 1 (the second a copy
  // of the first past the last feature, its sum not stored). Both stream two rows at once.
  const int f = wk.feature * kWF;
  if (work && f < n) {
    const bool second = GATED || f + 1 < n;
    const int f2 = GATED ? n + f : second ? f + 1 : f;
    const uint4* wg = reinterpret_cast<const uint4*>(W + (size_t)f * k);
    const uint4* wu = reinterpret_cast<const uint4*>(W + (size_t)f2 * k);
    const float sg = S ? S[f] : 1.f, su = S ? S[f2] : 1.f;
    gemv_feature<T, WT, MT, true>(
        wg, wu, k, rows, lane, [&](int r) { return X + (size_t)(src ? (perm_shared ? src[row0 + r] : __ldcg(src + row0 + r)) : row0 + r) * k; },
        [&](int r, float g, float u) {
          const size_t o = (size_t)(row0 + r) * n + f;
          if constexpr (F::kQuant) { g *= sg; u *= su; }
          if constexpr (GATED) {
            static_cast<T*>(Y)[o] = from_f<T>(gate_act(g, a.gelu) * u);
          } else {
            static_cast<float*>(Y)[o] = g;
            if (second) static_cast<float*>(Y)[o + 1] = u;
          }
        });
  }
}

// The grouped tensor-core GEMM (tiling: moe_plan.h; fragment index maps: flash_layout.h) over the
// tiles of the active experts: 64 rows (the X operand, gathered through the permutation for
// gate|up) x 128 features (the expert's weight rows) a block, predicated at the N and K edges.
constexpr int kMmaMT = moe::kTileM / 16;
template <typename T>
constexpr size_t mma_smem_bytes() { return sizeof(T) * moe::kStages * (moe::kTileN + moe::kTileM) * moe::kTileK; }

template <typename T>
__global__ void __launch_bounds__(moe::kMmaThreads) moe_mma_kernel(MoeMmaArgs a) {
  using moe::kStages, moe::kTileK, moe::kTileN;
  constexpr int kThreads = moe::kMmaThreads;
  using flash::swz;
  extern __shared__ __align__(128) unsigned char smem[];
  T* sW = reinterpret_cast<T*>(smem);
  T* sX = sW + kStages * kTileN * kTileK;
  grid_dependency_wait();
  const Layout& L = a.layout;
  const int32_t* meta = a.meta;
  const int tile = blockIdx.x;
  if (tile >= meta[L.n_tiles]) return;
  const int g = meta[L.tiles + 2 * tile], m0 = meta[L.tiles + 2 * tile + 1];
  if (a.by_slot && (g < a.g0 || g >= a.g1)) return;
  const int row0 = meta[L.active_off + g] + m0, M = min(moe::kTileM, meta[L.active_cnt + g] - m0);
  const T* w = static_cast<const T*>(a.w) + (size_t)(a.by_slot ? g - a.g0 : meta[L.active_e + g]) * a.w_stride;
  const T* x = static_cast<const T*>(a.x);
  const int N = a.N, K = a.K, n0 = blockIdx.y * kTileN;
  const int chunks = (K + kTileK - 1) / kTileK;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  constexpr int kXPer = moe::kTileM * 8 / kThreads;
  const T* xsrc[kXPer];
  bool xok[kXPer];
#pragma unroll
  for (int j = 0; j < kXPer; ++j) {
    const int r = (threadIdx.x + j * kThreads) >> 3;
    xok[j] = r < M;
    const int row = row0 + (r < M ? r : 0);
    xsrc[j] = x + (size_t)(a.gather ? meta[L.perm + row] : row) * K;
  }
  auto load = [&](int chunk) {
    T* dw = sW + (chunk % kStages) * kTileN * kTileK;
    T* dx = sX + (chunk % kStages) * moe::kTileM * kTileK;
    const int kc = chunk * kTileK;
#pragma unroll
    for (int j = 0; j < kTileN * 8 / kThreads; ++j) {
      const int idx = threadIdx.x + j * kThreads, r = idx >> 3, c = idx & 7;
      const bool ok = n0 + r < N && kc + c * 8 < K;
      cp_async16(smem_addr(dw + swz<kTileK>(r, c)), ok ? w + (size_t)(n0 + r) * K + kc + c * 8 : w, ok);
    }
#pragma unroll
    for (int j = 0; j < kXPer; ++j) {
      const int idx = threadIdx.x + j * kThreads, r = idx >> 3, c = idx & 7;
      const bool ok = xok[j] && kc + c * 8 < K;
      cp_async16(smem_addr(dx + swz<kTileK>(r, c)), ok ? xsrc[j] + kc + c * 8 : x, ok);
    }
  };
  for (int c = 0; c < kStages - 1; ++c) {
    if (c < chunks) load(c);
    cp_async_commit();
  }
  float acc[kMmaMT][2][4] = {};
  for (int c = 0; c < chunks; ++c) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    if (c + kStages - 1 < chunks) load(c + kStages - 1);
    cp_async_commit();
    const T* cw = sW + (c % kStages) * kTileN * kTileK;
    const T* cx = sX + (c % kStages) * moe::kTileM * kTileK;
#pragma unroll
    for (int ks = 0; ks < kTileK / 16; ++ks) {
      uint32_t b[4];
      ldsm_x4(smem_addr(cw + swz<kTileK>(flash::k_row(warp, lane), flash::k_chunk(ks, lane))), b);
#pragma unroll
      for (int mt = 0; mt < kMmaMT; ++mt) {
        if (mt * 16 >= M) break;  // warp-uniform: the tile's rows past M are zeros
        uint32_t af[4];
        ldsm_x4(smem_addr(cx + swz<kTileK>(flash::q_row(mt, lane), flash::q_chunk(ks, lane))), af);
        mma16816(acc[mt][0], af, b[0], b[1], static_cast<T*>(nullptr));
        mma16816(acc[mt][1], af, b[2], b[3], static_cast<T*>(nullptr));
      }
    }
  }
  cp_async_wait<0>();
#pragma unroll
  for (int mt = 0; mt < kMmaMT; ++mt)
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int row = mt * 16 + flash::c_row(lane, e), col = n0 + warp * 16 + nt * 8 + flash::c_col(lane, e);
        if (row >= M || col >= N) continue;
        const size_t i = (size_t)(row0 + row) * N + col;
        if (a.f32_out) static_cast<float*>(a.y)[i] = acc[mt][nt][e];
        else static_cast<T*>(a.y)[i] = from_f<T>(acc[mt][nt][e]);
      }
}

template <typename T>
__global__ void moe_gated_act_kernel(const T* gu, const int32_t* n_rows, int I, bool gelu, T* out) {
  grid_dependency_wait();
  const size_t n = (size_t)*n_rows * I;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    const size_t r = i / I, j = i % I;
    out[i] = from_f<T>(gate_act(to_f(gu[r * 2 * I + j]), gelu) * to_f(gu[r * 2 * I + I + j]));
  }
}

// One block a token. REGS (H <= kRowPer * blockDim.x, the decode case): the row in registers, the
// expert rows loaded kCombineBatch at a time before any is added, so a 2048-wide row costs a few
// memory latencies (add_norm.h); else per element in turn. Both add a token's experts in id order,
// then the shared expert.
constexpr int kCombineThreads = 512;
constexpr int kCombineBatch = 4;

template <typename T, bool REGS>
__global__ void __launch_bounds__(kCombineThreads) moe_combine_kernel(MoeCombineArgs a) {
  grid_dependency_wait();
  const int t = blockIdx.x;
  const Layout& L = a.layout;
  const int K = a.top_k, H = a.H;
  const float* wts = reinterpret_cast<const float*>(a.meta + L.w) + (size_t)t * K;
  const float gate_logit = a.shared_y ? a.logits[(size_t)t * a.ld + a.n_experts] : 0.f;
  // The token's picks, every word loaded at once (one memory latency, not two per pick).
  int pick_row[ns::moe::kMaxTopK], pick_id[ns::moe::kMaxTopK];
  float pick_w[ns::moe::kMaxTopK];
#pragma unroll
  for (int j = 0; j < ns::moe::kMaxTopK; ++j)
    if (j < K) {
      pick_row[j] = a.meta[L.inv + (size_t)t * K + j];
      pick_id[j] = a.meta[L.ids + (size_t)t * K + j];
      pick_w[j] = wts[j];
    }
  int ids[ns::moe::kMaxTopK], rows[ns::moe::kMaxTopK];
  float ws[ns::moe::kMaxTopK];
  int n = 0;
  for (int j = 0; j < K; ++j) {  // this rank's picks of the token, by expert id
    const int row = pick_row[j];
    if (row < 0) continue;
    const int id = pick_id[j];
    int p = n++;
    for (; p > 0 && ids[p - 1] > id; --p) { ids[p] = ids[p - 1]; rows[p] = rows[p - 1]; ws[p] = ws[p - 1]; }
    ids[p] = id;
    rows[p] = row;
    ws[p] = pick_w[j];
  }
  const float gate = a.shared_y ? 1.f / (1.f + __expf(-gate_logit)) : 0.f;
  const float* sy = a.shared_y ? a.shared_y + (size_t)t * H : nullptr;
  float* out = a.part + (size_t)t * H;
  if constexpr (REGS) {
    float v[kRowPer], sv[kRowPer];
#pragma unroll
    for (int e = 0; e < kRowPer; ++e) {
      const int i = threadIdx.x + e * blockDim.x;
      v[e] = 0.f;
      sv[e] = sy && i < H ? sy[i] : 0.f;
    }
    for (int j0 = 0; j0 < n; j0 += kCombineBatch) {
      float yv[kCombineBatch][kRowPer];
#pragma unroll
      for (int b = 0; b < kCombineBatch; ++b) {
        const float* yr = a.y + (size_t)rows[min(j0 + b, n - 1)] * H;
#pragma unroll
        for (int e = 0; e < kRowPer; ++e) {
          const int i = threadIdx.x + e * blockDim.x;
          yv[b][e] = j0 + b < n && i < H ? yr[i] : 0.f;
        }
      }
#pragma unroll
      for (int b = 0; b < kCombineBatch; ++b)
        if (j0 + b < n)
#pragma unroll
          for (int e = 0; e < kRowPer; ++e) v[e] += ws[j0 + b] * yv[b][e];
    }
#pragma unroll
    for (int e = 0; e < kRowPer; ++e) {
      if (sy) v[e] += gate * sv[e];
      const int i = threadIdx.x + e * blockDim.x;
      if (!a.res && i < H) out[i] = v[e];
    }
    if (a.res)
      add_norm_regs<T>(v, a.res + (size_t)t * H, a.post_w, a.next_w, a.eps, H,
                       a.next_w ? static_cast<T*>(a.xb) + (size_t)t * H : nullptr, a.round_norm);
  } else {
    for (int i = threadIdx.x; i < H; i += blockDim.x) {
      float acc = 0.f;
      for (int j = 0; j < n; ++j) acc += ws[j] * a.y[(size_t)rows[j] * H + i];
      if (sy) acc += gate * sy[i];
      out[i] = acc;
    }
    if (a.res)
      add_norm_row<T>(a.res + (size_t)t * H, out, nullptr, a.post_w, a.next_w, a.eps, H,
                      a.next_w ? static_cast<T*>(a.xb) + (size_t)t * H : nullptr, a.round_norm);
  }
}

unsigned grid_of(size_t n) { return static_cast<unsigned>(std::min<size_t>((n + 255) / 256, 65535)); }

template <typename E, DType WT, bool GATED>
void launch_gemv(const MoeGemvArgs& a, int mt, unsigned grid, cudaStream_t s) {
  const dim3 block(moe::kGemvWarps * 32);
  switch (mt) {
    case 1: launch("moe_gemv", moe_gemv_kernel<E, WT, 1, GATED>, dim3(grid), block, s, a); break;
    case 2: launch("moe_gemv", moe_gemv_kernel<E, WT, 2, GATED>, dim3(grid), block, s, a); break;
    case 4: launch("moe_gemv", moe_gemv_kernel<E, WT, 4, GATED>, dim3(grid), block, s, a); break;
    default: launch("moe_gemv", moe_gemv_kernel<E, WT, moe::kGemvTokens, GATED>, dim3(grid), block, s, a); break;
  }
}

template <typename E, DType WT>
void launch_gemv_gated(const MoeGemvArgs& a, bool gated, int mt, unsigned grid, cudaStream_t s) {
  if (gated) launch_gemv<E, WT, true>(a, mt, grid, s);
  else launch_gemv<E, WT, false>(a, mt, grid, s);
}

}  // namespace

void moe_route(const MoeRouteArgs& a, cudaStream_t s) {
  if (a.T == 0) return;
  if (a.T <= moe::kFusedRouteTokens) {
    const int threads = a.T * a.top_k <= 32 ? 32 * a.T : moe::kPermuteThreads;
    launch("moe_route_permute", route_permute_kernel, dim3(1), dim3(threads), s, a);
  } else {
    launch("moe_route", route_kernel, dim3(ceil_div(a.T, 8)), dim3(256), s, a);
    launch("moe_permute", permute_kernel, dim3(1), dim3(moe::kPermuteThreads), s, a);
  }
  NS_LAUNCHED("moe_route");
}

void moe_gemv(DType act, DType wt, const MoeGemvArgs& a, bool gated, int tokens_per_pass, cudaStream_t s) {
  const unsigned grid = moe::grid_blocks(moe::gemv_grid(gated, a.sw ? a.sn : 0, a.n, a.groups));
  if (grid == 0) return;
  if (a.route_in) {
    const MoeRouteArgs& r = a.route;
    if (!gated || a.groups < 1 || !moe::route_in_gemv(r.T, r.top_k, r.n_experts, r.local_experts) || r.meta != a.meta ||
        moe::layout(r.T, r.top_k, 32).words > moe::kRouteWords)
      throw std::runtime_error("cuda: moe_gemv routes only in a gated launch of a step moe::route_in_gemv takes, into its own metadata");
  }
  const bool quant = wt != act;
  if (quant && (a.k % 16 != 0 || (a.sw && a.sk % 16 != 0))) throw std::runtime_error("cuda: moe_gemv with 1-byte weights needs K % 16 == 0");
  if (quant && wt != DType::I8 && wt != DType::F8E4M3) throw std::runtime_error("cuda: moe_gemv takes int8 or E4M3 weights beside the activation dtype");
  NS_DISPATCH_ACT(act, E, {
    if (!quant) launch_gemv_gated<E, act_dtype<E>>(a, gated, tokens_per_pass, grid, s);
    else if (wt == DType::I8) launch_gemv_gated<E, DType::I8>(a, gated, tokens_per_pass, grid, s);
    else launch_gemv_gated<E, DType::F8E4M3>(a, gated, tokens_per_pass, grid, s);
  });
  NS_LAUNCHED("moe_gemv");
}

void moe_mma(DType act, const MoeMmaArgs& a, cudaStream_t s) {
  if (a.grid_tiles == 0) return;
  NS_DISPATCH_ACT(act, E, {
    // > 48 KB of dynamic shared memory needs the opt-in, once per device (one process may drive several).
    static std::atomic<uint64_t> configured{0};
    int dev = 0;
    check(cudaGetDevice(&dev), "moe_mma: cudaGetDevice");
    const uint64_t bit = 1ull << (dev & 63);
    if (!(configured.load() & bit)) {
      check(cudaFuncSetAttribute(moe_mma_kernel<E>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(mma_smem_bytes<E>())),
            "moe_mma: reserving shared memory");
      configured.fetch_or(bit);
    }
    launch_smem("moe_mma", moe_mma_kernel<E>, dim3(a.grid_tiles, ceil_div(a.N, moe::kTileN)), dim3(moe::kMmaThreads),
                mma_smem_bytes<E>(), s, a);
  });
  NS_LAUNCHED("moe_mma");
}

void moe_gated_act(DType act, const void* gu, const int32_t* meta, const moe::Layout& layout, int max_rows, int I, bool gelu,
                   void* out, cudaStream_t s) {
  const size_t n = (size_t)max_rows * I;
  if (n == 0) return;
  NS_DISPATCH_ACT(act, E, {
    launch("moe_gated_act", moe_gated_act_kernel<E>, dim3(grid_of(n)), dim3(256), s, static_cast<const E*>(gu),
           meta + layout.n_rows, I, gelu, static_cast<E*>(out));
  });
  NS_LAUNCHED("moe_gated_act");
}

void moe_combine(DType act, const MoeCombineArgs& a, cudaStream_t s) {
  if (a.T == 0) return;
  MoeCombineArgs c = a;
  c.round_norm = rounds(kRoundNorm);
  const int threads = row_threads(a.H, kCombineThreads);
  NS_DISPATCH_ACT(act, E, {
    if (threads > 0) launch("moe_combine", moe_combine_kernel<E, true>, dim3(a.T), dim3(threads), s, c);
    else launch("moe_combine", moe_combine_kernel<E, false>, dim3(a.T), dim3(256), s, c);
  });
  NS_LAUNCHED("moe_combine");
}

}  // namespace ns::cuda
