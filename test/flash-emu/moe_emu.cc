// Host emulation of the CUDA mixture-of-experts layer (native/src/cuda/moe.cu) for machines without
// a GPU, run with the kernels' own plan (cuda/moe_plan.h: layout, build_groups, local_expert,
// gemv_work, the path choice) and router arithmetic (common/moe_route.h):
//  - route: the one-warp-a-token router, lane by lane with its shuffles (xor butterflies), must give
//    route_topk's ids and weights bit for bit (the CPU backend's), and agree with a double-precision
//    softmax + top-k away from near-ties;
//  - permute: the one-block permutation with its atomics taken in a random thread order (several
//    orders), and the one-warp permutation of steps with at most 32 assignments, padding tokens and
//    experts of other ranks: every local assignment gets exactly one row of its expert, rows grouped
//    expert by expert in id order, tiles covering each expert's rows;
//  - the grouped GEMV: every (group, feature) of the grid covered once, the lanes' 16-byte chunks
//    and passes of up to MT rows, against double-precision products;
//  - the grouped tensor-core GEMM: each tile's block lane by lane (cp.async ring applied at issue or
//    only at the waits, ldmatrix, mma.sync from ptx_emu.h), predicated N and K edges, gathered rows;
//  - the combine: each token's experts in id order plus the shared expert;
// and a whole layer (shared expert included, tp 1 and one rank of tp 2) through either path against
// a double-precision mixture of experts with the same routing.
// usage: g++ -O2 -std=c++17 -Inative/src test/flash-emu/moe_emu.cc -o /tmp/moe_emu && /tmp/moe_emu
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include "common/moe_route.h"
#include "cuda/flash_layout.h"
#include "cuda/moe_plan.h"
#include "ptx_emu.h"

using namespace ns::cuda;
namespace mr = ns::moe;

static bool g_ok = true;
static void expect(bool cond, const char* what, int a = 0, int b = 0) {
  if (cond) return;
  if (g_ok) std::printf("FAIL %s (%d, %d)\n", what, a, b);
  g_ok = false;
}

static uint32_t bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

// ---------------------------------------------------------------------------------------------
// route_token (moe.cu), lane by lane: per-lane registers, shuffles as whole-warp exchanges.
static void route_token_emu(const float* logits, int E, int K, bool norm, int* ids, float* w) {
  using mr::kPerLane;
  float p[32][kPerLane], mx[32];
  for (int l = 0; l < 32; ++l) {
    mx[l] = -INFINITY;
    for (int i = 0; i < kPerLane; ++i) {
      const int e = l + 32 * i;
      p[l][i] = e < E ? logits[e] : -INFINITY;
      mx[l] = fmaxf(mx[l], p[l][i]);
    }
  }
  auto xor_all = [](float* v, auto op) {
    for (int o = 16; o > 0; o >>= 1) {
      float nv[32];
      for (int l = 0; l < 32; ++l) nv[l] = op(v[l], v[l ^ o]);
      std::memcpy(v, nv, sizeof(nv));
    }
  };
  xor_all(mx, [](float a, float b) { return fmaxf(a, b); });
  float s[32];
  for (int l = 0; l < 32; ++l) {
    s[l] = 0.f;
    for (int i = 0; i < kPerLane; ++i)
      if (l + 32 * i < E) {
        p[l][i] = mr::route_exp(p[l][i] - mx[l]);
        s[l] = s[l] + p[l][i];
      }
  }
  xor_all(s, [](float a, float b) { return a + b; });
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < kPerLane; ++i)
      if (l + 32 * i < E) p[l][i] = p[l][i] / s[l];
  unsigned taken[32] = {};
  float picked[32] = {}, mine[32] = {};
  int out_ids[32];
  for (int j = 0; j < K; ++j) {
    float bv[32];
    int bid[32];
    for (int l = 0; l < 32; ++l) {
      bv[l] = 0.f;
      bid[l] = -1;
      for (int i = 0; i < kPerLane; ++i) {
        const int e = l + 32 * i;
        if (e < E && !((taken[l] >> i) & 1u) && mr::ranks_before(p[l][i], e, bv[l], bid[l])) { bv[l] = p[l][i]; bid[l] = e; }
      }
    }
    for (int o = 16; o > 0; o >>= 1) {
      float nv[32];
      int ni[32];
      for (int l = 0; l < 32; ++l) {
        nv[l] = bv[l];
        ni[l] = bid[l];
        if (mr::ranks_before(bv[l ^ o], bid[l ^ o], bv[l], bid[l])) { nv[l] = bv[l ^ o]; ni[l] = bid[l ^ o]; }
      }
      std::memcpy(bv, nv, sizeof(nv));
      std::memcpy(bid, ni, sizeof(ni));
    }
    for (int l = 0; l < 32; ++l) {
      expect(bv[l] == bv[0] && bid[l] == bid[0], "route: lanes disagree on a pick", j, l);
      if (bid[l] >= 0 && (bid[l] & 31) == l) taken[l] |= 1u << (bid[l] >> 5);
      if (l == j) { out_ids[j] = bid[l]; mine[l] = bv[l]; }
      picked[l] = picked[l] + bv[l];
    }
  }
  for (int l = 0; l < K; ++l) {
    ids[l] = out_ids[l];
    w[l] = norm ? mine[l] / picked[l] : mine[l];
  }
}

static void check_routing(std::mt19937& rng) {
  int cases = 0, exact_double = 0;
  for (int E : {2, 4, 8, 33, 60, 64, 128, 200, 256})
    for (int K : {1, 2, 4, 8})
      for (int norm = 0; norm < 2; ++norm)
        for (int rep = 0; rep < 40; ++rep) {
          if (K > E) continue;
          std::normal_distribution<float> nd(0.f, rep % 4 == 0 ? 8.f : 1.f);
          std::vector<float> logits(E);
          for (auto& v : logits) v = nd(rng);
          if (rep % 5 == 1)  // ties, in values the softmax keeps equal
            for (int e = 0; e < E; e += 3) logits[e] = logits[0];
          if (rep % 7 == 2) logits[E - 1] = logits[0] + 120.f;  // most probabilities below e^-86
          std::vector<float> a = logits, w1(K), w2(K);
          std::vector<int> i1(K), i2(K);
          mr::route_topk(a.data(), E, K, norm, w1.data(), i1.data());
          route_token_emu(logits.data(), E, K, norm, i2.data(), w2.data());
          for (int j = 0; j < K; ++j) {
            expect(i1[j] == i2[j], "route: warp ids differ from route_topk", E, j);
            expect(bits(w1[j]) == bits(w2[j]), "route: warp weights differ from route_topk in bits", E, j);
          }
          // Against double precision: same ids unless two probabilities are within 1e-6.
          std::vector<double> pd(E);
          double mx = -INFINITY, sum = 0;
          for (float v : logits) mx = std::max(mx, (double)v);
          for (int e = 0; e < E; ++e) sum += (pd[e] = std::exp((double)logits[e] - mx));
          for (auto& v : pd) v /= sum;
          std::vector<int> order(E);
          std::iota(order.begin(), order.end(), 0);
          std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return pd[x] > pd[y]; });
          bool near_tie = false;
          for (int j = 0; j < K && j + 1 < E; ++j) near_tie |= std::fabs(pd[order[j]] - pd[order[j + 1]]) < 1e-6 * pd[order[j]] + 1e-30;
          double picked = 0, far = 0;
          for (int j = 0; j < K; ++j) {
            picked += pd[order[j]];
            far = std::max(far, mx - logits[order[j]]);
          }
          bool same = true;
          for (int j = 0; j < K; ++j) {
            same &= i1[j] == order[j];
            const double ref = norm ? pd[order[j]] / picked : pd[order[j]];
            // f32 rounds logit - max to 2^-24 of itself, and e^x turns that into a relative error of
            // |x| 2^-24 (torch's f32 softmax alike); a few ulps more for route_exp, the sum and the divisions.
            const double rel = 1e-6 + (norm ? 2 : 1) * far * 6.0e-8;
            if (i1[j] == order[j] && !(std::fabs(w1[j] - ref) <= rel * std::max(ref, 1e-30) + 1e-37)) {
              std::printf("w %.9g ref %.9g rep %d norm %d K %d\n", w1[j], ref, rep, norm, K);
              expect(false, "route: weight vs double", E, j);
            }
          }
          expect(same || near_tie, "route: ids vs double-precision top-k", E, K);
          exact_double += same;
          ++cases;
        }
  std::printf("route: %d tokens, warp = route_topk bit for bit, %d with the double-precision ids\n", cases, exact_double);
}

// ---------------------------------------------------------------------------------------------
// permute_block (moe.cu): counts, build_groups by thread 0, placement; `order` is the order in
// which the block's threads reach their atomics. Steps of at most 32 assignments take
// permute_warp instead (lane i: assignment i; match_any, ballots and shuffles as loops over lanes).
struct Routing {
  int T, K, E, start, local;
  std::vector<int> ids, slot;
  std::vector<float> w;
};

static void permute_warp_emu(const Routing& r, const moe::Layout& L, std::vector<int>& meta) {
  const int TK = r.T * r.K;
  int e[32];
  for (int l = 0; l < 32; ++l) e[l] = l < TK ? moe::local_expert(meta[L.ids + l], r.start, r.local, r.slot[l / r.K] >= 0) : -1;
  unsigned same[32] = {}, leads = 0, valid = 0;
  for (int l = 0; l < 32; ++l)
    for (int o = 0; o < 32; ++o) same[l] |= (e[o] == e[l] ? 1u : 0u) << o;  // __match_any_sync
  for (int l = 0; l < 32; ++l) {
    const unsigned lower = (1u << l) - 1u;
    leads |= (e[l] >= 0 && (same[l] & lower) == 0 ? 1u : 0u) << l;  // __ballot_sync
    valid |= (e[l] >= 0 ? 1u : 0u) << l;
  }
  for (int l = 0; l < 32; ++l) {
    const unsigned lower = (1u << l) - 1u;
    int rows_below = 0, experts_below = 0;
    for (int o = 0; o < 32; ++o) {  // __shfl_sync from every lane
      const bool below = e[o] >= 0 && e[o] < e[l];
      rows_below += below;
      experts_below += below && ((leads >> o) & 1u);
    }
    const int row = e[l] >= 0 ? rows_below + __builtin_popcount(same[l] & lower) : -1;
    if (l < TK) meta[L.inv + l] = row;
    if (e[l] >= 0) meta[L.perm + row] = l / r.K;
    if ((leads >> l) & 1u) {
      meta[L.active_e + experts_below] = e[l];
      meta[L.active_off + experts_below] = rows_below;
      meta[L.active_cnt + experts_below] = __builtin_popcount(same[l]);
      meta[L.tiles + 2 * experts_below] = experts_below;
      meta[L.tiles + 2 * experts_below + 1] = 0;
    }
  }
  meta[L.n_active] = meta[L.n_tiles] = __builtin_popcount(leads);
  meta[L.n_rows] = __builtin_popcount(valid);
}

static std::vector<int> permute_emu(const Routing& r, const moe::Layout& L, std::mt19937& rng) {
  std::vector<int> meta(L.words, -7777);
  const int TK = r.T * r.K;
  for (int i = 0; i < TK; ++i) {
    meta[L.ids + i] = r.ids[i];
    std::memcpy(&meta[L.w + i], &r.w[i], 4);
  }
  if (TK <= 32) {
    permute_warp_emu(r, L, meta);
    return meta;
  }
  std::vector<int> cnt(mr::kMaxExperts, 0), off(mr::kMaxExperts, 0), cur(mr::kMaxExperts, 0);
  std::vector<int> order(TK);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  for (int i : order) {
    const int e = moe::local_expert(meta[L.ids + i], r.start, r.local, r.slot[i / r.K] >= 0);
    if (e >= 0) ++cnt[e];
  }
  moe::build_groups(cnt.data(), r.local, L, meta.data(), off.data());
  std::shuffle(order.begin(), order.end(), rng);
  for (int i : order) {
    const int e = moe::local_expert(meta[L.ids + i], r.start, r.local, r.slot[i / r.K] >= 0);
    int row = -1;
    if (e >= 0) {
      row = off[e] + cur[e]++;
      meta[L.perm + row] = i / r.K;
    }
    meta[L.inv + i] = row;
  }
  return meta;
}

static void check_permutation(const Routing& r, const moe::Layout& L, const std::vector<int>& meta) {
  const int TK = r.T * r.K;
  std::vector<int> rows_of(r.local, 0);
  std::vector<char> row_used(TK, 0);
  int n_local = 0;
  for (int i = 0; i < TK; ++i) {
    const int e = moe::local_expert(r.ids[i], r.start, r.local, r.slot[i / r.K] >= 0);
    const int row = meta[L.inv + i];
    if (e < 0) { expect(row == -1, "permute: a foreign or padding assignment got a row", i); continue; }
    ++n_local;
    ++rows_of[e];
    expect(row >= 0 && row < TK && !row_used[row], "permute: row out of range or given twice", i, row);
    if (row < 0 || row >= TK) continue;
    row_used[row] = 1;
    expect(meta[L.perm + row] == i / r.K, "permute: perm does not name the assignment's token", row);
  }
  expect(meta[L.n_rows] == n_local, "permute: n_rows", meta[L.n_rows], n_local);
  // Active experts in id order, contiguous rows, each assignment inside its expert's rows.
  int next = 0, last = -1, tiles = 0;
  for (int a = 0; a < meta[L.n_active]; ++a) {
    const int e = meta[L.active_e + a], o = meta[L.active_off + a], c = meta[L.active_cnt + a];
    expect(e > last && c == rows_of[e] && c > 0 && o == next, "permute: active list", a, e);
    last = e;
    next += c;
    for (int m0 = 0; m0 < c; m0 += moe::kTileM, ++tiles)
      expect(meta[L.tiles + 2 * tiles] == a && meta[L.tiles + 2 * tiles + 1] == m0, "permute: tile list", tiles);
  }
  for (int e = 0; e < r.local; ++e) {
    bool listed = false;
    for (int a = 0; a < meta[L.n_active]; ++a) listed |= meta[L.active_e + a] == e;
    expect(listed == (rows_of[e] > 0), "permute: an expert with rows is not listed (or one without is)", e);
  }
  expect(meta[L.n_tiles] == tiles && tiles <= moe::max_tiles(r.T, r.K, r.local), "permute: tile count", tiles);
  expect(meta[L.n_active] <= moe::max_active(r.T, r.K, r.local), "permute: more active experts than the grid covers");
  for (int i = 0; i < TK; ++i) {
    const int row = meta[L.inv + i];
    if (row < 0) continue;
    const int e = r.ids[i] - r.start;
    int a = 0;
    while (a < meta[L.n_active] && meta[L.active_e + a] != e) ++a;
    expect(a < meta[L.n_active] && row >= meta[L.active_off + a] && row < meta[L.active_off + a] + meta[L.active_cnt + a],
           "permute: row outside its expert's rows", i, row);
  }
}

// ---------------------------------------------------------------------------------------------
// Weights and activations of one rank's experts, bf16, and the kernels' outputs.
struct Experts {
  int H, I, Is, local;
  std::vector<bf16> gate_up, down;      // [local][2I][H], [local][H][I]
  std::vector<bf16> sh_gate_up, sh_down;  // [2Is][H], [H][Is]
};

static float act_silu(float g) { return g / (1.f + std::exp(-g)); }

// moe_gemv_kernel<T, MT, GATED> for the whole grid, warp by warp, lane chunks as the kernel takes them.
template <int MT, bool GATED>
static void gemv_emu(const Experts& X, const std::vector<int>& meta, const moe::Layout& L, int groups, bool with_shared,
                     int T, const std::vector<bf16>& xin, const std::vector<bf16>& sxin, std::vector<float>& y,
                     std::vector<float>& sy, std::vector<int>& covered, std::vector<int>& s_covered) {
  const int n = GATED ? X.I : X.H, k = GATED ? X.H : X.I;
  const int sn = GATED ? X.Is : X.H, sk = GATED ? X.H : X.Is;
  const moe::GemvGrid gg = moe::gemv_grid(GATED, with_shared ? sn : 0, n, groups);
  const int grid = moe::grid_blocks(gg), wf = moe::gemv_warp_features(GATED);
  for (int b = 0; b < grid; ++b)
    for (int warp = 0; warp < moe::kGemvWarps; ++warp) {
      const moe::GemvWork wk = moe::gemv_work(b, warp, gg);
      const bf16* W;
      const std::vector<bf16>* Xv;
      int nn, kk, row0, rows;
      const int* src = nullptr;
      std::vector<float>* Y;
      if (wk.group < 0) {
        W = GATED ? X.sh_gate_up.data() : X.sh_down.data(); nn = sn; kk = sk; Xv = &sxin; Y = &sy; row0 = 0; rows = T;
      } else {
        if (wk.group >= meta[L.n_active]) continue;
        const int e = meta[L.active_e + wk.group];
        W = GATED ? X.gate_up.data() + (size_t)e * 2 * X.I * X.H : X.down.data() + (size_t)e * X.H * X.I;
        nn = n; kk = k; Xv = &xin; Y = &y;
        row0 = meta[L.active_off + wk.group];
        rows = meta[L.active_cnt + wk.group];
        if (GATED) src = &meta[L.perm];
      }
      for (int f = wk.feature * wf; f < std::min(nn, (wk.feature + 1) * wf); ++f) {  // the warp's features, each summed alike
        (wk.group < 0 ? s_covered : covered)[(wk.group < 0 ? 0 : meta[L.active_e + wk.group] * nn) + f]++;
        const int k8 = kk / 8;
        for (int r0 = 0; r0 < rows; r0 += MT) {
          const int m = std::min(MT, rows - r0);
          float ag[32][MT] = {}, au[32][MT] = {};
          for (int lane = 0; lane < 32; ++lane)
            for (int i = lane; i < k8; i += 32)
              for (int s = 0; s < m; ++s) {
                const int row = row0 + r0 + s, xrow = src ? src[row] : row;
                for (int e = 0; e < 8; ++e) {
                  const float xv = bf2f((*Xv)[(size_t)xrow * kk + i * 8 + e]);
                  ag[lane][s] += bf2f(W[(size_t)f * kk + i * 8 + e]) * xv;
                  if (GATED) au[lane][s] += bf2f(W[(size_t)(nn + f) * kk + i * 8 + e]) * xv;
                }
              }
          for (int s = 0; s < m; ++s) {
            float g = 0, u = 0;
            for (int lane = 0; lane < 32; ++lane) { g += ag[lane][s]; u += au[lane][s]; }
            (*Y)[(size_t)(row0 + r0 + s) * nn + f] = GATED ? bf2f(f2bf(act_silu(g) * u)) : g;
          }
        }
      }
    }
}

// moe_mma_kernel for one tile block (tile, by), lane by lane; y is [rows][N] (bf16 rounded or f32).
static void mma_block_emu(const std::vector<bf16>& x, bool gather, const bf16* wbase, size_t w_stride, int N, int K,
                          std::vector<float>& y, bool f32_out, const std::vector<int>& meta, const moe::Layout& L, int tile,
                          int by, bool eager) {
  using moe::kStages, moe::kTileK, moe::kTileN;
  constexpr int kThreads = moe::kMmaThreads, kWarps = kThreads / 32;
  using flash::swz;
  constexpr int MT = moe::kTileM / 16;
  if (tile >= meta[L.n_tiles]) return;
  const int g = meta[L.tiles + 2 * tile], m0 = meta[L.tiles + 2 * tile + 1];
  const int row0 = meta[L.active_off + g] + m0, M = std::min(moe::kTileM, meta[L.active_cnt + g] - m0);
  const bf16* w = wbase + (size_t)meta[L.active_e + g] * w_stride;
  const int n0 = by * kTileN, chunks = (K + kTileK - 1) / kTileK;
  std::vector<bf16> sW(kStages * kTileN * kTileK, 0xffff), sX(kStages * moe::kTileM * kTileK, 0xffff);
  AsyncCopies cp{eager, {}, {}};
  constexpr int kXPer = moe::kTileM * 8 / kThreads;
  auto load = [&](int chunk) {
    const int kc = chunk * kTileK;
    for (int tid = 0; tid < kThreads; ++tid) {
      for (int j = 0; j < kTileN * 8 / kThreads; ++j) {
        const int idx = tid + j * kThreads, r = idx >> 3, c = idx & 7;
        const bool ok = n0 + r < N && kc + c * 8 < K;
        cp.copy(sW, (chunk % kStages) * kTileN * kTileK + swz<kTileK>(r, c), ok ? w + (size_t)(n0 + r) * K + kc + c * 8 : w, ok);
      }
      for (int j = 0; j < kXPer; ++j) {
        const int idx = tid + j * kThreads, r = idx >> 3, c = idx & 7;
        const bool rok = r < M;
        const int row = row0 + (rok ? r : 0);
        const bf16* src = x.data() + (size_t)(gather ? meta[L.perm + row] : row) * K;
        const bool ok = rok && kc + c * 8 < K;
        cp.copy(sX, (chunk % kStages) * moe::kTileM * kTileK + swz<kTileK>(r, c), ok ? src + kc + c * 8 : x.data(), ok);
      }
    }
  };
  for (int c = 0; c < kStages - 1; ++c) {
    if (c < chunks) load(c);
    cp.commit();
  }
  std::vector<float> acc((size_t)kWarps * MT * 2 * 32 * 4, 0.f);
  auto A = [&](int warp, int mt, int nt) { return reinterpret_cast<float(*)[4]>(&acc[(((size_t)warp * MT + mt) * 2 + nt) * 128]); };
  for (int c = 0; c < chunks; ++c) {
    cp.wait(kStages - 2);
    if (c + kStages - 1 < chunks) load(c + kStages - 1);
    cp.commit();
    const int wb = (c % kStages) * kTileN * kTileK, xb = (c % kStages) * moe::kTileM * kTileK;
    for (int warp = 0; warp < kWarps; ++warp)
      for (int ks = 0; ks < kTileK / 16; ++ks) {
        int addr[32];
        uint32_t b[32][4], b01[32][2], b23[32][2];
        for (int l = 0; l < 32; ++l) addr[l] = wb + swz<kTileK>(flash::k_row(warp, l), flash::k_chunk(ks, l));
        ldmatrix_x4(sW, addr, b, false);
        for (int l = 0; l < 32; ++l) { b01[l][0] = b[l][0]; b01[l][1] = b[l][1]; b23[l][0] = b[l][2]; b23[l][1] = b[l][3]; }
        for (int mt = 0; mt < MT; ++mt) {
          if (mt * 16 >= M) break;
          uint32_t a[32][4];
          for (int l = 0; l < 32; ++l) addr[l] = xb + swz<kTileK>(flash::q_row(mt, l), flash::q_chunk(ks, l));
          ldmatrix_x4(sX, addr, a, false);
          mma(A(warp, mt, 0), a, b01);
          mma(A(warp, mt, 1), a, b23);
        }
      }
  }
  cp.wait(0);
  for (int warp = 0; warp < kWarps; ++warp)
    for (int mt = 0; mt < MT; ++mt)
      for (int nt = 0; nt < 2; ++nt)
        for (int l = 0; l < 32; ++l)
          for (int e = 0; e < 4; ++e) {
            const int row = mt * 16 + flash::c_row(l, e), col = n0 + warp * 16 + nt * 8 + flash::c_col(l, e);
            if (row >= M || col >= N) continue;
            const float v = A(warp, mt, nt)[l][e];
            y[(size_t)(row0 + row) * N + col] = f32_out ? v : bf2f(f2bf(v));
          }
}

// One MoE layer of T tokens through the kernels' sequence, on one rank (experts [start, start + local)).
static void check_layer(int T, int E, int K, bool norm, int H, int I, int Is, int tp, int rank, bool eager, std::mt19937& rng) {
  const int start = rank * E / tp, local = (rank + 1) * E / tp - start;
  std::normal_distribution<float> nd(0.f, 1.f);
  Experts X{H, I, Is, local, {}, {}, {}, {}};
  auto fill = [&](std::vector<bf16>& v, size_t n, float sd) { v.resize(n); for (auto& e : v) e = f2bf(sd * nd(rng)); };
  fill(X.gate_up, (size_t)local * 2 * I * H, 0.05f);
  fill(X.down, (size_t)local * H * I, 0.05f);
  if (Is) { fill(X.sh_gate_up, (size_t)2 * Is * H, 0.05f); fill(X.sh_down, (size_t)H * Is, 0.05f); }
  std::vector<bf16> xb;
  fill(xb, (size_t)T * H, 1.f);
  const int ld = E + (Is > 0);
  std::vector<float> logits((size_t)T * ld);
  for (auto& v : logits) v = nd(rng);
  Routing r{T, K, E, start, local, std::vector<int>((size_t)T * K), std::vector<int>(T, 0), std::vector<float>((size_t)T * K)};
  for (int t = 0; t < T; ++t) {
    r.slot[t] = (t % 5 == 3) ? -1 : t;  // padding tokens of a graph step take no expert
    std::vector<float> l(logits.begin() + (size_t)t * ld, logits.begin() + (size_t)t * ld + E);
    route_token_emu(l.data(), E, K, norm, &r.ids[(size_t)t * K], &r.w[(size_t)t * K]);
  }
  const moe::Layout L = moe::layout(T + 3, K, local);  // a capacity larger than the step, as at run time
  const std::vector<int> meta = permute_emu(r, L, rng);
  check_permutation(r, L, meta);
  const bool gemv = moe::use_gemv(T, K, E), shared_in_gemv = Is > 0 && gemv && T <= moe::kSharedInGemvTokens;
  const int groups = moe::max_active(T, K, local);
  std::vector<float> ex_out((size_t)T * K * H, NAN), sh_out((size_t)T * H, NAN);
  std::vector<float> ex_act_f((size_t)T * K * I, NAN), sh_act_f((size_t)T * std::max(Is, 1), NAN);
  std::vector<int> cov((size_t)std::max(local, 1) * std::max(I, H), 0), scov(std::max(Is, H), 0);
  auto to_bf = [](const std::vector<float>& v) { std::vector<bf16> o(v.size()); for (size_t i = 0; i < v.size(); ++i) o[i] = std::isnan(v[i]) ? 0 : f2bf(v[i]); return o; };
  // The shared expert outside the grouped launches: a plain reference product (cuBLAS at run time).
  auto shared_dense = [&]() {
    for (int t = 0; t < T; ++t) {
      for (int j = 0; j < Is; ++j) {
        double g = 0, u = 0;
        for (int h = 0; h < H; ++h) {
          g += (double)bf2f(X.sh_gate_up[(size_t)j * H + h]) * bf2f(xb[(size_t)t * H + h]);
          u += (double)bf2f(X.sh_gate_up[(size_t)(Is + j) * H + h]) * bf2f(xb[(size_t)t * H + h]);
        }
        sh_act_f[(size_t)t * Is + j] = bf2f(f2bf(act_silu((float)g) * (float)u));
      }
      for (int h = 0; h < H; ++h) {
        double y = 0;
        for (int j = 0; j < Is; ++j) y += (double)bf2f(X.sh_down[(size_t)h * Is + j]) * sh_act_f[(size_t)t * Is + j];
        sh_out[(size_t)t * H + h] = (float)y;
      }
    }
  };
  if (Is > 0 && !shared_in_gemv) shared_dense();
  if (gemv) {
    std::vector<int> cov2 = cov, scov2 = scov;
    auto run = [&](auto mt_tag) {
      constexpr int MT = decltype(mt_tag)::value;
      gemv_emu<MT, true>(X, meta, L, groups, shared_in_gemv, T, xb, xb, ex_act_f, sh_act_f, cov, scov);
      gemv_emu<MT, false>(X, meta, L, groups, shared_in_gemv, T, to_bf(ex_act_f), to_bf(sh_act_f), ex_out, sh_out, cov2, scov2);
    };
    switch (moe::gemv_tokens(T)) {
      case 1: run(std::integral_constant<int, 1>{}); break;
      case 2: run(std::integral_constant<int, 2>{}); break;
      case 4: run(std::integral_constant<int, 4>{}); break;
      default: run(std::integral_constant<int, moe::kGemvTokens>{}); break;
    }
    for (int a = 0; a < meta[L.n_active]; ++a)
      for (int f = 0; f < std::max(I, H); ++f) {
        const int e = meta[L.active_e + a];
        if (f < I) expect(cov[(size_t)e * I + f] == 1, "gemv: gate|up feature not covered once", e, f);
        if (f < H) expect(cov2[(size_t)e * H + f] == 1, "gemv: down feature not covered once", e, f);
      }
    if (shared_in_gemv)
      for (int f = 0; f < std::max(Is, H); ++f) {
        if (f < Is) expect(scov[f] == 1, "gemv: shared gate|up feature not covered once", f);
        if (f < H) expect(scov2[f] == 1, "gemv: shared down feature not covered once", f);
      }
  } else if (local > 0) {
    const int tiles = moe::max_tiles(T, K, local);
    std::vector<float> gu((size_t)T * K * 2 * I, NAN);
    for (int tile = 0; tile < tiles; ++tile)
      for (int by = 0; by < (2 * I + moe::kTileN - 1) / moe::kTileN; ++by)
        mma_block_emu(xb, true, X.gate_up.data(), (size_t)2 * I * H, 2 * I, H, gu, false, meta, L, tile, by, eager);
    for (int row = 0; row < meta[L.n_rows]; ++row)  // moe_gated_act_kernel
      for (int j = 0; j < I; ++j)
        ex_act_f[(size_t)row * I + j] = bf2f(f2bf(act_silu(gu[(size_t)row * 2 * I + j]) * gu[(size_t)row * 2 * I + I + j]));
    const std::vector<bf16> act_bf = to_bf(ex_act_f);
    for (int tile = 0; tile < tiles; ++tile)
      for (int by = 0; by < (H + moe::kTileN - 1) / moe::kTileN; ++by)
        mma_block_emu(act_bf, false, X.down.data(), (size_t)H * I, H, I, ex_out, true, meta, L, tile, by, eager);
  }
  // moe_combine_kernel, then the double-precision layer with the same routing.
  double max_err = 0, max_ref = 0;
  for (int t = 0; t < T; ++t) {
    std::vector<std::pair<int, int>> picks;  // (expert id, j) of this rank, by id
    for (int j = 0; j < K; ++j)
      if (meta[L.inv + t * K + j] >= 0) picks.push_back({r.ids[(size_t)t * K + j], j});
    std::sort(picks.begin(), picks.end());
    const float gate = Is ? 1.f / (1.f + std::exp(-logits[(size_t)t * ld + E])) : 0.f;
    std::vector<double> ref(H, 0.0);
    for (int j = 0; j < K; ++j) {
      const int e = moe::local_expert(r.ids[(size_t)t * K + j], start, local, r.slot[t] >= 0);
      if (e < 0) continue;
      std::vector<double> act(I);
      for (int q = 0; q < I; ++q) {
        double g = 0, u = 0;
        for (int c = 0; c < H; ++c) {
          const double xv = bf2f(xb[(size_t)t * H + c]);
          g += bf2f(X.gate_up[((size_t)e * 2 * I + q) * H + c]) * xv;
          u += bf2f(X.gate_up[((size_t)e * 2 * I + I + q) * H + c]) * xv;
        }
        act[q] = bf2f(f2bf((float)(g / (1 + std::exp(-g)) * u)));
      }
      for (int h = 0; h < H; ++h) {
        double y = 0;
        for (int q = 0; q < I; ++q) y += bf2f(X.down[((size_t)e * H + h) * I + q]) * act[q];
        ref[h] += r.w[(size_t)t * K + j] * y;
      }
    }
    for (int h = 0; h < H; ++h) {
      float acc = 0.f;
      for (auto [id, j] : picks) acc += r.w[(size_t)t * K + j] * ex_out[(size_t)meta[L.inv + t * K + j] * H + h];
      if (Is) {
        acc += gate * sh_out[(size_t)t * H + h];
        double y = 0;
        for (int q = 0; q < Is; ++q) y += (double)bf2f(X.sh_down[(size_t)h * Is + q]) * sh_act_f[(size_t)t * Is + q];
        ref[h] += gate * y;
      }
      max_err = std::max(max_err, std::fabs(acc - ref[h]));
      max_ref = std::max(max_ref, std::fabs(ref[h]));
      if (!std::isfinite(acc)) expect(false, "layer: a row was never written", t, h);
    }
  }
  // Inputs of the down products are rounded to bf16 in both; what remains is f32 accumulation and a
  // rare bf16 rounding flip of an activation.
  const bool ok = max_err <= 2e-3 * std::max(1.0, max_ref);
  expect(ok, "layer: combine vs double-precision mixture of experts", T, E);
  std::printf("layer T=%-3d E=%-3d k=%d H=%-3d I=%-3d shared=%-3d tp %d/%d %-5s %-5s rows=%-4d active=%-3d max_err=%.2e max|ref|=%.2f %s\n",
              T, E, K, H, I, Is, rank, tp, gemv ? "gemv" : "mma", eager ? "eager" : "lazy", meta[L.n_rows], meta[L.n_active],
              max_err, max_ref, ok ? "ok" : "FAIL");
}

int main() {
  std::mt19937 rng(11);
  check_routing(rng);
  // Permutations alone at sizes the layer cases do not reach (several atomic orders each).
  int perms = 0;
  for (int T : {1, 7, 32, 33, 200, 1000})
    for (int E : {4, 60, 128, 256})
      for (int K : {1, 2, 4, 8})
        for (int tp : {1, 3}) {
          if (K > E) continue;
          std::uniform_int_distribution<int> pick(0, E - 1);
          const int rank = tp - 1, start = rank * E / tp, local = (rank + 1) * E / tp - start;
          Routing r{T, K, E, start, local, std::vector<int>((size_t)T * K), std::vector<int>(T), std::vector<float>((size_t)T * K, 0.5f)};
          for (int t = 0; t < T; ++t) {
            r.slot[t] = t % 9 == 4 ? -1 : t;
            for (int j = 0; j < K; ++j) r.ids[(size_t)t * K + j] = T == 1000 && E == 256 ? pick(rng) % 3 : pick(rng);  // skewed too
          }
          const moe::Layout L = moe::layout(T, K, local);
          for (int rep = 0; rep < 2; ++rep) check_permutation(r, L, permute_emu(r, L, rng));
          ++perms;
        }
  std::printf("permute: %d routings, 2 atomic orders each (one warp: up to 32 assignments)\n", perms);
  // Layers: decode (GEMV, the shared expert inside or by cuBLAS), prefill (tensor-core tiles with
  // N and K edges: 2I = 80, H = 72, I = 40), tp 2 ranks, both cp.async orders.
  check_layer(1, 8, 2, false, 64, 32, 64, 1, 0, true, rng);
  check_layer(3, 8, 2, true, 64, 32, 0, 1, 0, true, rng);
  check_layer(8, 60, 4, false, 64, 24, 48, 1, 0, true, rng);
  check_layer(16, 60, 4, false, 64, 24, 48, 2, 1, true, rng);
  check_layer(30, 8, 2, true, 72, 40, 0, 1, 0, true, rng);
  check_layer(30, 8, 2, true, 72, 40, 0, 1, 0, false, rng);
  check_layer(70, 4, 2, true, 64, 96, 64, 2, 0, false, rng);
  check_layer(150, 8, 2, false, 128, 64, 32, 1, 0, true, rng);
  std::printf("moe emulation: %s\n", g_ok ? "all ok" : "FAILED");
  return g_ok ? 0 : 1;
}
