// Kernels of the model families' forward (CudaBackend::enqueue_family_forward, cuda_step.cu):
// q/k/v bias + q/k RMSNorm + RoPE from per-token cos/sin tables (every RoPE type, computed on the
// host by the same code as the CPU backend's) + KV write (their attention: attention.cu); gated
// MLP activations (SwiGLU, GeGLU); the end of each sublayer (residual add, Gemma's post-norm, the
// next input norm) in one kernel. K/V are cached in the activation dtype or, with the fp8 KV cache
// (KV8), as E4M3 of k / k_scale and v / v_scale, stored by the helper the Llama path's kernels use
// (quant.h), so both forwards keep one cache format and one attention. Plain SIMT kernels (the
// routed experts: moe.cu); every kernel waits for its predecessor first (launch() allows
// programmatic dependent launch).
#include "cuda/act_math.h"
#include "cuda/add_norm.h"
#include "cuda/cuda_common.h"
#include "cuda/family_kernels.h"
#include "cuda/kv_layout.h"
#include "cuda/quant.h"

namespace ns::cuda {
namespace {

// One block per (token, head) of q|k|v: x = row (+ bias); x = rmsnorm(x) * w (q and k heads with
// qk norm); rotate the first 2 * half dims (HF rotate_half); q back in place, k and v to the cache.
template <typename T, bool KV8>
__global__ void qkv_kernel(T* qkv, const T* bias, const float* qn, const float* kn, float eps, int nh, int nkv,
                           int hd, int half, const float* cos, const float* sin, const int32_t* slot, void* kc, void* vc,
                           int B, float ks, float vs) {
  grid_dependency_wait();
  const int t = blockIdx.x, h = blockIdx.y;
  const int sl = slot[t];
  if (h >= nh && sl < 0) return;  // padding of a CUDA-graph step: no KV write
  T* row = qkv + (size_t)t * (nh + 2 * nkv) * hd;
  __shared__ float x[256];
  __shared__ float part[32];
  const int i = threadIdx.x;
  float v = 0.f;
  if (i < hd) {
    v = to_f(row[h * hd + i]);
    if (bias) v += to_f(bias[h * hd + i]);
  }
  const float* w = h < nh ? qn : h < nh + nkv ? kn : nullptr;
  if (w) {
    const float ss = block_sum(i < hd ? v * v : 0.f, part);
    if (i < hd) v = w[i] * (v * rsqrtf(ss / hd + eps));
  }
  if (h < nh + nkv) {
    if (i < hd) x[i] = v;
    __syncthreads();
    if (i < 2 * half) {
      const int j = i % half;
      float o1, o2;
      table_rotate(x[j], x[j + half], cos[(size_t)t * half + j], sin[(size_t)t * half + j], o1, o2);
      v = i < half ? o1 : o2;
    }
  }
  if (i < hd) {
    if (h < nh) row[h * hd + i] = from_f<T>(v);
    else if (h < nh + nkv) store_kv<T, KV8>(kc, kv_offset(sl / B, sl % B, h - nh, nkv, B, hd) + i, from_f<T>(v), ks);
    else store_kv<T, KV8>(vc, kv_offset(sl / B, sl % B, h - nh - nkv, nkv, B, hd) + i, from_f<T>(v), vs);
  }
}

// out[t, i] = act(gate) * up with gate|up = gu[t] (+ bias), act = SiLU or tanh GELU, in f32.
template <typename T>
__global__ void gated_act_kernel(const T* gu, const float* bias, int I, size_t n, bool gelu, T* out) {
  grid_dependency_wait();
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    const size_t t = i / I, j = i % I;
    float g = to_f(gu[t * 2 * I + j]), u = to_f(gu[t * 2 * I + I + j]);
    if (bias) { g += bias[j]; u += bias[I + j]; }
    const float a = gelu ? 0.5f * g * (1.f + tanhf(0.7978845608028654f * (g + 0.044715f * g * g * g))) : g / (1.f + __expf(-g));
    out[i] = from_f<T>(a * u);
  }
}

__global__ void scale_kernel(float* x, size_t n, float a) {
  grid_dependency_wait();
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) x[i] *= a;
}

__global__ void softcap_kernel(float* x, size_t n, float cap) {
  grid_dependency_wait();
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) x[i] = tanhf(x[i] / cap) * cap;
}

// REGS: the row in registers (row_threads(H, 1024) threads); else add_norm_row's loops.
template <typename T, bool REGS>
__global__ void __launch_bounds__(1024) add_norm_kernel(float* res, const float* x, const float* bias, const float* post_w,
                                                        const float* next_w, float eps, int H, T* xb, bool rnd) {
  grid_dependency_wait();
  const size_t o = (size_t)blockIdx.x * H;
  if constexpr (REGS) {
    float v[kRowPer];
#pragma unroll
    for (int e = 0; e < kRowPer; ++e) {
      const int i = threadIdx.x + e * blockDim.x;
      v[e] = i < H ? x[o + i] + (bias ? bias[i] : 0.f) : 0.f;
    }
    add_norm_regs<T>(v, res + o, post_w, next_w, eps, H, next_w ? xb + o : nullptr, rnd);
  } else {
    add_norm_row<T>(res + o, x + o, bias, post_w, next_w, eps, H, next_w ? xb + o : nullptr, rnd);
  }
}

unsigned grid_of(size_t n) { return static_cast<unsigned>(std::min<size_t>((n + 255) / 256, 65535)); }

}  // namespace

void family_qkv(DType act, void* qkv, const void* bias, const float* q_norm, const float* k_norm, float eps, int T,
                int nh, int nkv, int hd, int half, const float* cos, const float* sin, const int32_t* slot,
                const KvCache& kv, int block_size, cudaStream_t s) {
  if (T == 0) return;
  const dim3 grid(T, nh + 2 * nkv), block(hd <= 128 ? 128 : 256);
  NS_DISPATCH_ACT(act, E, {
    if (kv.fp8)
      launch("family_qkv", qkv_kernel<E, true>, grid, block, s, static_cast<E*>(qkv), static_cast<const E*>(bias), q_norm, k_norm, eps,
             nh, nkv, hd, half, cos, sin, slot, kv.k, kv.v, block_size, kv.k_scale, kv.v_scale);
    else
      launch("family_qkv", qkv_kernel<E, false>, grid, block, s, static_cast<E*>(qkv), static_cast<const E*>(bias), q_norm, k_norm, eps,
             nh, nkv, hd, half, cos, sin, slot, kv.k, kv.v, block_size, kv.k_scale, kv.v_scale);
  });
  NS_LAUNCHED("family_qkv");
}

void gated_act(DType act, const void* gu, const float* bias, int T, int I, bool gelu, void* out, cudaStream_t s) {
  const size_t n = (size_t)T * I;
  if (n == 0) return;
  NS_DISPATCH_ACT(act, E, {
    launch("gated_act", gated_act_kernel<E>, dim3(grid_of(n)), dim3(256), s, static_cast<const E*>(gu), bias, I, n, gelu,
           static_cast<E*>(out));
  });
  NS_LAUNCHED("gated_act");
}

void scale_f32(float* x, size_t n, float a, cudaStream_t s) {
  if (n == 0) return;
  launch("scale_f32", scale_kernel, dim3(grid_of(n)), dim3(256), s, x, n, a);
  NS_LAUNCHED("scale_f32");
}

void softcap_f32(float* x, size_t n, float cap, cudaStream_t s) {
  if (n == 0) return;
  launch("softcap_f32", softcap_kernel, dim3(grid_of(n)), dim3(256), s, x, n, cap);
  NS_LAUNCHED("softcap_f32");
}

void add_norm(DType act, float* residual, const float* x, const float* bias, const float* post_w, const float* next_w,
              float eps, int T, int H, void* xb, cudaStream_t s) {
  if (T == 0) return;
  const bool rnd = rounds(kRoundNorm);
  const int threads = row_threads(H, 1024);
  NS_DISPATCH_ACT(act, E, {
    if (threads > 0)
      launch("add_norm", add_norm_kernel<E, true>, dim3(T), dim3(threads), s, residual, x, bias, post_w, next_w, eps, H,
             static_cast<E*>(xb), rnd);
    else
      launch("add_norm", add_norm_kernel<E, false>, dim3(T), dim3(256), s, residual, x, bias, post_w, next_w, eps, H,
             static_cast<E*>(xb), rnd);
  });
  NS_LAUNCHED("add_norm");
}

}  // namespace ns::cuda
