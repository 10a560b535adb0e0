// Elementwise and row-wise kernels: dtype conversion, embedding, RMSNorm, SwiGLU, adds.
// Rounding follows Hugging Face transformers' bf16/fp16 forward op by op (docs/ENGINE.md "CUDA
// numerics"): every tensor HF materialises in the activation dtype is rounded to it here too, so
// our logits track HF's own rounding instead of adding an independent one.
#include <cstdlib>

#include "cuda/cuda_common.h"
#include "cuda/kernels.h"

namespace ns::cuda {

int round_mask() {
  static const int mask = [] {
    const char* e = std::getenv("NODESPEED_CUDA_ROUND");
    if (!e || !*e) return 0;
    char* end = nullptr;
    const long v = std::strtol(e, &end, 0);
    if (*end || v < 0 || v > kRoundHF)
      throw std::runtime_error(std::string("NODESPEED_CUDA_ROUND=") + e + ": expected a mask 0.." + std::to_string(kRoundHF));
    return static_cast<int>(v);
  }();
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
  ss = warp_sum(ss);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0.f;
    v = warp_sum(v);
    if (threadIdx.x == 0) part[0] = v;
  }
  __syncthreads();
  const float inv = rsqrtf(part[0] / H + eps);
  T* o = out + (size_t)r * H;
  // HF: weight * (x * rsqrt(var + eps)).to(dtype): the normalised row is rounded before the weight.
  for (int i = threadIdx.x; i < H; i += blockDim.x) o[i] = from_f<T>(round_if<T>(rnd, xr[i] * inv) * w[i]);
}

template <typename T>
__global__ void swiglu_kernel(const T* gu, int I, size_t n, T* out, bool rnd) {
  grid_dependency_wait();
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    const size_t t = i / I, j = i % I;
    const float g = to_f(gu[t * 2 * I + j]);
    const float u = to_f(gu[t * 2 * I + I + j]);
    out[i] = from_f<T>(round_if<T>(rnd, g / (1.f + __expf(-g))) * u);  // HF: act_fn(gate) is a tensor, then * up
  }
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
  const int threads = H >= 4096 ? 1024 : H >= 1024 ? 512 : 128;
  NS_DISPATCH_ACT(act, E, { launch("rmsnorm", rmsnorm_kernel<E>, dim3(R), dim3(threads), s, x, rows, H, w, eps, static_cast<E*>(out), rounds(kRoundNorm)); });
  NS_LAUNCHED("rmsnorm");
}

void swiglu(DType act, const void* gu, int T, int I, void* out, cudaStream_t s) {
  const size_t n = (size_t)T * I;
  if (n == 0) return;
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
