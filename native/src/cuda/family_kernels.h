// Launchers of family.cu: the kernels of the model families' forward (CudaBackend's family path;
// the routed experts' kernels: moe.h).
// `act` is the activation dtype (bf16 / fp16); pointers are device memory; enqueued on `s`.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuda/kernels.h"
#include "engine.h"

namespace ns::cuda {

// Per token: q/k/v bias (activation dtype, may be null), q and k heads RMSNorm'ed over hd with q_norm / k_norm
// (null: none), RoPE on the first 2 * half dims with the token's cos/sin rows ([T, half] f32,
// attention factor included), q written back, k and v into the paged cache `kv` (the activation
// dtype or E4M3, as kernels.h's KvCache says) at slot[t] (< 0: none).
void family_qkv(DType act, void* qkv, const void* bias, const float* q_norm, const float* k_norm, float eps, int T,
                int nh, int nkv, int hd, int half, const float* cos, const float* sin, const int32_t* slot,
                const KvCache& kv, int block_size, cudaStream_t s);

// out[t, i] = act(gate + bias) * (up + bias) for gate|up rows of gu [T, 2I]; gelu: tanh GELU, else SiLU.
void gated_act(DType act, const void* gu, const float* bias, int T, int I, bool gelu, void* out, cudaStream_t s);
void scale_f32(float* x, size_t n, float a, cudaStream_t s);
// x = cap * tanh(x / cap)
void softcap_f32(float* x, size_t n, float cap, cudaStream_t s);
// The end of a sublayer, per token (f32 rows of H): v = x (+ bias); with post_w v = rmsnorm(v) *
// post_w (Gemma's post-norms); residual += v; with next_w xb = act(rmsnorm(residual) * next_w),
// the next sublayer's input (rounded as rmsnorm() rounds).
void add_norm(DType act, float* residual, const float* x, const float* bias, const float* post_w, const float* next_w,
              float eps, int T, int H, void* xb, cudaStream_t s);

}  // namespace ns::cuda
