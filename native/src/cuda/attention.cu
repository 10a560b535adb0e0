// Paged-KV causal attention with GQA for decode tokens and short prefill chunks (long prefill
// chunks go to the tensor-core kernel of attention_prefill.cu, launched from here on the other
// tokens of the step). Grid (q head, listed token, split): each block handles 1/n_splits of the
// key positions of one (token, head) with an online softmax (running max, sum, weighted V sum) per
// lane group, merged through shuffles and shared memory (the vectorised kernel splits a token's
// keys over fewer blocks where they are few: attn_vec_kernel). With several splits (flash-decoding,
// for long contexts and small batches), partial (max, sum, acc) go to a workspace and the last split
// block of each (token, head) to finish, counted by an atomic in the workspace, merges them: no
// second kernel (its launch and drain cost every layer of a batch-1 decode step a few us).
// Two kernels: attn_vec_kernel for head_dim 64/128/256 (16-byte loads, several keys in flight per
// lane: a batch-64 decode step is bound by reading K and V), and attn_kernel, the per-key warp
// loop, for other head dims. For 64/128/256 the vectorised one reads K/V of a 64-decode layer at
// 4.25 TB/s on an H200 where the per-key loop reads 2.87 (bench/results/decode-ab-7f71916-h200.json).
// With the fp8 KV cache (KV8) the kernels read E4M3 K/V (8 bytes where they read 16) and fold the
// layer's scales in exactly: scores are k_scale * (q . k8), the output v_scale * (P . v8) / l.
// The model families' forward (cuda_step.cu) runs its attention here too (the SIMT kernels, any
// token count): its score scale, Gemma's score soft-capping and sliding windows (each token's keys
// (pos - window, pos], split evenly like a full context) are AttnArgs fields that the Llama path
// leaves off, which changes none of its arithmetic.
#include <cfloat>
#include <type_traits>

#include "cuda/block_sync.h"
#include "cuda/cuda_common.h"
#include "cuda/kernels.h"
#include "cuda/kv_layout.h"
#include "cuda/quant.h"

namespace ns::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kMaxHeadDim = 256;

// The split partials of (row, h), merged into the output row of token t: out = sum_s acc_s e^(M_s - M)
// / sum_s L_s e^(M_s - M). Loads bypass L1 (__ldcg): other blocks wrote the partials during this
// kernel, and this SM's L1 may hold the same addresses from an earlier layer's launch.
template <typename T>
__device__ void merge_splits(const AttnArgs& a, int t, int row, int h, int hd, int splits) {
  const size_t th = (size_t)t * a.nh + h;
  const size_t split_stride = (size_t)a.n_simt * a.nh * (hd + 2);
  const float* ws = attn_partials(a.ws) + ((size_t)row * a.nh + h) * (hd + 2);
  float M = -FLT_MAX;
  for (int s = 0; s < splits; ++s)
    if (__ldcg(ws + s * split_stride + 1) > 0.f) M = fmaxf(M, __ldcg(ws + s * split_stride));
  float L = 0.f;
  for (int s = 0; s < splits; ++s) {
    const float* p = ws + s * split_stride;
    const float l = __ldcg(p + 1);
    if (l > 0.f) L += l * __expf(__ldcg(p) - M);
  }
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float o = 0.f;
    for (int s = 0; s < splits; ++s) {
      const float* p = ws + s * split_stride;
      if (__ldcg(p + 1) > 0.f) o += __ldcg(p + 2 + d) * __expf(__ldcg(p) - M);
    }
    static_cast<T*>(a.out)[th * hd + d] = from_f<T>(L > 0.f ? o / L : 0.f);
  }
}

// The block's result from its NW warps' online-softmax states in shared memory (max sm[w], sum
// sl[w], weighted V sums sacc[w * stride + d]): the output row of (token t, head h), or with several
// splits (`splits` of this token's keys) the partial (M, L, acc) in the workspace, and the pair's
// last block to finish merges them.
template <typename T, int NW>
__device__ __forceinline__ void write_block_result(const AttnArgs& a, int t, int row, int h, int split, int splits, int hd,
                                                   const float* sm, const float* sl, const float* sacc, int stride) {
  float M = -FLT_MAX;
#pragma unroll
  for (int w = 0; w < NW; ++w) M = fmaxf(M, sm[w]);
  float L = 0.f;
#pragma unroll
  for (int w = 0; w < NW; ++w) L += sl[w] * __expf(sm[w] - M);
  const size_t th = (size_t)t * a.nh + h;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float o = 0.f;
#pragma unroll
    for (int w = 0; w < NW; ++w) o += sacc[w * stride + d] * __expf(sm[w] - M);
    if (splits == 1) {
      static_cast<T*>(a.out)[th * hd + d] = from_f<T>(L > 0.f ? o / L : 0.f);
    } else {
      float* ws = attn_partials(a.ws) + ((size_t)split * a.n_simt * a.nh + (size_t)row * a.nh + h) * (hd + 2);
      ws[2 + d] = o;
      if (d == 0) { ws[0] = M; ws[1] = L; }
    }
  }
  if (splits == 1) return;
  if (!last_arrival(attn_split_counters(a.ws) + (size_t)row * a.nh + h, splits)) return;
  merge_splits<T>(a, t, row, h, hd, splits);
}

template <typename T, int EPL, bool KV8>
__global__ void __launch_bounds__(kWarps * 32) attn_kernel(AttnArgs a, float scale) {
  grid_dependency_wait();
  const int h = blockIdx.x, row = blockIdx.y, split = blockIdx.z;  // row: index into simt_tokens
  const int t = a.simt_tokens ? a.simt_tokens[row] : row;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int hd = a.hd, nkv = a.nkv, B = a.block_size;
  const int kh = h / (a.nh / nkv);
  const int ctx = a.tok_pos[t] + 1;  // causal: keys [first, pos]
  const int first = a.window > 0 ? max(0, ctx - a.window) : 0;
  const int chunk = (ctx - first + a.n_splits - 1) / a.n_splits;  // each token's keys split evenly
  const int k0 = first + split * chunk;
  const int k1 = min(ctx, k0 + chunk);
  const int32_t* bt = a.block_tables + a.seq_bt_off[a.tok_seq[t]];
  const T* q = static_cast<const T*>(a.qkv) + (size_t)t * (a.nh + 2 * nkv) * hd + (size_t)h * hd;
  if (KV8) scale *= a.k_scale;

  float qr[EPL], acc[EPL];
#pragma unroll
  for (int e = 0; e < EPL; ++e) {
    const int d = lane * EPL + e;
    qr[e] = d < hd ? to_f(q[d]) * scale : 0.f;
    acc[e] = 0.f;
  }
  float m = -FLT_MAX, l = 0.f;
  for (int j = k0 + warp; j < k1; j += kWarps) {
    const size_t base = kv_offset(bt[j / B], j % B, kh, nkv, B, hd);
    float kv[EPL], vv[EPL];
#pragma unroll
    for (int e = 0; e < EPL; ++e) {
      const int d = lane * EPL + e;
      kv[e] = d < hd ? kv_elem<T, KV8>(a.kcache, base + d) : 0.f;
      vv[e] = d < hd ? kv_elem<T, KV8>(a.vcache, base + d) : 0.f;
    }
    float s = 0.f;
#pragma unroll
    for (int e = 0; e < EPL; ++e) s += qr[e] * kv[e];
    s = warp_sum(s);
    if (a.softcap > 0.f) s = tanhf(s / a.softcap) * a.softcap;
    const float mn = fmaxf(m, s);
    const float corr = __expf(m - mn);
    const float p = __expf(s - mn);
    l = l * corr + p;
    // P is rounded to the activation dtype before P·V, as in flash attention (PyTorch SDPA, HF's
    // default); the row sum l keeps the f32 p.
    const float pr = round_if<T>(a.round_p, p);
#pragma unroll
    for (int e = 0; e < EPL; ++e) acc[e] = acc[e] * corr + pr * vv[e];
    m = mn;
  }

  __shared__ float sm[kWarps], sl[kWarps];
  __shared__ float sacc[kWarps][kMaxHeadDim];
  if (lane == 0) { sm[warp] = m; sl[warp] = l; }
#pragma unroll
  for (int e = 0; e < EPL; ++e) {
    const int d = lane * EPL + e;
    if (d < hd) sacc[warp][d] = KV8 ? acc[e] * a.v_scale : acc[e];
  }
  __syncthreads();
  write_block_result<T, kWarps>(a, t, row, h, split, a.n_splits, hd, sm, sl, &sacc[0][0], kMaxHeadDim);
}

// LPK = HD / EL lanes read one key row, EL elements each, so a warp covers KPW = 32 / LPK keys per
// load and each lane has U keys' K and V loads in flight before it uses any: the per-key warp
// loop above keeps one 512-byte K/V pair in flight per warp and a 5-shuffle reduction between
// loads, ~70% of copy bandwidth on a batch-64 decode step. A 16-bit cache: EL = 8 (16-byte loads),
// U = 4. An E4M3 cache (launch_vec): EL = 8 (8-byte loads), U = 4, or EL = 16 (16-byte loads: half
// the shuffles, block-table lookups and softmax updates per byte of the 8-element form, whose
// per-byte work is twice a 16-bit cache's), U = 2 or 4. MIN_BLOCKS: blocks an SM the registers
// must allow (0: no bound).
// NW warps a block: kVecWarps where every (token, head) is one block (many streams fill the GPU),
// kWideWarps where the grid splits the keys (few tokens), with 8 keys in flight a lane where the
// registers allow (head_dim <= 128). A split block takes 16 keys a warp, or one pass of its
// NW * KPW * U keys if more, before a token's keys are split further: a batch-1 step at a context
// of up to 256 (head_dim 128) reads each head's keys in one pass of one block and merges its warps
// in shared memory (the grid's other split blocks exit at once), with no partials in the workspace,
// no fence and atomic ticket and no merge by a last block. The block reads its token's metadata (the
// host's copy, never written by a kernel) before waiting for the kernel that wrote q and the new K/V.
constexpr int kVecWarps = 4;
constexpr int kWideWarps = 16;

// One lane's load of a key or value row to f32: 8 elements of a 16-bit cache, or EL E4M3 ones.
template <typename T, bool KV8, int EL, typename Vec>
__device__ __forceinline__ void unpack_kv(const Vec& v, float* f) {
  if constexpr (!KV8) unpack8<T>(v, f);
  else if constexpr (EL == 16) unpack16<DType::F8E4M3>(v, f);
  else unpack_e4m3x8(v, f);
}

template <typename T, int HD, bool KV8, int EL, int U, int NW, int MIN_BLOCKS = 0>
__global__ void __launch_bounds__(NW * 32, MIN_BLOCKS) attn_vec_kernel(AttnArgs a, float scale) {
  static_assert(EL == 8 || (KV8 && EL == 16), "16 elements a lane only for the E4M3 cache");
  constexpr int LPK = HD / EL, KPW = 32 / LPK, KEYS = NW * KPW;  // KEYS: keys per block per load
  using Vec = std::conditional_t<KV8 && EL == 8, uint2, uint4>;  // one lane's EL elements of a key row
  using Elem = std::conditional_t<KV8, uint8_t, T>;
  constexpr int kSplitKeys = NW * 16 > U * KEYS ? NW * 16 : U * KEYS;
  const int h = blockIdx.x, row = blockIdx.y, split = blockIdx.z;
  const int t = a.simt_tokens ? a.simt_tokens[row] : row;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int grp = lane / LPK, sub = lane % LPK;  // this lane's key in the warp, its EL elements of the row
  const int nkv = a.nkv, B = a.block_size;
  // Key j's block: the E4M3 forms shift for a power-of-two block size (a division by a variable is
  // ~20 instructions a key, twice the share of the work per byte that it is with a 16-bit cache).
  const bool pow2 = KV8 && (B & (B - 1)) == 0;
  const int bshift = __ffs(B) - 1;
  const int kh = h / (a.nh / nkv);
  const int ctx = a.tok_pos[t] + 1;
  const int first = a.window > 0 ? max(0, ctx - a.window) : 0;
  const int splits = min(a.n_splits, max(1, (ctx - first + kSplitKeys - 1) / kSplitKeys));
  if (split >= splits) return;
  const int chunk = (ctx - first + splits - 1) / splits;
  const int k0 = first + split * chunk, k1 = min(ctx, k0 + chunk);
  const int32_t* bt = a.block_tables + a.seq_bt_off[a.tok_seq[t]];
  const Elem* kc = static_cast<const Elem*>(a.kcache) + sub * EL;
  const Elem* vc = static_cast<const Elem*>(a.vcache) + sub * EL;
  if (KV8) scale *= a.k_scale;
  grid_dependency_wait();
  grid_dependents_launch();  // a decode GEMV next (o_proj) pulls its weights into L2 on the free SMs meanwhile

  float qr[EL], acc[EL];
  const uint4* qp = reinterpret_cast<const uint4*>(static_cast<const T*>(a.qkv) + (size_t)t * (a.nh + 2 * nkv) * HD +
                                                   (size_t)h * HD + sub * EL);
#pragma unroll
  for (int c = 0; c < EL / 8; ++c) unpack8<T>(qp[c], qr + 8 * c);
#pragma unroll
  for (int e = 0; e < EL; ++e) { qr[e] *= scale; acc[e] = 0.f; }
  float m = -FLT_MAX, l = 0.f;
  const int mine = warp * KPW + grp;
  for (int j0 = k0; j0 < k1; j0 += U * KEYS) {
    Vec kr[U], vr[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int j = j0 + u * KEYS + mine;
      if (j < k1) {
        size_t base;
        if (KV8) {
          const int blk = pow2 ? j >> bshift : j / B;
          base = kv_offset(bt[blk], j - blk * B, kh, nkv, B, HD);
        } else {
          base = kv_offset(bt[j / B], j % B, kh, nkv, B, HD);
        }
        kr[u] = __ldg(reinterpret_cast<const Vec*>(kc + base));
        vr[u] = __ldg(reinterpret_cast<const Vec*>(vc + base));
      } else {
        kr[u] = vr[u] = Vec{};
      }
    }
    float sc[U], mn = m;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float kf[EL], d = 0.f;
      unpack_kv<T, KV8, EL>(kr[u], kf);
#pragma unroll
      for (int e = 0; e < EL; ++e) d += qr[e] * kf[e];
#pragma unroll
      for (int o = LPK / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
      if (a.softcap > 0.f) d = tanhf(d / a.softcap) * a.softcap;
      sc[u] = j0 + u * KEYS + mine < k1 ? d : -FLT_MAX;
      mn = fmaxf(mn, sc[u]);
    }
    const float corr = __expf(m - mn);
    l *= corr;
#pragma unroll
    for (int e = 0; e < EL; ++e) acc[e] *= corr;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const float p = sc[u] > -FLT_MAX ? __expf(sc[u] - mn) : 0.f;
      l += p;
      const float pr = round_if<T>(a.round_p, p);  // P in the activation dtype before P.V (as attn_kernel)
      float vf[EL];
      unpack_kv<T, KV8, EL>(vr[u], vf);
#pragma unroll
      for (int e = 0; e < EL; ++e) acc[e] += pr * vf[e];
    }
    m = mn;
  }
  // The warp's KPW key groups hold the same EL dims per lane: merge them (lanes LPK apart).
#pragma unroll
  for (int o = LPK; o < 32; o <<= 1) {
    const float mo = __shfl_xor_sync(0xffffffffu, m, o), lo = __shfl_xor_sync(0xffffffffu, l, o);
    const float mx = fmaxf(m, mo), c1 = __expf(m - mx), c2 = __expf(mo - mx);
    l = l * c1 + lo * c2;
#pragma unroll
    for (int e = 0; e < EL; ++e) acc[e] = acc[e] * c1 + __shfl_xor_sync(0xffffffffu, acc[e], o) * c2;
    m = mx;
  }
  __shared__ float sm[NW], sl[NW];
  __shared__ float sacc[NW][HD];
  if (lane == 0) { sm[warp] = m; sl[warp] = l; }
  if (grp == 0)
#pragma unroll
    for (int e = 0; e < EL; ++e) sacc[warp][sub * EL + e] = KV8 ? acc[e] * a.v_scale : acc[e];
  __syncthreads();
  write_block_result<T, NW>(a, t, row, h, split, splits, HD, sm, sl, &sacc[0][0], HD);
}

float score_scale(const AttnArgs& a) { return a.scale > 0.f ? a.scale : rsqrtf(static_cast<float>(a.hd)); }

template <typename T, int EPL>
void launch(const AttnArgs& a, cudaStream_t s) {
  const dim3 grid(a.nh, a.n_simt, a.n_splits);
  if (a.kv_fp8) launch("attention", attn_kernel<T, EPL, true>, grid, dim3(kWarps * 32), s, a, score_scale(a));
  else launch("attention", attn_kernel<T, EPL, false>, grid, dim3(kWarps * 32), s, a, score_scale(a));
}

// The E4M3 cache's form, EL elements a lane x U keys in flight: where every (token, head) is one
// block (many streams) 16 x 2, which asks for 8 blocks an SM (<= 64 registers: a batch-64 decode
// step is 2048 equal blocks, 2 waves of 8 blocks on 132 SMs, where 16 x 4's 95 registers allow 5
// an SM, 4 waves with the last a tenth full); where the keys are split (few tokens) the 8-element
// form of the 16-bit cache. bench/gpu/attn-kv8.cu timed the alternatives on an H100: 8 x 4 and
// 16 x 4 one block a (token, head) were 3-4% and 8-9% slower than 16 x 2 at 64 sequences of
// 512-768 keys; at batch 1 (9 splits) 16 x 2 and 16 x 4 were 3% and 7% slower than 8 x 8.
// With split keys (few tokens) the 16-bit cache and the 8-element form run kWideWarps a block, with
// 8 keys in flight a lane (4 at head_dim 256, whose registers would spill).
template <typename T, int HD>
void launch_vec(const AttnArgs& a, cudaStream_t s) {
  const dim3 grid(a.nh, a.n_simt, a.n_splits), block(kVecWarps * 32), wide(kWideWarps * 32);
  constexpr int UW = HD > 128 ? 4 : 8;
  const float sc = score_scale(a);
  if (a.n_splits > 1) {
    if (a.kv_fp8) return launch("attention", attn_vec_kernel<T, HD, true, 8, UW, kWideWarps>, grid, wide, s, a, sc);
    return launch("attention", attn_vec_kernel<T, HD, false, 8, UW, kWideWarps>, grid, wide, s, a, sc);
  }
  if (a.kv_fp8) return launch("attention", attn_vec_kernel<T, HD, true, 16, 2, kVecWarps, 8>, grid, block, s, a, sc);
  launch("attention", attn_vec_kernel<T, HD, false, 8, 4, kVecWarps>, grid, block, s, a, sc);
}


}  // namespace

void attention(DType act, const AttnArgs& a, cudaStream_t s) {
  if (a.T == 0) return;
  if (a.hd > kMaxHeadDim) throw std::runtime_error("cuda: head_dim > 256 is not supported");
  if (a.n_simt < 0 || a.n_simt > a.T || (!a.simt_tokens && a.n_simt != a.T && a.n_simt != 0))
    throw std::runtime_error("cuda: attention token lists are inconsistent");
  if (a.n_tiles > 0 && (a.softcap > 0.f || a.window > 0))
    throw std::runtime_error("cuda: the flash prefill tiles have no soft-capping or sliding window");
  attention_flash(act, a, s);  // the prefill tiles, if any; the SIMT kernel takes the rest
  if (a.n_simt == 0) return;
  if (a.n_splits > 1 && (int64_t)a.n_simt * a.nh > kAttnSplitCounters)
    throw std::runtime_error("cuda: attention splits " + std::to_string(a.n_simt * a.nh) + " (token, head) pairs, the workspace counts " +
                             std::to_string(kAttnSplitCounters));
  const int epl = (a.hd + 31) / 32;
  NS_DISPATCH_ACT(act, E, {
    if (a.hd == 128) launch_vec<E, 128>(a, s);
    else if (a.hd == 64) launch_vec<E, 64>(a, s);
    else if (a.hd == 256) launch_vec<E, 256>(a, s);
    else if (epl <= 1) launch<E, 1>(a, s);
    else if (epl <= 2) launch<E, 2>(a, s);
    else if (epl <= 4) launch<E, 4>(a, s);
    else launch<E, 8>(a, s);
  });
}

}  // namespace ns::cuda
