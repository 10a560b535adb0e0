// Shared by every .cu file of the CUDA backend: error checks, element-type helpers and the
// dispatch from ns::DType to the CUDA element type. Activations and weights are bf16 or fp16
// ("act"); accumulation, the residual stream, norms and logits are fp32.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <stdexcept>
#include <string>
#include <utility>

#include "engine.h"

namespace ns::cuda {

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("cuda: ") + what + " failed: " + cudaGetErrorString(e));
}
#define NS_CUDA(x) ::ns::cuda::check((x), #x)
// After a kernel launch: catches bad launch configurations at once (asynchronous faults surface
// at the step's final synchronization).
#define NS_LAUNCHED(name) ::ns::cuda::check(cudaGetLastError(), name)

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half(x); }

template <typename T> struct CudaTypeOf;
template <> struct CudaTypeOf<__nv_bfloat16> { static constexpr cudaDataType value = CUDA_R_16BF; };
template <> struct CudaTypeOf<__half> { static constexpr cudaDataType value = CUDA_R_16F; };

inline cudaDataType cuda_type(DType d) {
  return d == DType::BF16 ? CUDA_R_16BF : d == DType::F16 ? CUDA_R_16F : CUDA_R_32F;
}

// Runs BODY with `T` bound to the element type of an activation dtype (bf16 or fp16).
#define NS_DISPATCH_ACT(dt, T, ...)                                                  \
  do {                                                                               \
    if ((dt) == ::ns::DType::BF16) { using T = __nv_bfloat16; __VA_ARGS__; }         \
    else if ((dt) == ::ns::DType::F16) { using T = __half; __VA_ARGS__; }            \
    else throw std::runtime_error("cuda: compute dtype must be bf16 or fp16");       \
  } while (0)

// Runs BODY with `T` bound to any storage dtype (f32, bf16, fp16).
#define NS_DISPATCH_ANY(dt, T, ...)                                                  \
  do {                                                                               \
    if ((dt) == ::ns::DType::F32) { using T = float; __VA_ARGS__; }                  \
    else NS_DISPATCH_ACT(dt, T, __VA_ARGS__);                                        \
  } while (0)

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

struct SumOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};
struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

template <typename Op>
__device__ __forceinline__ float warp_reduce(float v) {
  const Op op;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_max(float v) { return warp_reduce<MaxOp>(v); }

// Reduction with Op over the block (blockDim.x a multiple of 32, <= 1024), returned to every thread;
// part: 32 floats of shared memory; identity: Op's neutral value. The first barrier lets a kernel
// call it again with the same part.
template <typename Op>
__device__ __forceinline__ float block_reduce(float v, float* part, float identity) {
  v = warp_reduce<Op>(v);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    const float w = warp_reduce<Op>(threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : identity);
    if (threadIdx.x == 0) part[0] = w;
  }
  __syncthreads();
  return part[0];
}
__device__ __forceinline__ float block_sum(float v, float* part) { return block_reduce<SumOp>(v, part, 0.f); }
__device__ __forceinline__ float block_max(float v, float* part) { return block_reduce<MaxOp>(v, part, -FLT_MAX); }

// Where the kernels also round to the activation dtype as HF transformers' bf16/fp16 forward
// does (docs/ENGINE.md "CUDA numerics"): the residual stream, the normalised row before the
// weight, RoPE's cos/sin and products, SiLU before the up product, P before P.V in the SIMT
// kernel (the flash kernel always rounds P: its mma inputs are 16-bit). NODESPEED_CUDA_ROUND=<mask>;
// the default 0 keeps these intermediates in fp32, the closest to an fp32 forward (the fixtures'
// and py-tiny's references); kRoundHF tracks HF's own bf16 rounding (closer to HF bf16 logits).
enum RoundSite : int { kRoundResidual = 1, kRoundNorm = 2, kRoundRope = 4, kRoundSilu = 8, kRoundP = 16, kRoundHF = 31 };
int round_mask();  // parsed once (kernels_basic.cu)
inline bool rounds(int site) { return (round_mask() & site) != 0; }
template <typename T>
__device__ __forceinline__ float round_if(bool on, float x) { return on ? to_f(from_f<T>(x)) : x; }

// Eight 16-bit elements (one 16-byte load) to fp32.
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
template <typename T>
__device__ __forceinline__ void unpack8(const uint4& v, float* f) { unpack8(v, f, static_cast<T*>(nullptr)); }
// Eight fp32 values to one 16-byte pack of the activation dtype.
template <typename T>
__device__ __forceinline__ uint4 pack8(const float* f) {
  uint4 v;
  T* p = reinterpret_cast<T*>(&v);
#pragma unroll
  for (int i = 0; i < 8; ++i) p[i] = from_f<T>(f[i]);
  return v;
}

inline unsigned ceil_div(size_t a, size_t b) { return static_cast<unsigned>((a + b - 1) / b); }

// Programmatic dependent launch (Hopper+): a kernel may be scheduled while the previous one in the
// stream drains, hiding launch latency and the previous kernel's tail (~300 kernels per decode
// step). Every kernel therefore starts with grid_dependency_wait() before touching memory an
// earlier kernel wrote; it returns once those kernels finished and their writes are visible, so
// ordering is the same as plain stream order.
__device__ __forceinline__ void grid_dependency_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the next kernel of the stream be scheduled before this one ends (once every block of this
// grid has called it or exited): its blocks run up to their grid_dependency_wait, so what they do
// before it (pulling weights into L2) overlaps this kernel's tail. Ordering stays stream order.
__device__ __forceinline__ void grid_dependents_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

bool pdl_enabled();  // cuda_backend.cu: compute capability >= 9.0 (cached)

// launch() with `smem` bytes of dynamic shared memory.
template <typename... KArgs, typename... Args>
void launch_smem(const char* what, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                 Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl_enabled() ? 1 : 0;
  check(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...), what);
}

template <typename... KArgs, typename... Args>
void launch(const char* what, void (*kernel)(KArgs...), dim3 grid, dim3 block, cudaStream_t s, Args&&... args) {
  launch_smem(what, kernel, grid, block, 0, s, std::forward<Args>(args)...);
}

}  // namespace ns::cuda
