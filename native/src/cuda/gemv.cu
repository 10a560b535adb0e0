// Decode-time matrix-vector products (1..4 rows): the step is bound by reading the weights once,
// so warps stream weight rows with 16-byte loads, four in flight per lane,
// reusing each weight load for every input row. Needs K % 8 == 0 (callers fall back to cuBLAS).
#include <stdexcept>

#include "cuda/cuda_common.h"
#include "cuda/kernels.h"

namespace ns::cuda {
namespace {

constexpr int kWarps = 8;

__device__ __forceinline__ void unpack8(const uint4& v, float* f, __nv_bfloat16*) {
  const __nv_bfloat162* p = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __bfloat1622float2(p[i]);
    f[2 * i] = t.x; f[2 * i + 1] = t.y;
  }
}
__device__ __forceinline__ void unpack8(const uint4& v, float* f, __half*) {
  const __half2* p = reinterpret_cast<const __half2*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __half22float2(p[i]);
    f[2 * i] = t.x; f[2 * i + 1] = t.y;
  }
}

// KS warps share one output row (interleaved 512-byte chunks, so each warp's loads stay
// coalesced) when there are too few rows to keep enough loads in flight (o_proj, down_proj);
// partial sums meet in shared memory. Each lane issues 4 weight loads before using any.
// Variants: Plain (x is the activation), NormIn (x = RMSNorm of the fp32 residual computed on the
// fly: the row's sum of squares comes from the producer's per-block partials, so no separate
// RMSNorm launch), AddPartials (AddF32 into the residual, plus each block's sum of squares of the
// rows it finished, for the next NormIn). Partials are summed in a fixed order: deterministic.
enum Variant { kPlain = 0, kNormIn = 1, kAddPartials = 2 };
constexpr int kPartialStride = 4;  // partials[block * 4 + r]

template <typename T, int R, int VAR>
__device__ __forceinline__ void fma_chunk(const uint4& wv, const T* x, const GemvExtra& ex, const float* inv, int K,
                                          int i, float* acc) {
  float wf[8];
  unpack8(wv, wf, static_cast<T*>(nullptr));
#pragma unroll
  for (int r = 0; r < R; ++r) {
    float xf[8];
    if constexpr (VAR == kNormIn) {
      const float4* res = reinterpret_cast<const float4*>(ex.res + (size_t)r * K) + 2 * i;
      const float4* nw = reinterpret_cast<const float4*>(ex.norm_w) + 2 * i;
      const float4 a = __ldg(res), b = __ldg(res + 1), ga = __ldg(nw), gb = __ldg(nw + 1);
      const float v[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w}, g[8] = {ga.x, ga.y, ga.z, ga.w, gb.x, gb.y, gb.z, gb.w};
#pragma unroll
      for (int e = 0; e < 8; ++e) xf[e] = to_f(from_f<T>(v[e] * inv[r] * g[e]));  // rounded as RMSNorm's output
    } else {
      unpack8(__ldg(reinterpret_cast<const uint4*>(x + (size_t)r * K) + i), xf, static_cast<T*>(nullptr));
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[r] += wf[e] * xf[e];
  }
}

template <typename T, int R, GemvOut MODE, int KS, int VAR>
__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(const T* __restrict__ W, const T* __restrict__ x,
                                                           int N, int K, void* __restrict__ y, GemvExtra ex) {
  constexpr int kRows = kWarps / KS;
  constexpr int kStride = 32 * KS;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n = blockIdx.x * kRows + warp / KS, part = warp % KS;
  const int K8 = K / 8;
  // Weights never change during a step: start pulling this lane's first chunks into L2 while the
  // previous kernel (whose output x is) still drains, then wait for it.
  if (n < N) {
    const uint4* w = reinterpret_cast<const uint4*>(W + (size_t)n * K);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int i = part * 32 + lane + j * kStride;
      if (i < K8) asm volatile("prefetch.global.L2 [%0];" ::"l"(w + i));
    }
  }
  grid_dependency_wait();
  __shared__ float s_inv[R];
  __shared__ float red[kWarps][R];
  if constexpr (VAR == kNormIn) {
    float ss[R];
#pragma unroll
    for (int r = 0; r < R; ++r) ss[r] = 0.f;
    for (int p = threadIdx.x; p < ex.n_partials; p += blockDim.x)
#pragma unroll
      for (int r = 0; r < R; ++r) ss[r] += ex.partials[p * kPartialStride + r];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      ss[r] = warp_sum(ss[r]);
      if (lane == 0) red[warp][r] = ss[r];
    }
    __syncthreads();
    if (threadIdx.x < R) {
      float t = 0.f;
      for (int w = 0; w < kWarps; ++w) t += red[w][threadIdx.x];
      s_inv[threadIdx.x] = rsqrtf(t / K + ex.eps);
    }
    __syncthreads();
  }
  float inv[R];
#pragma unroll
  for (int r = 0; r < R; ++r) inv[r] = VAR == kNormIn ? s_inv[r] : 1.f;
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = 0.f;
  if (n < N) {
    const uint4* w = reinterpret_cast<const uint4*>(W + (size_t)n * K);
    int i = part * 32 + lane;
    for (; i + 3 * kStride < K8; i += 4 * kStride) {
      const uint4 w0 = __ldg(w + i), w1 = __ldg(w + i + kStride), w2 = __ldg(w + i + 2 * kStride),
                  w3 = __ldg(w + i + 3 * kStride);
      fma_chunk<T, R, VAR>(w0, x, ex, inv, K, i, acc);
      fma_chunk<T, R, VAR>(w1, x, ex, inv, K, i + kStride, acc);
      fma_chunk<T, R, VAR>(w2, x, ex, inv, K, i + 2 * kStride, acc);
      fma_chunk<T, R, VAR>(w3, x, ex, inv, K, i + 3 * kStride, acc);
    }
    for (; i < K8; i += kStride) fma_chunk<T, R, VAR>(__ldg(w + i), x, ex, inv, K, i, acc);
  }
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = warp_sum(acc[r]);
  if constexpr (KS > 1) {
    __syncthreads();  // red[] may still be read by the NormIn prologue's last threads
    if (lane == 0)
#pragma unroll
      for (int r = 0; r < R; ++r) red[warp][r] = acc[r];
    __syncthreads();
    if (part == 0)
#pragma unroll
      for (int r = 0; r < R; ++r) {
        float s = 0.f;
#pragma unroll
        for (int p = 0; p < KS; ++p) s += red[warp + p][r];
        acc[r] = s;
      }
  }
  const bool writer = lane == 0 && part == 0 && n < N;
  float sq[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    sq[r] = 0.f;
    if (!writer) continue;
    const size_t o = (size_t)r * N + n;
    if constexpr (MODE == GemvOut::Act) {
      static_cast<T*>(y)[o] = from_f<T>(acc[r]);
    } else if constexpr (MODE == GemvOut::F32) {
      static_cast<float*>(y)[o] = acc[r];
    } else {
      const float v = static_cast<float*>(y)[o] + acc[r];
      static_cast<float*>(y)[o] = v;
      sq[r] = v * v;
    }
  }
  if constexpr (VAR == kAddPartials) {
    __shared__ float s_sq[kRows][R];
    if (lane == 0 && part == 0)
#pragma unroll
      for (int r = 0; r < R; ++r) s_sq[warp / KS][r] = sq[r];
    __syncthreads();
    if (threadIdx.x < R) {
      float t = 0.f;
      for (int j = 0; j < kRows; ++j) t += s_sq[j][threadIdx.x];
      ex.partials_out[blockIdx.x * kPartialStride + threadIdx.x] = t;
    }
  }
}

int split_for(int N) { return N >= 12288 ? 1 : 2; }  // 12288+ rows (qkv, gate_up, LM head) fill the GPU alone

template <typename T, GemvOut MODE, int KS, int VAR>
void launch_rows(const T* W, const T* x, int R, int N, int K, void* y, const GemvExtra& ex, cudaStream_t s) {
  const dim3 grid(ceil_div(N, kWarps / KS)), block(kWarps * 32);
  switch (R) {
    case 1: launch("gemv", gemv_kernel<T, 1, MODE, KS, VAR>, grid, block, s, W, x, N, K, y, ex); break;
    case 2: launch("gemv", gemv_kernel<T, 2, MODE, KS, VAR>, grid, block, s, W, x, N, K, y, ex); break;
    case 3: launch("gemv", gemv_kernel<T, 3, MODE, KS, VAR>, grid, block, s, W, x, N, K, y, ex); break;
    case 4: launch("gemv", gemv_kernel<T, 4, MODE, KS, VAR>, grid, block, s, W, x, N, K, y, ex); break;
    default: throw std::runtime_error("cuda: gemv supports 1..4 rows");
  }
}

template <typename T, GemvOut MODE, int VAR>
void launch_mode(const T* W, const T* x, int R, int N, int K, void* y, const GemvExtra& ex, cudaStream_t s) {
  if (split_for(N) == 1) launch_rows<T, MODE, 1, VAR>(W, x, R, N, K, y, ex, s);
  else launch_rows<T, MODE, 2, VAR>(W, x, R, N, K, y, ex, s);
}

}  // namespace

int gemv_blocks(int N) { return static_cast<int>(ceil_div(N, kWarps / split_for(N))); }

void gemv(DType act, const void* W, const void* x, int R, int N, int K, void* y, GemvOut mode, cudaStream_t s,
          const GemvExtra* extra) {
  if (R == 0) return;
  if (K % 8 != 0) throw std::runtime_error("cuda: gemv needs K % 8 == 0");
  const GemvExtra ex = extra ? *extra : GemvExtra{};
  const bool norm_in = ex.res != nullptr, partials_out = ex.partials_out != nullptr;
  if (partials_out && mode != GemvOut::AddF32) throw std::runtime_error("cuda: gemv partials need AddF32");
  NS_DISPATCH_ACT(act, E, {
    const E* w = static_cast<const E*>(W);
    const E* xx = static_cast<const E*>(x);
    if (mode == GemvOut::Act) {
      if (norm_in) launch_mode<E, GemvOut::Act, kNormIn>(w, xx, R, N, K, y, ex, s);
      else launch_mode<E, GemvOut::Act, kPlain>(w, xx, R, N, K, y, ex, s);
    } else if (mode == GemvOut::F32) {
      if (norm_in) launch_mode<E, GemvOut::F32, kNormIn>(w, xx, R, N, K, y, ex, s);
      else launch_mode<E, GemvOut::F32, kPlain>(w, xx, R, N, K, y, ex, s);
    } else {
      if (partials_out) launch_mode<E, GemvOut::AddF32, kAddPartials>(w, xx, R, N, K, y, ex, s);
      else launch_mode<E, GemvOut::AddF32, kPlain>(w, xx, R, N, K, y, ex, s);
    }
  });
  NS_LAUNCHED("gemv");
}

}  // namespace ns::cuda
