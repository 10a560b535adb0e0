// Tensor-core causal attention for prefill (FlashAttention-2 forward) over the paged KV cache.
// One block of 4 warps per (q head, query tile): a tile is up to kFlashTileQ = 64 consecutive new
// tokens of one sequence (listed by the host in AttnArgs::tiles), each warp owns 16 query rows.
// Keys are walked in tiles of 64, gathered through the block table into shared memory with
// cp.async (K of the next tile streams in while P.V of this one runs, V while Q.K^T runs); S = Q.K^T
// and O += P.V are mma.sync m16n8k16 (bf16/fp16 in, fp32 accumulate) fed by ldmatrix from an XOR-
// swizzled layout (16-byte chunk c of row r sits at chunk c ^ (r & 7): conflict-free ldmatrix).
// Numerics as FlashAttention-2 / SDPA's flash backend: S in fp32, scale 1/sqrt(hd) applied in fp32
// (folded with log2(e) into exp2), online softmax per key tile, P rounded to the activation dtype
// for P.V, the row sum l accumulated from fp32 P, out = acc / l rounded to the activation dtype.
// Causal by absolute position: query row t sees keys j <= tok_pos[t].
// The fp8 KV cache (KV8): tiles are read with plain 8-byte loads and widened to the activation
// dtype in shared memory (E4M3 values are exact in bf16 and fp16); the layer's scales are folded in
// exactly (S = k_scale * Q.K8^T through the softmax scale, O = v_scale * P.V8 / l at the end).
#include <cfloat>
#include <cstdint>

#include "cuda/cuda_common.h"
#include "cuda/flash_layout.h"
#include "cuda/kernels.h"
#include "cuda/kv_layout.h"
#include "cuda/mma.h"
#include "cuda/quant.h"

namespace ns::cuda {
namespace {

using flash::swz;

constexpr int kBr = kFlashTileQ;  // query rows per block (16 per warp)
constexpr int kBc = 64;           // keys per tile
constexpr int kWarps = kBr / 16;
constexpr int kThreads = kWarps * 32;

// 2^x on the SFU (ex2.approx, ~2 ulp; 2^-inf = 0), as FlashAttention builds with fast math.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Two floats -> one register of two 16-bit values, x in the low half (the lower column).
__device__ __forceinline__ uint32_t pack2(float x, float y, __nv_bfloat16*) {
  __nv_bfloat162 v = __floats2bfloat162_rn(x, y);
  return *reinterpret_cast<uint32_t*>(&v);
}
__device__ __forceinline__ uint32_t pack2(float x, float y, __half*) {
  __half2 v = __floats2half2_rn(x, y);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Copies key/value rows [j0, j0 + kBc) of kv head kh into a swizzled [kBc][D] tile; rows at or
// beyond n_keys are zero-filled (uninitialised cache memory may hold NaN bit patterns).
template <typename T, int D, bool KV8>
__device__ __forceinline__ void load_kv_tile(T* dst, const void* cache, const int32_t* bt, int B, int nkv, int kh, int j0,
                                             int n_keys) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row (8 elements of T)
#pragma unroll
  for (int i = 0; i < kBc * kChunks / kThreads; ++i) {
    const int idx = threadIdx.x + i * kThreads;
    const int r = idx / kChunks, c = idx % kChunks;
    const int j = j0 + r;
    const bool valid = j < n_keys;
    const int jj = valid ? j : 0;
    const size_t off = kv_offset(bt[jj / B], jj % B, kh, nkv, B, D) + c * 8;
    if constexpr (KV8) {  // synchronous: the barriers that follow publish it like a landed cp.async
      float f[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      if (valid) unpack_e4m3x8(*reinterpret_cast<const uint2*>(static_cast<const uint8_t*>(cache) + off), f);
      *reinterpret_cast<uint4*>(dst + swz<D>(r, c)) = pack8<T>(f);
    } else {
      cp_async16(smem_addr(dst + swz<D>(r, c)), static_cast<const T*>(cache) + off, valid);
    }
  }
}

template <typename T, int D, bool KV8>
__global__ void __launch_bounds__(kThreads) flash_prefill_kernel(AttnArgs a, float scale_log2) {
  grid_dependency_wait();
  constexpr int kDK = D / 16;  // k-steps of Q.K^T over the head dim
  constexpr int kNT = kBc / 8;  // n-tiles (8 keys) of S
  constexpr int kDT = D / 8;    // n-tiles (8 dims) of O
  __shared__ __align__(128) T sQ[kBr * D];
  __shared__ __align__(128) T sK[kBc * D];
  __shared__ __align__(128) T sV[kBc * D];

  const int h = blockIdx.x;
  const int t0 = a.tiles[2 * blockIdx.y], n = a.tiles[2 * blockIdx.y + 1];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int nkv = a.nkv, B = a.block_size;
  const int kh = h / (a.nh / nkv);
  const int32_t* bt = a.block_tables + a.seq_bt_off[a.tok_seq[t0]];
  const void* kc = a.kcache;
  const void* vc = a.vcache;
  const int p_first = a.tok_pos[t0];
  const int n_keys = a.tok_pos[t0 + n - 1] + 1;  // the tile's tokens are consecutive positions
  // Absolute positions of this thread's two accumulator rows (lane / 4 and lane / 4 + 8 of its
  // warp's 16); rows past the tile's end borrow the last row's position (computed, never written).
  int row_pos[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) row_pos[i] = a.tok_pos[t0 + min(warp * 16 + flash::c_row(lane, 2 * i), n - 1)];

  // Q tile (rows past n zero-filled) and key tile 0: group 0.
  {
    const size_t q_stride = (size_t)(a.nh + 2 * nkv) * D;
    const T* q = static_cast<const T*>(a.qkv) + (size_t)h * D;
    constexpr int kChunks = D / 8;
#pragma unroll
    for (int i = 0; i < kBr * kChunks / kThreads; ++i) {
      const int idx = threadIdx.x + i * kThreads;
      const int r = idx / kChunks, c = idx % kChunks;
      const bool valid = r < n;
      cp_async16(smem_addr(sQ + swz<D>(r, c)), q + (size_t)(t0 + (valid ? r : 0)) * q_stride + c * 8, valid);
    }
  }
  load_kv_tile<T, D, KV8>(sK, kc, bt, B, nkv, kh, 0, n_keys);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();

  // Q fragments (A operand, row-major), kept in registers for the whole key loop.
  uint32_t qf[kDK][4];
#pragma unroll
  for (int ks = 0; ks < kDK; ++ks)
    ldsm_x4(smem_addr(sQ + swz<D>(flash::q_row(warp, lane), flash::q_chunk(ks, lane))), qf[ks]);

  float o[kDT][4];
#pragma unroll
  for (int i = 0; i < kDT; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};  // l: this thread's columns only

  // Warps whose 16 rows all lie past the tile's end only help with the copies and barriers.
  const bool active = warp * 16 < n;
  const int n_tiles = (n_keys + kBc - 1) / kBc;
  for (int kt = 0; kt < n_tiles; ++kt) {
    const int j0 = kt * kBc;
    load_kv_tile<T, D, KV8>(sV, vc, bt, B, nkv, kh, j0, n_keys);
    cp_async_commit();
    cp_async_wait<1>();  // this tile's K has landed (V may still be in flight)
    __syncthreads();

    // S = Q.K^T; each ldmatrix.x4 of K feeds n-tiles 2 np and 2 np + 1 (flash_layout.h).
    float s[kNT][4];
#pragma unroll
    for (int i = 0; i < kNT; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
    if (active) {
#pragma unroll
      for (int ks = 0; ks < kDK; ++ks) {
#pragma unroll
        for (int np = 0; np < kNT / 2; ++np) {
          uint32_t b[4];
          ldsm_x4(smem_addr(sK + swz<D>(flash::k_row(np, lane), flash::k_chunk(ks, lane))), b);
          mma16816(s[2 * np], qf[ks], b[0], b[1], static_cast<T*>(nullptr));
          mma16816(s[2 * np + 1], qf[ks], b[2], b[3], static_cast<T*>(nullptr));
        }
      }
    }
    __syncthreads();  // every warp is done with sK: stream the next key tile into it
    if (kt + 1 < n_tiles) load_kv_tile<T, D, KV8>(sK, kc, bt, B, nkv, kh, j0 + kBc, n_keys);
    cp_async_commit();  // (possibly empty group: keeps the wait counts uniform)

    // Online softmax in the log2 domain; s[nt][2 i + e] is row c_row(lane, 2 i) of the warp's 16,
    // key j0 + 8 nt + c_col(lane, e). A row's 64 keys are spread over the 4 lanes of a quad.
    const bool masked = j0 + kBc - 1 > p_first;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      if (!active) break;
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = s[nt][2 * i + e];
          x *= scale_log2;
          if (masked && j0 + nt * 8 + flash::c_col(lane, e) > row_pos[i]) x = -INFINITY;
          mx = fmaxf(mx, x);
        }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[i], mx);
      const float m_use = m_new == -INFINITY ? 0.f : m_new;  // a row with no visible key yet
      const float corr = fast_exp2(m[i] - m_use);
      m[i] = m_new;
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = s[nt][2 * i + e];
          x = fast_exp2(x - m_use);
          sum += x;
        }
      l[i] = l[i] * corr + sum;
#pragma unroll
      for (int dt = 0; dt < kDT; ++dt) { o[dt][2 * i] *= corr; o[dt][2 * i + 1] *= corr; }
    }

    cp_async_wait<1>();  // this tile's V has landed (the next K may still be in flight)
    __syncthreads();
    // O += P.V: P (rounded to T) from the S accumulators as A fragments; V read transposed, each
    // ldmatrix.x4.trans feeds d-tiles 2 dp and 2 dp + 1 (flash_layout.h).
#pragma unroll
    for (int kk = 0; kk < kBc / 16; ++kk) {
      if (!active) break;
      uint32_t pa[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const float* src = s[flash::p_ntile(kk, r)] + flash::p_elem(r);
        pa[r] = pack2(src[0], src[1], static_cast<T*>(nullptr));
      }
#pragma unroll
      for (int dp = 0; dp < kDT / 2; ++dp) {
        uint32_t b[4];
        ldsm_x4_trans(smem_addr(sV + swz<D>(flash::v_row(kk, lane), flash::v_chunk(dp, lane))), b);
        mma16816(o[2 * dp], pa, b[0], b[1], static_cast<T*>(nullptr));
        mma16816(o[2 * dp + 1], pa, b[2], b[3], static_cast<T*>(nullptr));
      }
    }
    __syncthreads();  // every warp is done with sV before the next tile's V overwrites it
  }
  cp_async_wait<0>();

  // out[t0 + r, h, :] = o / l for the tile's real rows; a quad of lanes holds one row's columns.
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    float sum = l[i];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const float inv = sum > 0.f ? (KV8 ? a.v_scale : 1.f) / sum : 0.f;
    const int r = warp * 16 + flash::c_row(lane, 2 * i);
    if (r >= n) continue;
    T* out = static_cast<T*>(a.out) + ((size_t)(t0 + r) * a.nh + h) * D + flash::c_col(lane, 0);
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt)
      *reinterpret_cast<uint32_t*>(out + dt * 8) =
          pack2(o[dt][2 * i] * inv, o[dt][2 * i + 1] * inv, static_cast<T*>(nullptr));
  }
}

template <typename T, int D>
void launch_flash(const AttnArgs& a, cudaStream_t s) {
  const float scale_log2 = 1.4426950408889634f / sqrtf(static_cast<float>(D));
  if (a.kv_fp8)
    launch("flash attention", flash_prefill_kernel<T, D, true>, dim3(a.nh, a.n_tiles), dim3(kThreads), s, a, scale_log2 * a.k_scale);
  else launch("flash attention", flash_prefill_kernel<T, D, false>, dim3(a.nh, a.n_tiles), dim3(kThreads), s, a, scale_log2);
}

}  // namespace

bool flash_attention_supported(int head_dim) { return head_dim == 64 || head_dim == 128; }

void attention_flash(DType act, const AttnArgs& a, cudaStream_t s) {
  if (a.n_tiles == 0) return;
  if (!flash_attention_supported(a.hd)) throw std::runtime_error("cuda: flash attention needs head_dim 64 or 128");
  NS_DISPATCH_ACT(act, E, {
    if (a.hd == 128) launch_flash<E, 128>(a, s);
    else launch_flash<E, 64>(a, s);
  });
}

}  // namespace ns::cuda
