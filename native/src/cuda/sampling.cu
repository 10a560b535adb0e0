// Token sampling on the GPU, the algorithm of docs/ENGINE.md "Sampling": logit bias and penalties
// applied to the row in place (each listed token is touched by one thread: the host sends every
// distinct token once); logprobs from those logits when asked for; temperature 0 -> argmax (lowest
// id on ties); otherwise logits / T, top-k, softmax, top-p (smallest prefix of the sorted
// distribution with mass >= p), min-p, then one draw with the host-computed
// ns::sampling_uniform(seed, position). Instead of sorting, one block per row finds each cut by a
// 32-step bitwise search over order-preserving integer keys of the scaled logits: the k-th largest
// key, the top-p threshold, and the key where the descending cumulative mass passes the draw
// (min-p is a value threshold: its key is computed directly). Ties at a cut are kept together; the
// draw picks the lowest id among equal keys. Nothing of the vocabulary leaves the GPU but the id
// (and the logprobs of rows that ask for them).
#include <cfloat>
#include <cstring>

#include "cuda/cuda_common.h"
#include "cuda/kernels.h"

namespace ns::cuda {
namespace {

constexpr int kThreads = 1024;

__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
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

// The best (value desc, id asc) of the block's candidates; every thread gets its index (INT_MAX: none).
__device__ int block_best(float best, int bi, int* shi, float* shv) {
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

// f(i, z[i] * inv_t) for this thread's indices i = threadIdx.x + j * blockDim.x of the row, in
// increasing order, kRowLoads loads issued before the first is used: a 152k vocabulary is ~150
// elements a thread, and one load waited for at a time cost ~60 us a pass.
constexpr int kRowLoads = 8;
template <typename F>
__device__ __forceinline__ void for_row(const float* z, int V, float inv_t, F f) {
  int i = threadIdx.x;
  for (; i + (kRowLoads - 1) * (int)blockDim.x < V; i += kRowLoads * blockDim.x) {
    float v[kRowLoads];
#pragma unroll
    for (int u = 0; u < kRowLoads; ++u) v[u] = z[i + u * blockDim.x];
#pragma unroll
    for (int u = 0; u < kRowLoads; ++u) f(i + u * (int)blockDim.x, v[u] * inv_t);
  }
  for (; i < V; i += blockDim.x) f(i, z[i] * inv_t);
}

// Lowest index whose value is max (NaN never wins), among keys == eq_key when eq_key != 0.
__device__ int block_argmax(const float* z, int V, float inv_t, uint32_t eq_key, int* shi, float* shv) {
  float best = -FLT_MAX;
  int bi = INT_MAX;
  for_row(z, V, inv_t, [&](int i, float v) {
    if (eq_key != 0 && order_key(v) != eq_key) return;
    if (v > best || (v == best && i < bi)) { best = v; bi = i; }
  });
  return block_best(best, bi, shi, shv);
}

// Sum over i with key >= t (and key >= floor) of either 1 (count) or exp(z_i - m).
__device__ float mass_at(const float* z, int V, float inv_t, float m, uint32_t t, uint32_t floor_key,
                         bool count, float* sh) {
  float s = 0.f;
  for_row(z, V, inv_t, [&](int, float v) {
    const uint32_t k = order_key(v);
    if (k >= t && k >= floor_key) s += count ? 1.f : __expf(v - m);
  });
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

// Logit bias, then the penalties, on row z in place (each entry's token is distinct in its list).
__device__ void bias_and_penalize(float* z, int V, const SampleRow& P, const int32_t* ex) {
  if (P.bias_n > 0) {
    for (int i = threadIdx.x; i < P.bias_n; i += blockDim.x) {
      const int t = ex[P.bias_off + 2 * i];
      if (t >= 0 && t < V) z[t] += __int_as_float(ex[P.bias_off + 2 * i + 1]);
    }
    __syncthreads();
  }
  if (P.pen_n > 0) {
    const float rep = P.repetition_penalty > 0.f ? P.repetition_penalty : 1.f;
    for (int i = threadIdx.x; i < P.pen_n; i += blockDim.x) {
      const int t = ex[P.pen_off + 3 * i], cnt = ex[P.pen_off + 3 * i + 1];
      if (t < 0 || t >= V) continue;
      float v = z[t];
      if (rep != 1.f) v = v < 0.f ? v * rep : v / rep;
      v = v - P.frequency_penalty * (float)cnt;
      v = v - P.presence_penalty * (cnt > 0 ? 1.f : 0.f);
      z[t] = v;
    }
    __syncthreads();
  }
}

// Log-softmax of z: lse into *lse_out (every thread), and the k best (id, logprob) into lp[1..].
__device__ float top_logprobs(const float* z, int V, int k, float* lp, float* sh, int* shi, float* shv) {
  float m = -FLT_MAX;
  for (int i = threadIdx.x; i < V; i += blockDim.x) m = fmaxf(m, z[i]);
  m = block_max(m, sh);
  float s = 0.f;
  for (int i = threadIdx.x; i < V; i += blockDim.x) s += expf(z[i] - m);
  const float lse = m + logf(block_sum(s, sh));
  // k passes: the best candidate strictly after the previous one in (value desc, id asc) order.
  float pv = FLT_MAX;
  int pi = -1;
  for (int j = 0; j < kMaxLogprobs; ++j) {
    int id = INT_MAX;
    if (j < k) {
      float best = -FLT_MAX;
      int bi = INT_MAX;
      for (int i = threadIdx.x; i < V; i += blockDim.x) {
        const float v = z[i];
        if (!(v < pv || (v == pv && i > pi))) continue;
        if (v > best || (v == best && i < bi)) { best = v; bi = i; }
      }
      id = block_best(best, bi, shi, shv);
    }
    if (threadIdx.x == 0) {
      lp[1 + j] = __int_as_float(id == INT_MAX ? -1 : id);
      lp[1 + kMaxLogprobs + j] = id == INT_MAX ? __int_as_float(0x7fc00000) : z[id] - lse;
    }
    if (id != INT_MAX) { pv = z[id]; pi = id; }
  }
  return lse;
}

__global__ void __launch_bounds__(kThreads) sample_kernel(float* logits, int V, const int32_t* rows, const SampleRow* params,
                                                          const int32_t* const* extras, int32_t* out, float* lp_out) {
  grid_dependency_wait();
  __shared__ float sh[32];
  __shared__ int shi[32];
  __shared__ float shv[32];
  float* z = logits + (size_t)rows[blockIdx.x] * V;
  const SampleRow P = params[blockIdx.x];
  if (P.bias_n > 0 || P.pen_n > 0) bias_and_penalize(z, V, P, *extras);
  float* lp = lp_out + (size_t)blockIdx.x * kLogprobWords;
  float lse = 0.f;
  if (P.logprobs > 0) lse = top_logprobs(z, V, P.logprobs - 1, lp, sh, shi, shv);
  int id;
  if (!(P.temperature > 0.f)) {
    id = block_argmax(z, V, 1.f, 0, shi, shv);
  } else {
    const float inv_t = 1.f / P.temperature;
    float m = -FLT_MAX;
    for_row(z, V, inv_t, [&](int, float v) { m = fmaxf(m, v); });
    m = block_max(m, sh);
    uint32_t floor_key = 0;
    if (P.top_k > 0 && P.top_k < V)
      floor_key = search_key(z, V, inv_t, m, 0, true, static_cast<float>(P.top_k), false, sh);
    if (P.top_p < 1.f) {
      const float total = mass_at(z, V, inv_t, m, 0, floor_key, false, sh);
      const uint32_t tp = search_key(z, V, inv_t, m, floor_key, false, P.top_p * total, false, sh);
      floor_key = max(floor_key, tp);
    }
    // p_i >= min_p * p_max  <=>  v_i >= v_max + log(min_p): a value threshold.
    if (P.min_p > 0.f) floor_key = max(floor_key, order_key(m + logf(P.min_p)));
    const float kept = mass_at(z, V, inv_t, m, 0, floor_key, false, sh);
    const float r = P.uniform * kept;
    uint32_t pick = search_key(z, V, inv_t, m, floor_key, false, r, true, sh);
    pick = max(pick, floor_key);
    id = block_argmax(z, V, inv_t, pick, shi, shv);
    if (id == INT_MAX) id = block_argmax(z, V, 1.f, 0, shi, shv);  // rounding left no key: most likely token
  }
  if (threadIdx.x == 0) {
    out[blockIdx.x] = id;
    if (P.logprobs > 0) lp[0] = z[id] - lse;
  }
}

}  // namespace

SampleRow pack_sample_row(const SamplingParams& p, float uniform, const std::vector<PenaltyToken>* counts,
                          std::vector<int32_t>& extras) {
  SampleRow row{};
  row.temperature = p.temperature;
  row.top_k = p.top_k;
  row.top_p = p.top_p;
  row.uniform = uniform;
  row.min_p = p.min_p;
  row.repetition_penalty = p.repetition_penalty;
  row.presence_penalty = p.presence_penalty;
  row.frequency_penalty = p.frequency_penalty;
  row.logprobs = p.logprobs + 1;
  if (p.n_logit_bias > 0) {
    row.bias_off = static_cast<int32_t>(extras.size());
    row.bias_n = p.n_logit_bias;
    for (int i = 0; i < p.n_logit_bias; ++i) {
      int32_t bits;
      std::memcpy(&bits, &p.logit_bias[i].bias, 4);
      extras.push_back(p.logit_bias[i].token);
      extras.push_back(bits);
    }
  }
  if (counts) {
    row.pen_off = static_cast<int32_t>(extras.size());
    row.pen_n = static_cast<int32_t>(counts->size());
    for (const PenaltyToken& e : *counts) {
      extras.push_back(e.token);
      extras.push_back(e.output_count);
      extras.push_back(e.in_prompt);
    }
  }
  return row;
}

void sample(float* logits, int V, const int32_t* rows, const SampleRow* params, const int32_t* const* extras, int n,
            int32_t* out, float* lp_out, cudaStream_t s) {
  if (n == 0) return;
  launch("sample", sample_kernel, dim3(n), dim3(kThreads), s, logits, V, rows, params, extras, out, lp_out);
  NS_LAUNCHED("sample");
}

}  // namespace ns::cuda
