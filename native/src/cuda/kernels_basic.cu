// Elementwise and row-wise kernels: dtype conversion, embedding, RMSNorm, SwiGLU, adds.
// Rounding follows Hugging Face transformers' bf16/fp16 forward op by op (docs/ENGINE.md "CUDA
// numerics"): every tensor HF materialises in the activation dtype is rounded to it here too, so
// our logits track HF's own rounding instead of adding an independent one.
#include <algorithm>
#include <cstdlib>

#include "common/settings.h"
#include "cuda/act_math.h"
#include "cuda/cuda_common.h"
#include "cuda/kernels.h"
#include "cuda/norm_row.h"

namespace ns::cuda {

int round_mask() {
  static const int mask = settings().cuda_round & kRoundHF;
  return mask;
}

namespace {

template <typename D, typename S>
__global__ void convert_kernel(D* dst, const S* src, size_t n) {
  grid_dependency_wait();
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    dst[i] = from_f<D>(to_f(src[i]));
}

template <typename T>
__global__ void embedding_kernel(const T* emb, const int32_t* tokens, int H, int vstart, int vend, float* res) {
  grid_dependency_wait();
  const int t = blockIdx.x;
  const int id = tokens[t];
  float* out = res + (size_t)t * H;
  const bool mine = id >= vstart && id < vend;
  const T* row = emb + (size_t)(mine ? id - vstart : 0) * H;
  for (int i = threadIdx.x; i < H; i += blockDim.x) out[i] = mine ? to_f(row[i]) : 0.f;
}

template <typename T>
__global__ void rmsnorm_kernel(const float* x, const int32_t* rows, int H, const float* w, float eps, T* out, bool rnd) {
  grid_dependency_wait();
  const int r = blockIdx.x;
  const float* xr = x + (size_t)(rows ? rows[r] : r) * H;
  float ss = 0.f;
  for (int i = threadIdx.x; i < H; i += blockDim.x) ss += xr[i] * xr[i];
  __shared__ float part[32];
  const float inv = rsqrtf(block_sum(ss, part) / H + eps);
  T* o = out + (size_t)r * H;
  // HF: weight * (x * rsqrt(var + eps)).to(dtype): the normalised row is rounded before the weight.
  for (int i = threadIdx.x; i < H; i += blockDim.x) o[i] = from_f<T>(round_if<T>(rnd, xr[i] * inv) * w[i]);
}

// H % 8 == 0 and H <= 8 * kNormVec * blockDim: each thread keeps its kNormVec chunks of 8 values in
// registers between the sum of squares and the output (one read of the row, 16-byte stores).
constexpr int kNormVec = 4;

template <typename T>
__global__ void rmsnorm_vec_kernel(const float* x, const int32_t* rows, int H, const float* w, float eps, T* out, bool rnd) {
  const int r = blockIdx.x, H8 = H / 8;
  float wv[kNormVec][8], v[kNormVec][8];
  load_row8<kNormVec>(w, H, wv);  // the weights' latency hidden behind the previous kernel's drain
  // One block a row: the next kernel (a GEMV, which fills the GPU) may take the free SMs now and
  // pull its first weights into L2 while this one runs.
  grid_dependents_launch();
  grid_dependency_wait();
  rmsnorm_row<T, kNormVec>(x + (size_t)(rows ? rows[r] : r) * H, H, wv, eps, rnd, v);
  uint4* o = reinterpret_cast<uint4*>(out + (size_t)r * H);
#pragma unroll
  for (int c = 0; c < kNormVec; ++c) {
    const int i = threadIdx.x + c * blockDim.x;
    if (i < H8) o[i] = pack8<T>(v[c]);
  }
}

template <typename T>
__global__ void swiglu_kernel(const T* gu, int I, size_t n, T* out, bool rnd) {
  grid_dependency_wait();
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    const size_t t = i / I, j = i % I;
    const float g = to_f(gu[t * 2 * I + j]);
    const float u = to_f(gu[t * 2 * I + I + j]);
    out[i] = from_f<T>(silu_mul<T>(g, u, rnd));
  }
}

// I % 8 == 0: grid (chunks of 8 * 256 columns, token), 16-byte loads and stores, no 64-bit division.
template <typename T>
__global__ void swiglu_vec_kernel(const T* gu, int I, T* out, bool rnd) {
  grid_dependency_wait();
  const int t = blockIdx.y, c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= I / 8) return;
  const uint4* g4 = reinterpret_cast<const uint4*>(gu + (size_t)t * 2 * I);
  float g[8], u[8], y[8];
  unpack8<T>(g4[c], g);
  unpack8<T>(g4[I / 8 + c], u);
#pragma unroll
  for (int e = 0; e < 8; ++e) y[e] = silu_mul<T>(g[e], u[e], rnd);
  reinterpret_cast<uint4*>(out + (size_t)t * I)[c] = pack8<T>(y);
}

// residual = round(residual + round(x)): the projection's output and the sum are both tensors of
// the activation dtype in HF (x may already be in it, or an fp32 all-reduced partial sum).
template <typename T, typename S>
__global__ void residual_add_kernel(float* res, const S* x, size_t n, bool rnd) {
  grid_dependency_wait();
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    res[i] = round_if<T>(rnd, res[i] + round_if<T>(rnd, to_f(x[i])));
}


// Output column c of row r comes from rank c / stride, whose compact [R, Vs_rank] block starts at
// rank * R * stride in the gathered buffer (the last rank's shard may be shorter).
__global__ void unshard_kernel(const float* in, float* out, int R, int stride, int V) {
  grid_dependency_wait();
  const size_t n = (size_t)R * V;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    const int row = static_cast<int>(i / V), col = static_cast<int>(i % V);
    const int rank = col / stride, v = col % stride;
    const int vs = min(V, (rank + 1) * stride) - rank * stride;
    out[i] = in[(size_t)rank * R * stride + (size_t)row * vs + v];
  }
}

unsigned grid_for(size_t n) { return static_cast<unsigned>(std::min<size_t>(ceil_div(n, 256), 65535u * 8)); }

}  // namespace

void convert(DType dst_dt, void* dst, DType src_dt, const void* src, size_t n, cudaStream_t s) {
  if (n == 0) return;
  NS_DISPATCH_ANY(dst_dt, D, NS_DISPATCH_ANY(src_dt, S, {
    launch("convert", convert_kernel<D, S>, dim3(grid_for(n)), dim3(256), s, static_cast<D*>(dst), static_cast<const S*>(src), n);
  }));
  NS_LAUNCHED("convert");
}

void embedding(DType act, const void* emb, const int32_t* tokens, int T, int H, int vstart, int vend,
               float* residual, cudaStream_t s) {
  if (T == 0) return;
  NS_DISPATCH_ACT(act, E, {
    launch("embedding", embedding_kernel<E>, dim3(T), dim3(256), s, static_cast<const E*>(emb), tokens, H, vstart, vend, residual);
  });
  NS_LAUNCHED("embedding");
}

void rmsnorm(DType act, const float* x, const int32_t* rows, int R, int H, const float* w, float eps,
             void* out, cudaStream_t s) {
  if (R == 0) return;
  const int vec_threads = std::max(32, (int)ceil_div(H / 8, kNormVec * 32) * 32);
  if (H % 8 == 0 && vec_threads <= 1024) {
    NS_DISPATCH_ACT(act, E, { launch("rmsnorm", rmsnorm_vec_kernel<E>, dim3(R), dim3(vec_threads), s, x, rows, H, w, eps, static_cast<E*>(out), rounds(kRoundNorm)); });
  } else {
    const int threads = H >= 4096 ? 1024 : H >= 1024 ? 512 : 128;
    NS_DISPATCH_ACT(act, E, { launch("rmsnorm", rmsnorm_kernel<E>, dim3(R), dim3(threads), s, x, rows, H, w, eps, static_cast<E*>(out), rounds(kRoundNorm)); });
  }
  NS_LAUNCHED("rmsnorm");
}

void swiglu(DType act, const void* gu, int T, int I, void* out, cudaStream_t s) {
  const size_t n = (size_t)T * I;
  if (n == 0) return;
  if (I % 8 == 0 && T <= 65535) {
    NS_DISPATCH_ACT(act, E, {
      launch("swiglu", swiglu_vec_kernel<E>, dim3(ceil_div(I / 8, 256), T), dim3(256), s, static_cast<const E*>(gu), I, static_cast<E*>(out), rounds(kRoundSilu));
    });
    NS_LAUNCHED("swiglu");
    return;
  }
  NS_DISPATCH_ACT(act, E, {
    launch("swiglu", swiglu_kernel<E>, dim3(grid_for(n)), dim3(256), s, static_cast<const E*>(gu), I, n, static_cast<E*>(out), rounds(kRoundSilu));
  });
  NS_LAUNCHED("swiglu");
}

void residual_add(DType act, float* residual, DType x_dt, const void* x, size_t n, cudaStream_t s) {
  if (n == 0) return;
  NS_DISPATCH_ACT(act, E, {
    if (x_dt == DType::F32) launch("residual_add", residual_add_kernel<E, float>, dim3(grid_for(n)), dim3(256), s, residual, static_cast<const float*>(x), n, rounds(kRoundResidual));
    else launch("residual_add", residual_add_kernel<E, E>, dim3(grid_for(n)), dim3(256), s, residual, static_cast<const E*>(x), n, rounds(kRoundResidual));
  });
  NS_LAUNCHED("residual_add");
}


void unshard_logits(const float* in, float* out, int R, int stride, int V, cudaStream_t s) {
  const size_t n = (size_t)R * V;
  if (n == 0) return;
  launch("unshard_logits", unshard_kernel, dim3(grid_for(n)), dim3(256), s, in, out, R, stride, V);
  NS_LAUNCHED("unshard_logits");
}

}  // namespace ns::cuda
