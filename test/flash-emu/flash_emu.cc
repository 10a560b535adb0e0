// Host emulation of the flash prefill kernel (native/src/cuda/attention_prefill.cu) for machines
// without a GPU: one thread block of 4 warps is run lane by lane, phase by phase, with ldmatrix,
// mma.sync m16n8k16, cp.async (zero-fill, commit/wait groups) and warp shuffles emulated from the
// PTX ISA's definitions, and the kernel's own index maps (native/src/cuda/flash_layout.h). The
// result of every query tile of a paged-KV, GQA, mixed-length step is compared with a plain
// double-precision causal attention. cp.async copies are applied either at issue or only at the
// wait that the kernel relies on (two runs), so a read before its wait or a reload before the
// last read of a buffer both show up as wrong numbers.
// usage: g++ -O2 -std=c++17 -Inative/src test/flash-emu/flash_emu.cc -o /tmp/flash_emu && /tmp/flash_emu
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#include "cuda/flash_layout.h"
#include "cuda/kv_layout.h"
#include "ptx_emu.h"

using namespace ns::cuda::flash;
using ns::cuda::kv_offset;
constexpr int kBr = 64, kBc = 64, kWarps = 4, kThreads = 128;

struct Step {  // the kernel's AttnArgs, on the host
  int nh, nkv, B;
  std::vector<bf16> qkv, kc, vc, out;
  std::vector<int32_t> tok_pos, tok_seq, seq_bt_off, block_tables;
};

template <int D>
static void load_kv_tile(AsyncCopies& cp, std::vector<bf16>& dst, const std::vector<bf16>& cache, const int32_t* bt,
                         int B, int nkv, int kh, int j0, int n_keys) {
  constexpr int kChunks = D / 8;
  for (int tid = 0; tid < kThreads; ++tid)
    for (int i = 0; i < kBc * kChunks / kThreads; ++i) {
      const int idx = tid + i * kThreads, r = idx / kChunks, c = idx % kChunks, j = j0 + r;
      const bool valid = j < n_keys;
      const int jj = valid ? j : 0;
      cp.copy(dst, swz<D>(r, c), cache.data() + kv_offset(bt[jj / B], jj % B, kh, nkv, B, D) + c * 8, valid);
    }
}

// One block (head h, query tile {t0, n}), following flash_prefill_kernel statement by statement.
template <int D>
static void run_block(Step& a, int h, int t0, int n, bool eager) {
  constexpr int kDK = D / 16, kNT = kBc / 8, kDT = D / 8;
  const float scale_log2 = 1.4426950408889634f / std::sqrt((float)D);
  std::vector<bf16> sQ(kBr * D, 0xffff), sK(kBc * D, 0xffff), sV(kBc * D, 0xffff);  // NaN garbage
  AsyncCopies cp{eager, {}, {}};
  const int nkv = a.nkv, B = a.B, kh = h / (a.nh / nkv);
  const int32_t* bt = a.block_tables.data() + a.seq_bt_off[a.tok_seq[t0]];
  const int p_first = a.tok_pos[t0], n_keys = a.tok_pos[t0 + n - 1] + 1;
  int row_pos[kWarps][32][2];
  for (int w = 0; w < kWarps; ++w)
    for (int l = 0; l < 32; ++l)
      for (int i = 0; i < 2; ++i) row_pos[w][l][i] = a.tok_pos[t0 + std::min(w * 16 + c_row(l, 2 * i), n - 1)];
  {
    const size_t q_stride = (size_t)(a.nh + 2 * nkv) * D;
    constexpr int kChunks = D / 8;
    for (int tid = 0; tid < kThreads; ++tid)
      for (int i = 0; i < kBr * kChunks / kThreads; ++i) {
        const int idx = tid + i * kThreads, r = idx / kChunks, c = idx % kChunks;
        const bool valid = r < n;
        cp.copy(sQ, swz<D>(r, c), a.qkv.data() + (size_t)h * D + (size_t)(t0 + (valid ? r : 0)) * q_stride + c * 8, valid);
      }
  }
  load_kv_tile<D>(cp, sK, a.kc, bt, B, nkv, kh, 0, n_keys);
  cp.commit();
  cp.wait(0);
  static uint32_t qf[kWarps][kDK][32][4];
  for (int w = 0; w < kWarps; ++w)
    for (int ks = 0; ks < kDK; ++ks) {
      int addr[32];
      for (int l = 0; l < 32; ++l) addr[l] = swz<D>(q_row(w, l), q_chunk(ks, l));
      ldmatrix_x4(sQ, addr, qf[w][ks], false);
    }
  static float o[kWarps][kDT][32][4];
  std::memset(o, 0, sizeof o);
  float m[kWarps][32][2], l[kWarps][32][2];
  for (int w = 0; w < kWarps; ++w)
    for (int ln = 0; ln < 32; ++ln) m[w][ln][0] = m[w][ln][1] = -INFINITY, l[w][ln][0] = l[w][ln][1] = 0.f;

  auto active = [&](int w) { return w * 16 < n; };
  const int n_tiles = (n_keys + kBc - 1) / kBc;
  for (int kt = 0; kt < n_tiles; ++kt) {
    const int j0 = kt * kBc;
    load_kv_tile<D>(cp, sV, a.vc, bt, B, nkv, kh, j0, n_keys);
    cp.commit();
    cp.wait(1);
    static float s[kWarps][kNT][32][4];
    std::memset(s, 0, sizeof s);
    for (int w = 0; w < kWarps; ++w)
      for (int ks = 0; ks < kDK && active(w); ++ks)
        for (int np = 0; np < kNT / 2; ++np) {
          int addr[32];
          uint32_t b[32][4], b01[32][2], b23[32][2];
          for (int ln = 0; ln < 32; ++ln) addr[ln] = swz<D>(k_row(np, ln), k_chunk(ks, ln));
          ldmatrix_x4(sK, addr, b, false);
          for (int ln = 0; ln < 32; ++ln) b01[ln][0] = b[ln][0], b01[ln][1] = b[ln][1], b23[ln][0] = b[ln][2], b23[ln][1] = b[ln][3];
          mma(s[w][2 * np], qf[w][ks], b01);
          mma(s[w][2 * np + 1], qf[w][ks], b23);
        }
    if (kt + 1 < n_tiles) load_kv_tile<D>(cp, sK, a.kc, bt, B, nkv, kh, j0 + kBc, n_keys);
    cp.commit();
    const bool masked = j0 + kBc - 1 > p_first;
    for (int w = 0; w < kWarps; ++w)
      for (int i = 0; i < 2 && active(w); ++i) {
        float mx[32];
        for (int ln = 0; ln < 32; ++ln) {
          mx[ln] = -INFINITY;
          for (int nt = 0; nt < kNT; ++nt)
            for (int e = 0; e < 2; ++e) {
              float& x = s[w][nt][ln][2 * i + e];
              x *= scale_log2;
              if (masked && j0 + nt * 8 + c_col(ln, e) > row_pos[w][ln][i]) x = -INFINITY;
              mx[ln] = std::fmax(mx[ln], x);
            }
        }
        for (int sh : {1, 2}) {  // __shfl_xor_sync
          float t[32];
          for (int ln = 0; ln < 32; ++ln) t[ln] = std::fmax(mx[ln], mx[ln ^ sh]);
          std::memcpy(mx, t, sizeof t);
        }
        for (int ln = 0; ln < 32; ++ln) {
          const float m_new = std::fmax(m[w][ln][i], mx[ln]);
          const float m_use = m_new == -INFINITY ? 0.f : m_new;
          const float corr = std::exp2(m[w][ln][i] - m_use);
          m[w][ln][i] = m_new;
          float sum = 0.f;
          for (int nt = 0; nt < kNT; ++nt)
            for (int e = 0; e < 2; ++e) {
              float& x = s[w][nt][ln][2 * i + e];
              x = std::exp2(x - m_use);
              sum += x;
            }
          l[w][ln][i] = l[w][ln][i] * corr + sum;
          for (int dt = 0; dt < kDT; ++dt) o[w][dt][ln][2 * i] *= corr, o[w][dt][ln][2 * i + 1] *= corr;
        }
      }
    cp.wait(1);
    for (int w = 0; w < kWarps; ++w)
      for (int kk = 0; kk < kBc / 16 && active(w); ++kk) {
        uint32_t pa[32][4];
        for (int ln = 0; ln < 32; ++ln)
          for (int r = 0; r < 4; ++r) {
            const float* src = s[w][p_ntile(kk, r)][ln] + p_elem(r);
            pa[ln][r] = pack2(src[0], src[1]);
          }
        for (int dp = 0; dp < kDT / 2; ++dp) {
          int addr[32];
          uint32_t b[32][4], b01[32][2], b23[32][2];
          for (int ln = 0; ln < 32; ++ln) addr[ln] = swz<D>(v_row(kk, ln), v_chunk(dp, ln));
          ldmatrix_x4(sV, addr, b, true);
          for (int ln = 0; ln < 32; ++ln) b01[ln][0] = b[ln][0], b01[ln][1] = b[ln][1], b23[ln][0] = b[ln][2], b23[ln][1] = b[ln][3];
          mma(o[w][2 * dp], pa, b01);
          mma(o[w][2 * dp + 1], pa, b23);
        }
      }
  }
  cp.wait(0);
  for (int w = 0; w < kWarps; ++w)
    for (int i = 0; i < 2; ++i) {
      float sum[32];
      for (int ln = 0; ln < 32; ++ln) sum[ln] = l[w][ln][i];
      for (int sh : {1, 2}) {
        float t[32];
        for (int ln = 0; ln < 32; ++ln) t[ln] = sum[ln] + sum[ln ^ sh];
        std::memcpy(sum, t, sizeof t);
      }
      for (int ln = 0; ln < 32; ++ln) {
        const float inv = sum[ln] > 0.f ? 1.f / sum[ln] : 0.f;
        const int r = w * 16 + c_row(ln, 2 * i);
        if (r >= n) continue;
        bf16* out = a.out.data() + ((size_t)(t0 + r) * a.nh + h) * D + c_col(ln, 0);
        for (int dt = 0; dt < kDT; ++dt) {
          const uint32_t v = pack2(o[w][dt][ln][2 * i] * inv, o[w][dt][ln][2 * i + 1] * inv);
          out[dt * 8] = (bf16)(v & 0xffff);
          out[dt * 8 + 1] = (bf16)(v >> 16);
        }
      }
    }
}

// A step of several sequences {start position, new tokens}; keys of earlier positions are already
// in the cache. Sequences with >= 16 new tokens are cut into tiles of 64 (as CudaBackend::pack).
template <int D>
static bool check(const char* name, int nh, int nkv, int B, const std::vector<std::pair<int, int>>& seqs, bool eager,
                  uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  Step a{nh, nkv, B, {}, {}, {}, {}, {}, {}, {}, {}};
  int T = 0, n_blocks_total = 0;
  std::vector<int> first_tok;
  for (auto [pos, n] : seqs) { first_tok.push_back(T); T += n; n_blocks_total += (pos + n + B - 1) / B + 1; }
  // Block tables: a random permutation of the pool (plus one spare block per sequence).
  std::vector<int32_t> perm(n_blocks_total);
  for (int i = 0; i < n_blocks_total; ++i) perm[i] = i;
  std::shuffle(perm.begin(), perm.end(), rng);
  const size_t kv_elems = (size_t)n_blocks_total * B * nkv * D;
  a.kc.resize(kv_elems); a.vc.resize(kv_elems);
  for (auto& x : a.kc) x = f2bf(nd(rng));
  for (auto& x : a.vc) x = f2bf(nd(rng));
  a.qkv.resize((size_t)T * (nh + 2 * nkv) * D);
  for (auto& x : a.qkv) x = f2bf(2.f * nd(rng));  // sharper softmax than unit q
  a.out.assign((size_t)T * nh * D, 0x7fc0);
  int off = 0;
  for (size_t s = 0; s < seqs.size(); ++s) {
    auto [pos, n] = seqs[s];
    a.seq_bt_off.push_back((int)a.block_tables.size());
    for (int b = 0; b < (pos + n + B - 1) / B + 1; ++b) a.block_tables.push_back(perm[off++]);
    for (int i = 0; i < n; ++i) { a.tok_pos.push_back(pos + i); a.tok_seq.push_back((int)s); }
  }
  std::vector<std::pair<int, int>> tiles;
  for (size_t s = 0; s < seqs.size(); ++s)
    if (seqs[s].second >= 16)
      for (int i0 = 0; i0 < seqs[s].second; i0 += kBr) tiles.push_back({first_tok[s] + i0, std::min(kBr, seqs[s].second - i0)});
  for (auto [t0, n] : tiles)
    for (int h = 0; h < nh; ++h) run_block<D>(a, h, t0, n, eager);

  const float scale = 1.f / std::sqrt((float)D);
  double worst = 0;
  int checked = 0, untouched_ok = 1;
  for (size_t s = 0; s < seqs.size(); ++s) {
    const bool flash = seqs[s].second >= 16;
    for (int i = 0; i < seqs[s].second; ++i) {
      const int t = first_tok[s] + i, p = a.tok_pos[t];
      const int32_t* bt = a.block_tables.data() + a.seq_bt_off[s];
      for (int h = 0; h < nh; ++h) {
        bf16* got = a.out.data() + ((size_t)t * nh + h) * D;
        if (!flash) { for (int d = 0; d < D; ++d) untouched_ok &= got[d] == 0x7fc0; continue; }
        const int kh = h / (nh / nkv);
        const bf16* q = a.qkv.data() + (size_t)t * (nh + 2 * nkv) * D + (size_t)h * D;
        std::vector<double> sc(p + 1), ref(D, 0.0);
        double mx = -1e300, sum = 0, vmax = 0;
        for (int j = 0; j <= p; ++j) {
          const bf16* k = a.kc.data() + kv_offset(bt[j / B], j % B, kh, nkv, B, D);
          double dot = 0;
          for (int d = 0; d < D; ++d) dot += (double)bf2f(q[d]) * bf2f(k[d]);
          sc[j] = dot * scale;
          mx = std::max(mx, sc[j]);
        }
        for (int j = 0; j <= p; ++j) {
          const double w = std::exp(sc[j] - mx);
          sum += w;
          const bf16* v = a.vc.data() + kv_offset(bt[j / B], j % B, kh, nkv, B, D);
          for (int d = 0; d < D; ++d) { ref[d] += w * bf2f(v[d]); vmax = std::max(vmax, (double)std::fabs(bf2f(v[d]))); }
        }
        for (int d = 0; d < D; ++d) {
          const double err = std::fabs(bf2f(got[d]) - ref[d] / sum) / vmax;
          if (!(err <= worst)) worst = std::isnan(err) ? 1e9 : std::max(worst, err);
        }
        ++checked;
      }
    }
  }
  const bool ok = worst < 1.5e-2 && untouched_ok && checked > 0;
  std::printf("%-44s D=%3d nh=%d nkv=%d B=%2d %s tiles=%zu rows=%d max_err/max|v|=%.2e %s\n", name, D, nh, nkv, B,
              eager ? "eager" : "lazy ", tiles.size(), checked, worst, ok ? "ok" : "FAIL");
  return ok;
}

// kv_offset maps (block, slot, kv head) one-to-one onto the pool's rows, one token's heads side by side.
static bool check_kv_offset() {
  const int blocks = 3, B = 5, nkv = 4, hd = 8;
  std::vector<int> hits(blocks * B * nkv, 0);
  for (int b = 0; b < blocks; ++b)
    for (int i = 0; i < B; ++i)
      for (int k = 0; k < nkv; ++k) {
        const size_t o = kv_offset(b, i, k, nkv, B, hd);
        if (o % hd || o / hd >= hits.size()) return false;
        ++hits[o / hd];
        const size_t next = k + 1 < nkv ? kv_offset(b, i, k + 1, nkv, B, hd) : o + hd;
        if (next != o + hd) return false;
      }
  for (int h : hits) if (h != 1) return false;
  std::printf("kv_offset: one-to-one, a token's heads contiguous: ok\n");
  return true;
}

int main() {
  bool ok = check_kv_offset();
  for (bool eager : {false, true}) {
    // (a) one prefill of 300 tokens from position 0 (tiles of 64, last one 44)
    ok &= check<128>("prefill 300", 2, 2, 16, {{0, 300}}, eager, 1);
    // (b) mixed step: two prefills of different lengths, a decode (SIMT: untouched), a short chunk
    ok &= check<128>("mixed 130 + 77 + decode + 9", 4, 2, 16, {{0, 130}, {0, 77}, {40, 1}, {5, 9}}, eager, 2);
    // (c) a chunk continuing an earlier one (pos > 0), block size not a multiple of 16
    ok &= check<128>("continuation pos 200 + 100, B=5", 4, 1, 5, {{200, 100}}, eager, 3);
    ok &= check<64>("head_dim 64, GQA 8/2, pos 17 + 70", 8, 2, 16, {{17, 70}, {0, 16}}, eager, 4);
  }
  std::printf("%s\n", ok ? "flash emulation: all ok" : "flash emulation: FAILED");
  return ok ? 0 : 1;
}
