// Matrix products with quantized weights (docs/QUANTIZATION.md), one f32 scale per weight row:
//  - gemv_quant: decode rows (1..4) reading int8 or E4M3 weights against activation-dtype rows
//    (weight-only, W8A16, for fp8 models too: at 1..4 rows the product is bound by the weights'
//    bytes, and quantizing the rows would only add a launch and a second conversion per weight);
//    the layout and pipelining of gemv.cu (warps stream 16-byte weight chunks, four in flight per
//    lane), with twice the elements per load; gemv_quant_fused: the same, with SwiGLU or RoPE + the
//    KV write as the epilogue (kernels.h gemv_fused);
//  - quantize_act: activation rows to E4M3, per-token scales (amax / 448, amax optionally capped) or
//    one static scale;
//  - fp8_epilogue: the f32 result of cuBLASLt's E4M3 GEMM times the row and column scales, written
//    like every other GEMM output (activation dtype, f32, or added to the residual stream);
//  - dequantize: int8 or E4M3 rows times their scales into the activation dtype (the weight-only
//    path of larger GEMMs, which then run on cuBLAS's tensor cores).
#include <cfloat>
#include <stdexcept>

#include "cuda/cuda_common.h"
#include "cuda/gemv_common.h"
#include "cuda/kernels.h"
#include "cuda/quant.h"

namespace ns::cuda {
namespace {

constexpr int kWarps = 8;

// One 16-byte weight chunk (16 weights at column 16 i) against R activation-dtype rows.
template <typename T, DType W, int R>
__device__ __forceinline__ void fma16(const uint4& wv, const T* x, int K, int i, float* acc) {
  float wf[16];
  unpack16<W>(wv, wf);
#pragma unroll
  for (int r = 0; r < R; ++r) {
    float xf[16];
    const uint4* xr = reinterpret_cast<const uint4*>(x + (size_t)r * K) + 2 * i;
    unpack8<T>(__ldg(xr), xf);
    unpack8<T>(__ldg(xr + 1), xf + 8);
#pragma unroll
    for (int e = 0; e < 16; ++e) acc[r] += wf[e] * xf[e];
  }
}

// acc[r] = this lane's part of row n of Wq (unscaled) times row r of x (KS warps a row, `part` of them).
template <typename T, DType W, int R, int KS>
__device__ __forceinline__ void gemv_quant_acc(const uint8_t* __restrict__ Wq, const T* __restrict__ x, int n, int N, int K, int part,
                                               int lane, float (&acc)[R]) {
  constexpr int kStride = 32 * KS;
  const int K16 = K / 16;
  if (n < N) {  // weights never change during a step: pull the first chunks into L2 before waiting
    const uint4* w = reinterpret_cast<const uint4*>(Wq + (size_t)n * K);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int i = part * 32 + lane + j * kStride;
      if (i < K16) asm volatile("prefetch.global.L2 [%0];" ::"l"(w + i));
    }
  }
  grid_dependency_wait();
  grid_dependents_launch();  // as gemv.cu: the next kernel's blocks take the SMs of this one's tail
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = 0.f;
  if (n < N) {
    const uint4* w = reinterpret_cast<const uint4*>(Wq + (size_t)n * K);
    int i = part * 32 + lane;
    for (; i + 3 * kStride < K16; i += 4 * kStride) {
      const uint4 w0 = __ldg(w + i), w1 = __ldg(w + i + kStride), w2 = __ldg(w + i + 2 * kStride), w3 = __ldg(w + i + 3 * kStride);
      fma16<T, W, R>(w0, x, K, i, acc);
      fma16<T, W, R>(w1, x, K, i + kStride, acc);
      fma16<T, W, R>(w2, x, K, i + 2 * kStride, acc);
      fma16<T, W, R>(w3, x, K, i + 3 * kStride, acc);
    }
    for (; i < K16; i += kStride) fma16<T, W, R>(__ldg(w + i), x, K, i, acc);
  }
}

template <typename T, DType W, int R, GemvOut MODE, int KS>
__global__ void __launch_bounds__(kWarps * 32) gemv_quant_kernel(const uint8_t* __restrict__ Wq, const float* __restrict__ wscale,
                                                                 const T* __restrict__ x, int N, int K, void* __restrict__ y, bool rnd) {
  constexpr int kRows = kWarps / KS;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n = blockIdx.x * kRows + warp / KS, part = warp % KS;
  float acc[R];
  gemv_quant_acc<T, W, R, KS>(Wq, x, n, N, K, part, lane, acc);
  if (!gemv_reduce<kWarps, R, KS>(acc, warp, lane, part, n, N)) return;
  const float ws = wscale[n];
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] *= ws;
  gemv_store<T, R, MODE>(acc, n, N, y, rnd);
}

// gemv_fused's 8-bit weights (kernels.h): the rows of output pairs, the next kernel's work in the epilogue.
template <typename T, DType W, int R, GemvFuse F>
__global__ void __launch_bounds__(kFusedWarps * 32) gemv_quant_fused_kernel(const uint8_t* __restrict__ Wq, const float* __restrict__ wscale,
                                                                             const T* __restrict__ x, int N, int K, GemvFusion f) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n = fused_row<F>(f, warp, N);
  float acc[R];
  gemv_quant_acc<T, W, R, 1>(Wq, x, n, N, K, 0, lane, acc);
  gemv_fused_end<T, R, F>(acc, wscale, n, N, warp, lane, f);
}

template <typename T, DType W, GemvFuse F>
void launch_quant_fused(const QuantGemv& g, const GemvFusion& f, unsigned grid, cudaStream_t s) {
  const dim3 gr(grid), b(kFusedWarps * 32);
  const uint8_t* w = static_cast<const uint8_t*>(g.w);
  const T* x = static_cast<const T*>(g.x);
  switch (g.R) {
    case 1: launch("gemv_quant_fused", gemv_quant_fused_kernel<T, W, 1, F>, gr, b, s, w, g.wscale, x, g.N, g.K, f); break;
    case 2: launch("gemv_quant_fused", gemv_quant_fused_kernel<T, W, 2, F>, gr, b, s, w, g.wscale, x, g.N, g.K, f); break;
    case 3: launch("gemv_quant_fused", gemv_quant_fused_kernel<T, W, 3, F>, gr, b, s, w, g.wscale, x, g.N, g.K, f); break;
    case 4: launch("gemv_quant_fused", gemv_quant_fused_kernel<T, W, 4, F>, gr, b, s, w, g.wscale, x, g.N, g.K, f); break;
    default: throw std::runtime_error("cuda: gemv_quant_fused supports 1..4 rows");
  }
}

template <typename T, DType W>
void launch_quant_fused_kind(const QuantGemv& g, const GemvFusion& f, unsigned grid, cudaStream_t s) {
  if (f.kind == GemvFuse::SwiGlu) launch_quant_fused<T, W, GemvFuse::SwiGlu>(g, f, grid, s);
  else launch_quant_fused<T, W, GemvFuse::RopeKv>(g, f, grid, s);
}

template <typename T, DType W, GemvOut MODE, int KS>
void launch_gemv_rows(const QuantGemv& g, cudaStream_t s) {
  const bool rnd = rounds(kRoundResidual);
  const unsigned grid = ceil_div(g.N, kWarps / KS);
  const uint8_t* w = static_cast<const uint8_t*>(g.w);
  const T* x = static_cast<const T*>(g.x);
  switch (g.R) {
    case 1: launch("gemv_quant", gemv_quant_kernel<T, W, 1, MODE, KS>, dim3(grid), dim3(kWarps * 32), s, w, g.wscale, x, g.N, g.K, g.y, rnd); break;
    case 2: launch("gemv_quant", gemv_quant_kernel<T, W, 2, MODE, KS>, dim3(grid), dim3(kWarps * 32), s, w, g.wscale, x, g.N, g.K, g.y, rnd); break;
    case 3: launch("gemv_quant", gemv_quant_kernel<T, W, 3, MODE, KS>, dim3(grid), dim3(kWarps * 32), s, w, g.wscale, x, g.N, g.K, g.y, rnd); break;
    case 4: launch("gemv_quant", gemv_quant_kernel<T, W, 4, MODE, KS>, dim3(grid), dim3(kWarps * 32), s, w, g.wscale, x, g.N, g.K, g.y, rnd); break;
    default: throw std::runtime_error("cuda: gemv_quant supports 1..4 rows");
  }
}

// As gemv.cu: matrices of 12288+ rows fill the GPU with one warp a row, shorter ones take 2. (One
// warp a row with 8 loads in flight times 2-5% faster per matrix alone, bench/gpu/gemv-quant.cu, but
// the engine's int8 decode step measured slower with it: 295 vs 308 tokens/s, H100, two visits.)
template <typename T, DType W, GemvOut MODE>
void launch_gemv(const QuantGemv& g, cudaStream_t s) {
  if (g.N >= 12288) launch_gemv_rows<T, W, MODE, 1>(g, s);
  else launch_gemv_rows<T, W, MODE, 2>(g, s);
}

template <typename T, DType W>
void launch_gemv_mode(const QuantGemv& g, GemvOut mode, cudaStream_t s) {
  if (mode == GemvOut::Act) launch_gemv<T, W, GemvOut::Act>(g, s);
  else if (mode == GemvOut::F32) launch_gemv<T, W, GemvOut::F32>(g, s);
  else launch_gemv<T, W, GemvOut::AddResidual>(g, s);
}

// One block a row: amax over the row (8 elements a thread per step), the scale, then E4M3 of x / s.
template <typename T>
__global__ void quantize_act_kernel(const T* __restrict__ x, int K, const float* __restrict__ static_scale, float amax_ub,
                                    uint8_t* __restrict__ q, float* __restrict__ scale) {
  grid_dependency_wait();
  const int r = blockIdx.x, K8 = K / 8;
  const uint4* xr = reinterpret_cast<const uint4*>(x + (size_t)r * K);
  float s;
  if (static_scale) {
    s = *static_scale;
  } else {
    float m = 0.f;
    for (int i = threadIdx.x; i < K8; i += blockDim.x) {
      float f[8];
      unpack8<T>(xr[i], f);
#pragma unroll
      for (int e = 0; e < 8; ++e) m = fmaxf(m, fabsf(f[e]));
    }
    __shared__ float part[32];
    m = warp_max(m);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = m;
    __syncthreads();
    if (threadIdx.x < 32) {
      float w = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0.f;
      w = warp_max(w);
      if (threadIdx.x == 0) part[0] = w;
    }
    __syncthreads();
    m = part[0];
    if (amax_ub > 0.f) m = fminf(m, amax_ub);
    // A zero row (a padded graph slot) still gets a usable scale: 1 / (448 * 512), vLLM's floor.
    s = fmaxf(__fdiv_rn(m, 448.f), 1.f / (448.f * 512.f));
  }
  if (threadIdx.x == 0) scale[r] = s;
  uint2* qr = reinterpret_cast<uint2*>(q + (size_t)r * K);
  for (int i = threadIdx.x; i < K8; i += blockDim.x) {
    float f[8];
    unpack8<T>(xr[i], f);
#pragma unroll
    for (int e = 0; e < 8; ++e) f[e] = __fdiv_rn(f[e], s);
    qr[i] = pack_e4m3x8(f);
  }
}

// y[m, n] = acc[m, n] * xscale[m] * wscale[n], 4 columns a thread; acc summed over `parts` K-slice
// products (part_stride4 float4s apart) in order first.
template <typename T, GemvOut MODE>
__global__ void fp8_epilogue_kernel(const float* __restrict__ acc, const float* __restrict__ xscale, const float* __restrict__ wscale,
                                    int M, int N, void* __restrict__ y, bool rnd, int parts, size_t part_stride4) {
  grid_dependency_wait();
  const int N4 = N / 4;
  const size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (idx >= (size_t)M * N4) return;
  const int m = static_cast<int>(idx / N4), n = static_cast<int>(idx % N4) * 4;
  float4 a = reinterpret_cast<const float4*>(acc)[idx];
  for (int p = 1; p < parts; ++p) {
    const float4 b = reinterpret_cast<const float4*>(acc)[idx + p * part_stride4];
    a.x += b.x; a.y += b.y; a.z += b.z; a.w += b.w;
  }
  const float4 w = *reinterpret_cast<const float4*>(wscale + n);
  const float xs = xscale[m];
  const float v[4] = {a.x * (w.x * xs), a.y * (w.y * xs), a.z * (w.z * xs), a.w * (w.w * xs)};
  const size_t o = (size_t)m * N + n;
  if constexpr (MODE == GemvOut::Act) {
    T* out = static_cast<T*>(y) + o;
#pragma unroll
    for (int e = 0; e < 4; ++e) out[e] = from_f<T>(v[e]);
  } else if constexpr (MODE == GemvOut::F32) {
    *reinterpret_cast<float4*>(static_cast<float*>(y) + o) = make_float4(v[0], v[1], v[2], v[3]);
  } else {
    float* res = static_cast<float*>(y) + o;
#pragma unroll
    for (int e = 0; e < 4; ++e) res[e] = round_if<T>(rnd, res[e] + round_if<T>(rnd, v[e]));
  }
}

// out[n, k] = T(q[n, k] * scale[n]), 16 elements a thread.
template <typename T, DType W>
__global__ void dequantize_kernel(const uint8_t* __restrict__ q, const float* __restrict__ scale, int N, int K, T* __restrict__ out) {
  grid_dependency_wait();
  const int K16 = K / 16;
  const size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (idx >= (size_t)N * K16) return;
  const int n = static_cast<int>(idx / K16);
  float f[16];
  unpack16<W>(reinterpret_cast<const uint4*>(q)[idx], f);
  const float s = scale[n];
#pragma unroll
  for (int e = 0; e < 16; ++e) f[e] *= s;
  uint4* o = reinterpret_cast<uint4*>(out) + 2 * idx;
  o[0] = pack8<T>(f);
  o[1] = pack8<T>(f + 8);
}

}  // namespace

void gemv_quant(DType act, DType wt, const QuantGemv& g, GemvOut mode, cudaStream_t s) {
  if (g.R == 0) return;
  if (g.K % 16 != 0) throw std::runtime_error("cuda: gemv_quant needs K % 16 == 0");
  NS_DISPATCH_ACT(act, E, {
    if (wt == DType::I8) launch_gemv_mode<E, DType::I8>(g, mode, s);
    else launch_gemv_mode<E, DType::F8E4M3>(g, mode, s);
  });
  NS_LAUNCHED("gemv_quant");
}

void gemv_quant_fused(DType act, DType wt, const QuantGemv& g0, const GemvFusion& f0, cudaStream_t s) {
  if (g0.R == 0) return;
  if (g0.K % 16 != 0) throw std::runtime_error("cuda: gemv_quant_fused needs K % 16 == 0");
  if (wt != DType::I8 && wt != DType::F8E4M3) throw std::runtime_error("cuda: gemv_quant_fused takes int8 or E4M3 weights");
  GemvFusion f = f0;
  QuantGemv g = g0;
  unsigned grid;
  fused_shape(f, g.N, grid);
  NS_DISPATCH_ACT(act, E, {
    if (wt == DType::I8) launch_quant_fused_kind<E, DType::I8>(g, f, grid, s);
    else launch_quant_fused_kind<E, DType::F8E4M3>(g, f, grid, s);
  });
  NS_LAUNCHED("gemv_quant_fused");
}

void quantize_act(DType act, const void* x, int M, int K, const float* static_scale, float amax_ub, void* q, float* scale,
                  cudaStream_t s) {
  if (M == 0) return;
  if (K % 8 != 0) throw std::runtime_error("cuda: quantize_act needs K % 8 == 0");
  NS_DISPATCH_ACT(act, E, {
    launch("quantize_act", quantize_act_kernel<E>, dim3(M), dim3(256), s, static_cast<const E*>(x), K, static_scale, amax_ub,
           static_cast<uint8_t*>(q), scale);
  });
  NS_LAUNCHED("quantize_act");
}

void fp8_epilogue(DType act, const float* acc, const float* xscale, const float* wscale, int M, int N, void* y, GemvOut mode,
                  cudaStream_t s, int parts, size_t part_stride) {
  if (M == 0) return;
  if (N % 4 != 0) throw std::runtime_error("cuda: fp8_epilogue needs N % 4 == 0");
  if (parts > 1 && part_stride % 4 != 0) throw std::runtime_error("cuda: fp8_epilogue needs part_stride % 4 == 0");
  const bool rnd = rounds(kRoundResidual);
  const unsigned grid = ceil_div((size_t)M * (N / 4), 256);
  const size_t ps4 = part_stride / 4;
  NS_DISPATCH_ACT(act, E, {
    if (mode == GemvOut::Act)
      launch("fp8_epilogue", fp8_epilogue_kernel<E, GemvOut::Act>, dim3(grid), dim3(256), s, acc, xscale, wscale, M, N, y, rnd, parts, ps4);
    else if (mode == GemvOut::F32)
      launch("fp8_epilogue", fp8_epilogue_kernel<E, GemvOut::F32>, dim3(grid), dim3(256), s, acc, xscale, wscale, M, N, y, rnd, parts, ps4);
    else
      launch("fp8_epilogue", fp8_epilogue_kernel<E, GemvOut::AddResidual>, dim3(grid), dim3(256), s, acc, xscale, wscale, M, N, y, rnd, parts, ps4);
  });
  NS_LAUNCHED("fp8_epilogue");
}

void dequantize(DType act, DType wt, const void* q, const float* scale, int N, int K, void* out, cudaStream_t s) {
  if (N == 0) return;
  if (K % 16 != 0) throw std::runtime_error("cuda: dequantize needs K % 16 == 0");
  const unsigned grid = ceil_div((size_t)N * (K / 16), 256);
  NS_DISPATCH_ACT(act, E, {
    if (wt == DType::I8)
      launch("dequantize", dequantize_kernel<E, DType::I8>, dim3(grid), dim3(256), s, static_cast<const uint8_t*>(q), scale, N, K, static_cast<E*>(out));
    else
      launch("dequantize", dequantize_kernel<E, DType::F8E4M3>, dim3(grid), dim3(256), s, static_cast<const uint8_t*>(q), scale, N, K,
             static_cast<E*>(out));
  });
  NS_LAUNCHED("dequantize");
}

}  // namespace ns::cuda
