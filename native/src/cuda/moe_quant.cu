// Quantized mixture-of-experts weights on the GPU (docs/QUANTIZATION.md), weight-only: the routed
// experts and the shared expert stay int8 or E4M3 with one f32 scale per weight row, their inputs
// in the activation dtype (as the CPU backend runs them).
//  - moe_gemv_quant (decode): moe.cu's grouped GEMV over the active experts (same blocks, groups and
//    rows: moe_plan.h) reading 16 one-byte weights a 16-byte load, unpacked in registers, the row's
//    sum times its scale at the end (as gemv_quant does for a dense matrix);
//  - moe_dequant_active (prefill, larger batches): the active slots' weights times their scales into
//    activation-dtype scratch in slot order, for moe_mma's tensor-core tiles (by_slot), a few slots
//    at a time; the same rounding as dequantize (quant_gemm.cu), so a prefill sees the weights a
//    dense weight-only GEMM of the same rows would.
#include <stdexcept>

#include "cuda/cuda_common.h"
#include "cuda/moe.h"
#include "cuda/quant.h"

namespace ns::cuda {
namespace {

using moe::Layout;

// The gate activation of a gated MLP (moe.cu's gate_act).
__device__ __forceinline__ float gate_act_q(float g, bool gelu) {
  return gelu ? 0.5f * g * (1.f + tanhf(0.7978845608028654f * (g + 0.044715f * g * g * g))) : g / (1.f + __expf(-g));
}

// One 16-weight chunk (column 16 i) of the gate (and up) row against up to MT input rows.
template <typename T, DType W, int MT, bool GATED>
__device__ __forceinline__ void chunk16(const uint4& wg, const uint4& wu, const uint4* const (&xr)[MT], int i, int m,
                                        float (&ag)[MT], float (&au)[MT]) {
  float g16[16], u16[16];
  unpack16<W>(wg, g16);
  if constexpr (GATED) unpack16<W>(wu, u16);
#pragma unroll
  for (int s = 0; s < MT; ++s) {
    if (s >= m) break;
    float x16[16];
    unpack8<T>(__ldg(xr[s] + 2 * i), x16);
    unpack8<T>(__ldg(xr[s] + 2 * i + 1), x16 + 8);
#pragma unroll
    for (int e = 0; e < 16; ++e) {
      ag[s] += g16[e] * x16[e];
      if constexpr (GATED) au[s] += u16[e] * x16[e];
    }
  }
}

// One warp per output feature of one group (an active expert or the shared expert), passes of up to
// MT rows (moe_gemv_kernel's work split); each lane streams 16-byte chunks of the feature's row(s).
template <typename T, DType W, int MT, bool GATED>
__global__ void __launch_bounds__(moe::kGemvWarps * 32) moe_gemv_quant_kernel(MoeGemvArgs a, const float* scale, const float* sscale) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int shared_blocks = a.sw ? moe::gemv_blocks(a.sn) : 0;
  const moe::GemvWork wk = moe::gemv_work(blockIdx.x, warp, shared_blocks, moe::gemv_blocks(a.n));
  const uint8_t* Wq;
  const float* S;
  const T* X;
  void* Y;
  const int32_t* src = nullptr;
  int n, k, row0, rows;
  if (wk.group < 0) {
    Wq = static_cast<const uint8_t*>(a.sw);
    S = sscale;
    n = a.sn;
    k = a.sk;
    X = static_cast<const T*>(a.sx);
    Y = a.sy;
    row0 = 0;
    rows = a.s_rows;
    if (wk.feature < n) {  // the shared weights do not depend on the previous kernel: start pulling them
      const uint4* w = reinterpret_cast<const uint4*>(Wq + (size_t)wk.feature * k);
      if (lane < k / 16) asm volatile("prefetch.global.L2 [%0];" ::"l"(w + lane));
    }
    grid_dependency_wait();
  } else {
    grid_dependency_wait();
    const Layout& L = a.layout;
    const int n_active = a.meta[L.n_active], e = a.meta[L.active_e + wk.group];
    row0 = a.meta[L.active_off + wk.group];
    rows = a.meta[L.active_cnt + wk.group];
    if (wk.group >= n_active) return;
    n = a.n;
    k = a.k;
    Wq = static_cast<const uint8_t*>(a.w) + (size_t)e * a.w_stride;
    S = scale + (size_t)e * (GATED ? 2 : 1) * n;
    X = static_cast<const T*>(a.x);
    Y = a.y;
    if constexpr (GATED) src = a.meta + L.perm;
  }
  const int f = wk.feature;
  if (f >= n) return;
  const int k16 = k / 16;
  const uint4* wg = reinterpret_cast<const uint4*>(Wq + (size_t)f * k);
  const uint4* wu = GATED ? reinterpret_cast<const uint4*>(Wq + (size_t)(n + f) * k) : wg;
  for (int r0 = 0; r0 < rows; r0 += MT) {
    const int m = min(MT, rows - r0);
    const uint4* xr[MT];
#pragma unroll
    for (int s = 0; s < MT; ++s) {
      const int row = row0 + r0 + min(s, m - 1);
      xr[s] = reinterpret_cast<const uint4*>(X + (size_t)(src ? src[row] : row) * k);
    }
    float ag[MT], au[MT];
#pragma unroll
    for (int s = 0; s < MT; ++s) ag[s] = au[s] = 0.f;
    // kDepth chunks of each weight row in flight per lane (16 weights a chunk: half moe_gemv's depth
    // covers as many bytes), the last pass predicated, chunks added in increasing order.
    constexpr int kDepth = GATED ? 2 : 4;
    for (int i = lane; i < k16; i += 32 * kDepth) {
      uint4 g[kDepth], u[kDepth];
#pragma unroll
      for (int q = 0; q < kDepth; ++q) {
        const int c = i + 32 * q;
        g[q] = c < k16 ? __ldg(wg + c) : uint4{};
        u[q] = GATED && c < k16 ? __ldg(wu + c) : g[q];
      }
#pragma unroll
      for (int q = 0; q < kDepth; ++q)
        if (i + 32 * q < k16) chunk16<T, W, MT, GATED>(g[q], u[q], xr, i + 32 * q, m, ag, au);
    }
    const float sg = S[f], su = GATED ? S[n + f] : 0.f;
#pragma unroll
    for (int s = 0; s < MT; ++s) {
      if (s >= m) break;
      const float g = warp_sum(ag[s]) * sg;
      const float u = GATED ? warp_sum(au[s]) * su : 0.f;
      if (lane != s) continue;
      const size_t o = (size_t)(row0 + r0 + s) * n + f;
      if constexpr (GATED) static_cast<T*>(Y)[o] = from_f<T>(gate_act_q(g, a.gelu) * u);
      else static_cast<float*>(Y)[o] = g;
    }
  }
}

// out[g - g0][r, c] = T(q_e[r, c] * scale_e[r]) for the expert e of active slot g, 16 elements a
// thread; grid (chunks of N K / 16, slots g0..g1-1). Slots past the step's active count are skipped.
template <typename T, DType W>
__global__ void moe_dequant_active_kernel(const uint8_t* __restrict__ q, const float* __restrict__ scale, size_t stride, int N, int K,
                                          const int32_t* __restrict__ meta, Layout L, int g0, T* __restrict__ out) {
  grid_dependency_wait();
  const int g = g0 + blockIdx.y;
  if (g >= meta[L.n_active]) return;
  const int K16 = K / 16;
  const size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (idx >= (size_t)N * K16) return;
  const int e = meta[L.active_e + g];
  const int r = static_cast<int>(idx / K16);
  float f[16];
  unpack16<W>(reinterpret_cast<const uint4*>(q + (size_t)e * stride)[idx], f);
  const float s = scale[(size_t)e * N + r];
#pragma unroll
  for (int i = 0; i < 16; ++i) f[i] *= s;
  uint4* o = reinterpret_cast<uint4*>(out + (size_t)blockIdx.y * N * K) + 2 * idx;
  o[0] = pack8<T>(f);
  o[1] = pack8<T>(f + 8);
}

template <typename E, DType W, bool GATED>
void launch_gemv(const MoeGemvArgs& a, const float* scale, const float* sscale, int mt, unsigned grid, cudaStream_t s) {
  const dim3 block(moe::kGemvWarps * 32);
  switch (mt) {
    case 1: launch("moe_gemv_quant", moe_gemv_quant_kernel<E, W, 1, GATED>, dim3(grid), block, s, a, scale, sscale); break;
    case 2: launch("moe_gemv_quant", moe_gemv_quant_kernel<E, W, 2, GATED>, dim3(grid), block, s, a, scale, sscale); break;
    case 4: launch("moe_gemv_quant", moe_gemv_quant_kernel<E, W, 4, GATED>, dim3(grid), block, s, a, scale, sscale); break;
    default: launch("moe_gemv_quant", moe_gemv_quant_kernel<E, W, moe::kGemvTokens, GATED>, dim3(grid), block, s, a, scale, sscale); break;
  }
}

template <typename E, DType W>
void launch_gemv_gated(const MoeGemvArgs& a, const float* scale, const float* sscale, bool gated, int mt, unsigned grid, cudaStream_t s) {
  if (gated) launch_gemv<E, W, true>(a, scale, sscale, mt, grid, s);
  else launch_gemv<E, W, false>(a, scale, sscale, mt, grid, s);
}

}  // namespace

void moe_gemv_quant(DType act, DType wt, const MoeGemvArgs& a, const float* scale, const float* shared_scale, bool gated,
                    int tokens_per_pass, cudaStream_t s) {
  const unsigned grid = (a.sw ? moe::gemv_blocks(a.sn) : 0) + a.groups * moe::gemv_blocks(a.n);
  if (grid == 0) return;
  if (a.k % 16 != 0 || (a.sw && a.sk % 16 != 0)) throw std::runtime_error("cuda: moe_gemv_quant needs K % 16 == 0");
  if (wt != DType::I8 && wt != DType::F8E4M3) throw std::runtime_error("cuda: moe_gemv_quant takes int8 or E4M3 weights");
  NS_DISPATCH_ACT(act, E, {
    if (wt == DType::I8) launch_gemv_gated<E, DType::I8>(a, scale, shared_scale, gated, tokens_per_pass, grid, s);
    else launch_gemv_gated<E, DType::F8E4M3>(a, scale, shared_scale, gated, tokens_per_pass, grid, s);
  });
  NS_LAUNCHED("moe_gemv_quant");
}

void moe_dequant_active(DType act, DType wt, const void* q, const float* scale, size_t stride, int N, int K, const int32_t* meta,
                        const moe::Layout& layout, int g0, int g1, void* out, cudaStream_t s) {
  if (g1 <= g0 || N == 0) return;
  if (K % 16 != 0) throw std::runtime_error("cuda: moe_dequant_active needs K % 16 == 0");
  const dim3 grid(ceil_div((size_t)N * (K / 16), 256), g1 - g0);
  const uint8_t* qb = static_cast<const uint8_t*>(q);
  NS_DISPATCH_ACT(act, E, {
    if (wt == DType::I8)
      launch("moe_dequant_active", moe_dequant_active_kernel<E, DType::I8>, grid, dim3(256), s, qb, scale, stride, N, K, meta, layout, g0,
             static_cast<E*>(out));
    else
      launch("moe_dequant_active", moe_dequant_active_kernel<E, DType::F8E4M3>, grid, dim3(256), s, qb, scale, stride, N, K, meta, layout,
             g0, static_cast<E*>(out));
  });
  NS_LAUNCHED("moe_dequant_active");
}

}  // namespace ns::cuda
