// Host emulation of the skinny decode GEMM (native/src/cuda/skinny_gemm.cu) for machines without a
// GPU: every block of the grid is run lane by lane with the kernel's own tiling and split-K plan
// (skinny_plan.h), swizzle and fragment index maps (flash_layout.h), its 4-stage cp.async ring
// (copies applied at issue, or only at the wait the kernel relies on: two runs), ldmatrix and
// mma.sync m16n8k16 as the PTX ISA defines them (ptx_emu.h), and the slice-ordered reduction; Y is
// compared with a double-precision X · W^T for row counts 1..64 and several N, K and GPU sizes.
// usage: g++ -O2 -std=c++17 -Inative/src test/flash-emu/skinny_emu.cc -o /tmp/skinny_emu && /tmp/skinny_emu
#include <algorithm>
#include <cstdio>
#include <random>

#include "cuda/flash_layout.h"
#include "cuda/skinny_plan.h"
#include "ptx_emu.h"

using namespace ns::cuda::flash;
using namespace ns::cuda::skinny;

// One block (bx, by) of skinny_gemm_kernel; writes its fp32 results for rows < M into out (the
// slice's partials at slice offset `by * M * N` when there are several slices).
static void run_block(const std::vector<bf16>& X, const std::vector<bf16>& W, int M, int N, int K, int k_per_split, int bx,
                      int by, bool eager, std::vector<float>& out, size_t out_off) {
  const int MT = (M + 15) / 16;
  std::vector<bf16> sW(kStages * kTileN * kTileK), sX(kStages * 16 * MT * kTileK);
  AsyncCopies cp{eager, {}, {}};
  const int n0 = bx * kTileN, k_begin = by * k_per_split;
  const int chunks = std::max(0, (std::min(K, k_begin + k_per_split) - k_begin) / kTileK);
  auto load_w = [&](int chunk) {
    for (int tid = 0; tid < kThreads; ++tid)
      for (int i = 0; i < kTileN * 8 / kThreads; ++i) {
        const int idx = tid + i * kThreads, r = idx >> 3, c = idx & 7;
        cp.copy(sW, (chunk % kStages) * kTileN * kTileK + swz<kTileK>(r, c), &W[(size_t)(n0 + r) * K + k_begin + chunk * kTileK + c * 8], true);
      }
  };
  auto load_x = [&](int chunk) {
    for (int tid = 0; tid < kThreads; ++tid)
      for (int idx = tid; idx < 16 * MT * 8; idx += kThreads) {
        const int r = idx >> 3, c = idx & 7;
        const bool valid = r < M;
        cp.copy(sX, (chunk % kStages) * 16 * MT * kTileK + swz<kTileK>(r, c), &X[(size_t)(valid ? r : 0) * K + k_begin + chunk * kTileK + c * 8], valid);
      }
  };
  for (int c = 0; c < kStages - 1; ++c)
    if (c < chunks) load_w(c);
  for (int c = 0; c < kStages - 1; ++c) {
    if (c < chunks) load_x(c);
    cp.commit();
  }
  std::vector<float> acc((size_t)kWarps * MT * 2 * 32 * 4, 0.f);  // [warp][mt][nt][lane][e]
  auto A = [&](int warp, int mt, int nt) { return reinterpret_cast<float(*)[4]>(&acc[(((size_t)warp * MT + mt) * 2 + nt) * 128]); };
  for (int c = 0; c < chunks; ++c) {
    cp.wait(kStages - 2);
    if (c + kStages - 1 < chunks) {
      load_w(c + kStages - 1);
      load_x(c + kStages - 1);
    }
    cp.commit();
    const int wbase = (c % kStages) * kTileN * kTileK, xbase = (c % kStages) * 16 * MT * kTileK;
    for (int warp = 0; warp < kWarps; ++warp)
      for (int ks = 0; ks < kTileK / 16; ++ks) {
        int addr[32];
        uint32_t b[32][4];
        for (int l = 0; l < 32; ++l) addr[l] = wbase + swz<kTileK>(k_row(warp, l), k_chunk(ks, l));
        ldmatrix_x4(sW, addr, b, false);
        uint32_t b01[32][2], b23[32][2];
        for (int l = 0; l < 32; ++l) {
          b01[l][0] = b[l][0]; b01[l][1] = b[l][1];
          b23[l][0] = b[l][2]; b23[l][1] = b[l][3];
        }
        for (int mt = 0; mt < MT; ++mt) {
          uint32_t a[32][4];
          for (int l = 0; l < 32; ++l) addr[l] = xbase + swz<kTileK>(q_row(mt, l), q_chunk(ks, l));
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
            const int row = mt * 16 + c_row(l, e);
            if (row >= M) continue;
            out[out_off + (size_t)row * N + n0 + warp * 16 + nt * 8 + c_col(l, e)] = A(warp, mt, nt)[l][e];
          }
}

static bool check(int M, int N, int K, int sm_count, bool eager, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<bf16> X((size_t)M * K), W((size_t)N * K);
  for (auto& v : X) v = f2bf(nd(rng));
  for (auto& v : W) v = f2bf(0.05f * nd(rng));
  const Plan p = plan(N, K, sm_count);
  std::vector<float> part((size_t)p.splits * M * N, -12345.f);  // every slot must be written
  for (int by = 0; by < p.splits; ++by)
    for (int bx = 0; bx < N / kTileN; ++bx) run_block(X, W, M, N, K, p.k_per_split, bx, by, eager, part, (size_t)by * M * N);
  double max_err = 0, max_ref = 0;
  for (int r = 0; r < M; ++r)
    for (int n = 0; n < N; ++n) {
      double ref = 0;
      for (int k = 0; k < K; ++k) ref += (double)bf2f(X[(size_t)r * K + k]) * bf2f(W[(size_t)n * K + k]);
      float y = 0.f;  // skinny_reduce_kernel: slices summed in order
      for (int s = 0; s < p.splits; ++s) y += part[(size_t)s * M * N + (size_t)r * N + n];
      max_err = std::max(max_err, std::abs(y - ref));
      max_ref = std::max(max_ref, std::abs(ref));
    }
  const bool ok = max_err <= 1e-4 * std::max(1.0, max_ref) * std::sqrt((double)K / 64);
  std::printf("M=%-3d N=%-4d K=%-5d sms=%-3d splits=%-2d k/split=%-5d %-5s max_err=%.2e max|ref|=%.2f %s\n", M, N, K, sm_count,
              p.splits, p.k_per_split, eager ? "eager" : "lazy", max_err, max_ref, ok ? "ok" : "FAIL");
  return ok;
}

int main() {
  std::mt19937 rng(7);
  bool ok = true;
  // Row counts across m-tile edges; N of 1-3 blocks; K from 1 to 172 chunks; GPUs small enough to force split-K.
  const int cases[][4] = {{1, 128, 256, 132}, {5, 256, 512, 132}, {16, 128, 1024, 2}, {17, 384, 640, 4},
                          {33, 128, 4096, 8}, {48, 256, 2048, 1}, {64, 128, 11008, 8}, {64, 256, 4096, 132}};
  for (const auto& c : cases)
    for (bool eager : {true, false}) ok &= check(c[0], c[1], c[2], c[3], eager, rng);
  std::printf("skinny emulation: %s\n", ok ? "all ok" : "FAILED");
  return ok ? 0 : 1;
}
