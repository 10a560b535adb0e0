// Token sampling on the GPU, the algorithm of docs/ENGINE.md "Sampling": temperature 0 → argmax
// (lowest id on ties); otherwise logits / T, top-k, softmax, top-p (smallest prefix of the
// sorted distribution with mass >= p), then one draw with the host-computed
// ns::sampling_uniform(seed, position). Instead of sorting, one block per row finds each cut by
// a 32-step bitwise search over order-preserving integer keys of the scaled logits: the k-th
// largest key, the top-p threshold, and the key where the descending cumulative mass passes the
// draw. Ties at a cut are kept together; the draw picks the lowest id among equal keys.
#include <cfloat>

#include "cuda/cuda_common.h"
#include "cuda/kernels.h"

namespace ns::cuda {
namespace {

constexpr int kThreads = 1024;

__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Block-wide sum; every thread gets the result.
__device__ float block_sum(float v, float* sh) {
  v = warp_sum(v);
  const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();
  if (lane == 0) sh[w] = v;
  __syncthreads();
  float r = lane < (blockDim.x >> 5) ? sh[lane] : 0.f;
  return warp_sum(r);
}

__device__ float block_max(float v, float* sh) {
  v = warp_max(v);
  const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();
  if (lane == 0) sh[w] = v;
  __syncthreads();
  float r = lane < (blockDim.x >> 5) ? sh[lane] : -FLT_MAX;
  return warp_max(r);
}

// Lowest index whose value is max (NaN never wins); candidates restricted by `key >= min_key`
// and `key == eq_key` when eq_key != 0.
__device__ int block_argmax(const float* z, int V, float inv_t, uint32_t eq_key, int* shi, float* shv) {
  float best = -FLT_MAX;
  int bi = INT_MAX;
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    const float v = z[i] * inv_t;
    if (eq_key != 0 && order_key(v) != eq_key) continue;
    if (v > best || (v == best && i < bi)) { best = v; bi = i; }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (ov > best || (ov == best && oi < bi)) { best = ov; bi = oi; }
  }
  const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();
  if (lane == 0) { shv[w] = best; shi[w] = bi; }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int k = 1; k < (int)(blockDim.x >> 5); ++k)
      if (shv[k] > shv[0] || (shv[k] == shv[0] && shi[k] < shi[0])) { shv[0] = shv[k]; shi[0] = shi[k]; }
  }
  __syncthreads();
  const int r = shi[0];
  __syncthreads();
  return r;
}

// Sum over i with key >= t (and key >= floor) of either 1 (count) or exp(z_i - m).
__device__ float mass_at(const float* z, int V, float inv_t, float m, uint32_t t, uint32_t floor_key,
                         bool count, float* sh) {
  float s = 0.f;
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    const float v = z[i] * inv_t;
    const uint32_t k = order_key(v);
    if (k >= t && k >= floor_key) s += count ? 1.f : __expf(v - m);
  }
  return block_sum(s, sh);
}

// Largest key t with pred(mass_at(t)) where pred is ">= target" or "> target".
__device__ uint32_t search_key(const float* z, int V, float inv_t, float m, uint32_t floor_key, bool count,
                               float target, bool strict, float* sh) {
  uint32_t prefix = 0;
  for (int bit = 31; bit >= 0; --bit) {
    const uint32_t cand = prefix | (1u << bit);
    const float s = mass_at(z, V, inv_t, m, cand, floor_key, count, sh);
    if (strict ? s > target : s >= target) prefix = cand;
  }
  return prefix;
}

__global__ void __launch_bounds__(kThreads) sample_kernel(const float* logits, int V, const int32_t* rows,
                                                          const float* params, int32_t* out) {
  grid_dependency_wait();
  __shared__ float sh[32];
  __shared__ int shi[32];
  __shared__ float shv[32];
  const float* z = logits + (size_t)rows[blockIdx.x] * V;
  const float temperature = params[4 * blockIdx.x];
  const int top_k = static_cast<int>(params[4 * blockIdx.x + 1]);
  const float top_p = params[4 * blockIdx.x + 2];
  const float u = params[4 * blockIdx.x + 3];
  if (!(temperature > 0.f)) {
    const int id = block_argmax(z, V, 1.f, 0, shi, shv);
    if (threadIdx.x == 0) out[blockIdx.x] = id;
    return;
  }
  const float inv_t = 1.f / temperature;
  float m = -FLT_MAX;
  for (int i = threadIdx.x; i < V; i += blockDim.x) m = fmaxf(m, z[i] * inv_t);
  m = block_max(m, sh);
  uint32_t floor_key = 0;
  if (top_k > 0 && top_k < V)
    floor_key = search_key(z, V, inv_t, m, 0, true, static_cast<float>(top_k), false, sh);
  const float total = mass_at(z, V, inv_t, m, 0, floor_key, false, sh);
  if (top_p < 1.f) {
    const uint32_t tp = search_key(z, V, inv_t, m, floor_key, false, top_p * total, false, sh);
    floor_key = max(floor_key, tp);
  }
  const float kept = mass_at(z, V, inv_t, m, 0, floor_key, false, sh);
  const float r = u * kept;
  uint32_t pick = search_key(z, V, inv_t, m, floor_key, false, r, true, sh);
  pick = max(pick, floor_key);
  int id = block_argmax(z, V, inv_t, pick, shi, shv);
  if (id == INT_MAX) id = block_argmax(z, V, 1.f, 0, shi, shv);  // rounding left no key: most likely token
  if (threadIdx.x == 0) out[blockIdx.x] = id;
}

}  // namespace

void sample(const float* logits, int V, const int32_t* rows, const float* params, int n, int32_t* out,
            cudaStream_t s) {
  if (n == 0) return;
  launch("sample", sample_kernel, dim3(n), dim3(kThreads), s, logits, V, rows, params, out);
  NS_LAUNCHED("sample");
}

}  // namespace ns::cuda
