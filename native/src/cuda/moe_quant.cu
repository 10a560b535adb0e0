// Quantized mixture-of-experts weights on the GPU (docs/QUANTIZATION.md), weight-only: the routed
// experts and the shared expert stay int8 or E4M3 with one f32 scale per weight row, their inputs
// in the activation dtype (as the CPU backend runs them). Decode reads them in moe.cu's grouped GEMV
// (16 one-byte weights a 16-byte load, the row's sum times its scale). Here:
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

}  // namespace

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
