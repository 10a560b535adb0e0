// Activation rows produced straight into E4M3 for the W8A8 GEMMs of more than 4 rows (matmul_fp8,
// quant_matmul.cu): the RMSNorm of the residual stream (rmsnorm_quant) and SwiGLU of the gate|up
// product (swiglu_quant) write the E4M3 row and its scale, where the plain kernels write an
// activation-dtype row that quantize_act then reads twice (amax, then the codes). A block holds
// its row in registers. The values quantized are the ones the plain kernels write (rounded to the
// activation dtype), with quantize_act's scale rule: the codes and scales are bit-identical to
// rmsnorm / swiglu followed by quantize_act.
#include <algorithm>
#include <stdexcept>

#include "cuda/cuda_common.h"
#include "cuda/kernels.h"
#include "cuda/norm_row.h"
#include "cuda/quant.h"

namespace ns::cuda {
namespace {

constexpr int kNormChunks = 4;   // chunks of 8 a thread: rows up to 8 * 4 * 1024 = 32768 (rmsnorm_vec_kernel's)
constexpr int kSwigluChunks = 6;  // rows up to 8 * 6 * 1024 = 49152

// Threads for a row of n8 chunks of 8, V chunks a thread; 0: the row does not fit one block.
int row_block(int n8, int V) {
  const int t = std::max(32, (int)ceil_div(n8, (size_t)V * 32) * 32);
  return t <= 1024 ? t : 0;
}

// The row's scale (static, else amax / 448 with quantize_act's cap and floor), then its E4M3 codes:
// thread i holds chunks i + c * blockDim.x (c < V) of the row, those below n8 valid.
template <int V>
__device__ __forceinline__ void quantize_held_row(float (&y)[V][8], int n8, const float* static_scale, float amax_ub,
                                                  uint8_t* q, float* scale) {
  float s;
  if (static_scale) {
    s = *static_scale;
  } else {
    float m = 0.f;
#pragma unroll
    for (int c = 0; c < V; ++c)
      if (threadIdx.x + c * blockDim.x < n8)
#pragma unroll
        for (int e = 0; e < 8; ++e) m = fmaxf(m, fabsf(y[c][e]));
    __shared__ float part[32];
    m = block_max(m, part);
    if (amax_ub > 0.f) m = fminf(m, amax_ub);
    s = fmaxf(__fdiv_rn(m, 448.f), 1.f / (448.f * 512.f));
  }
  if (threadIdx.x == 0) *scale = s;
  uint2* qr = reinterpret_cast<uint2*>(q);
#pragma unroll
  for (int c = 0; c < V; ++c) {
    const int i = threadIdx.x + c * blockDim.x;
    if (i < n8) {
      float f[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) f[e] = __fdiv_rn(y[c][e], s);
      qr[i] = pack_e4m3x8(f);
    }
  }
}

// rmsnorm_vec_kernel's arithmetic (kernels_basic.cu), each output rounded to T, then quantized.
template <typename T>
__global__ void rmsnorm_quant_kernel(const float* __restrict__ x, int H, const float* __restrict__ w, float eps, bool rnd,
                                     const float* __restrict__ static_scale, float amax_ub, uint8_t* __restrict__ q,
                                     float* __restrict__ scale) {
  grid_dependency_wait();
  const int r = blockIdx.x, H8 = H / 8;
  float v[kNormChunks][8];
  rmsnorm_row<T, kNormChunks>(x + (size_t)r * H, H, w, eps, rnd, v);
#pragma unroll
  for (int c = 0; c < kNormChunks; ++c)
#pragma unroll
    for (int e = 0; e < 8; ++e) v[c][e] = to_f(from_f<T>(v[c][e]));
  quantize_held_row<kNormChunks>(v, H8, static_scale, amax_ub, q + (size_t)r * H, scale + r);
}

// swiglu_vec_kernel's arithmetic, each output rounded to T, then quantized.
template <typename T>
__global__ void swiglu_quant_kernel(const T* __restrict__ gu, int I, bool rnd, const float* __restrict__ static_scale, float amax_ub,
                                    uint8_t* __restrict__ q, float* __restrict__ scale) {
  grid_dependency_wait();
  const int t = blockIdx.x, I8 = I / 8;
  const uint4* g4 = reinterpret_cast<const uint4*>(gu + (size_t)t * 2 * I);
  float y[kSwigluChunks][8];
#pragma unroll
  for (int c = 0; c < kSwigluChunks; ++c) {
    const int i = threadIdx.x + c * blockDim.x;
    if (i < I8) {
      float g[8], u[8];
      unpack8<T>(g4[i], g);
      unpack8<T>(g4[I8 + i], u);
#pragma unroll
      for (int e = 0; e < 8; ++e) y[c][e] = to_f(from_f<T>(round_if<T>(rnd, g[e] / (1.f + __expf(-g[e]))) * u[e]));
    }
  }
  quantize_held_row<kSwigluChunks>(y, I8, static_scale, amax_ub, q + (size_t)t * I, scale + t);
}

}  // namespace

bool rmsnorm_quant(DType act, const float* x, int R, int H, const float* w, float eps, const float* static_scale, float amax_ub, void* q,
                   float* scale, cudaStream_t s) {
  const int threads = H % 8 == 0 ? row_block(H / 8, kNormChunks) : 0;
  if (threads == 0) return false;
  if (R == 0) return true;
  NS_DISPATCH_ACT(act, E, {
    launch("rmsnorm_quant", rmsnorm_quant_kernel<E>, dim3(R), dim3(threads), s, x, H, w, eps, rounds(kRoundNorm), static_scale, amax_ub,
           static_cast<uint8_t*>(q), scale);
  });
  NS_LAUNCHED("rmsnorm_quant");
  return true;
}

bool swiglu_quant(DType act, const void* gu, int T, int I, const float* static_scale, float amax_ub, void* q, float* scale,
                  cudaStream_t s) {
  const int threads = I % 8 == 0 ? row_block(I / 8, kSwigluChunks) : 0;
  if (threads == 0) return false;
  if (T == 0) return true;
  NS_DISPATCH_ACT(act, E, {
    launch("swiglu_quant", swiglu_quant_kernel<E>, dim3(T), dim3(threads), s, static_cast<const E*>(gu), I, rounds(kRoundSilu),
           static_scale, amax_ub, static_cast<uint8_t*>(q), scale);
  });
  NS_LAUNCHED("swiglu_quant");
  return true;
}

}  // namespace ns::cuda
