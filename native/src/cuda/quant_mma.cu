// Weight-only products (W8A16: int8, or the E4M3 of an FP8 weight-only checkpoint) of more rows than
// a GEMV's on tensor cores (docs/QUANTIZATION.md): y[M, N] = x[M, K] · W[N, K]^T * wscale[n]. A
// batch-64 decode step is still bound by the weights' bytes (64 rows make 128 flops a weight byte,
// under what mma.sync sustains per byte of HBM bandwidth), so the weights are read once, as bytes,
// and widened in registers to the activation dtype (int8 and E4M3 values are exact in bf16 and
// fp16) for bf16/fp16 mma; the row scale comes last. (Dequantizing into a bf16 copy for cuBLAS
// moves 1 + 2 + 2 bytes a weight.)
//
// Block: 128 weight rows (4 warps x 32) x 64 input rows, K in chunks of 64 through a 4-stage
// cp.async pipeline (weights 128 x 64 bytes, inputs 64 x 64 values); blockIdx.z splits K so that
// even a 4096-row matrix (32 blocks of 128) fills the GPU. Each split writes f32 partial sums;
// gemm_quant_reduce sums the splits in order (deterministic) times the scales, in the output mode.
//
// The sum over k is order-free, so each chunk's 64 columns are permuted so that a lane's fragments
// are contiguous bytes: lane (g = lane / 4, t = lane % 4) takes the chunk's columns 16 t .. 16 t + 15
// of its weight rows (one 16-byte load a row) and of its input rows. mma.m16n8k16: in k-step j (of
// 4) the fragment positions {2t, 2t+1, 2t+8, 2t+9} are columns 16 t + 4 j + {0..3}.
// A = 16 weight rows x k, B = k x 8 input rows, C = weight rows x input rows.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <type_traits>

#include "cuda/cuda_common.h"
#include "cuda/gemv_common.h"
#include "cuda/kernels.h"
#include "cuda/mma.h"
#include "cuda/quant.h"

namespace ns::cuda {
namespace {

constexpr int kBN = 128, kBM = 64, kBK = 64, kStages = 4, kThreads = 128;
constexpr int kWBytes = kBN * kBK;  // one stage's weights
// One stage's inputs: 16-bit rows padded to 144 bytes (conflict-free 16-byte lane loads at 32 t).
constexpr int kXPitchBytes = (kBK + 8) * 2;
constexpr int kStageBytes = kWBytes + kBM * kXPitchBytes;
constexpr int kSmem = kStages * kStageBytes;  // 68 KB: past the 48 KB a block gets without the opt-in

// Two weight bytes (the low two of `w` when hi is false) to a pair of activation-dtype values.
template <typename T, DType W>
__device__ __forceinline__ uint32_t widen2(uint32_t w, bool hi) {
  const uint32_t p = hi ? (w >> 16) : (w & 0xffffu);
  float2 f;
  if constexpr (W == DType::I8) {
    f = make_float2(static_cast<float>(static_cast<int8_t>(p & 0xff)), static_cast<float>(static_cast<int8_t>(p >> 8)));
  } else {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    const __half2 h = __half2(__nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(p), __NV_E4M3));
    if constexpr (std::is_same_v<T, __half>) return *reinterpret_cast<const uint32_t*>(&h);
    f = __half22float2(h);
#else
    float v[4];
    quant::e4m3x4_to_f32(p, v);
    f = make_float2(v[0], v[1]);
#endif
  }
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 h = __floats2half2_rn(f.x, f.y);
    return *reinterpret_cast<const uint32_t*>(&h);
  } else {
    const __nv_bfloat162 h = __floats2bfloat162_rn(f.x, f.y);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
}

template <typename T, DType W>
__global__ void __launch_bounds__(kThreads) gemm_quant_kernel(const uint8_t* __restrict__ Wq, const void* __restrict__ xv, int M, int N,
                                                              int K, int chunks_per_split, float* __restrict__ part) {
  constexpr int kStage = kStageBytes, kPitch = kXPitchBytes;
  extern __shared__ __align__(16) uint8_t smem[];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int n0 = blockIdx.x * kBN, m0 = blockIdx.y * kBM;
  const int c0 = blockIdx.z * chunks_per_split, c1 = min(K / kBK, c0 + chunks_per_split);
  const int nc = c1 - c0;

  // Chunk c's weights: 128 rows x 4 16-byte pieces, 4 a thread (rows past N zero-filled).
  auto load_w = [&](int c, int stage) {
    uint8_t* sw = smem + stage * kStage;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int idx = tid + i * kThreads, row = idx >> 2, piece = idx & 3;
      const bool ok = n0 + row < N;
      cp_async16(smem_addr(sw + row * kBK + piece * 16), Wq + (size_t)(ok ? n0 + row : 0) * K + (size_t)c * kBK + piece * 16, ok);
    }
  };
  // Chunk c's inputs: 64 rows x 64 values (8 16-byte pieces), rows past M zero-filled.
  const T* x = static_cast<const T*>(xv);
  auto load_x = [&](int c, int stage) {
    constexpr int kPieces = kBK * sizeof(T) / 16, kEl = 16 / sizeof(T);
    uint8_t* sx = smem + stage * kStage + kWBytes;
#pragma unroll
    for (int i = 0; i < kBM * kPieces / kThreads; ++i) {
      const int idx = tid + i * kThreads, row = idx / kPieces, piece = idx % kPieces;
      const bool ok = m0 + row < M;
      cp_async16(smem_addr(sx + row * kPitch + piece * 16), x + (size_t)(ok ? m0 + row : 0) * K + (size_t)c * kBK + piece * kEl, ok);
    }
  };

  // Weights never change during a step: their first stages start before the previous kernel ends.
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s)
    if (s < nc) load_w(c0 + s, s);
  grid_dependency_wait();
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < nc) load_x(c0 + s, s);
    cp_async_commit();
  }

  float acc[2][8][4];
#pragma unroll
  for (int a = 0; a < 2; ++a)
#pragma unroll
    for (int b = 0; b < 8; ++b)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[a][b][e] = 0.f;

  for (int i = 0; i < nc; ++i) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // chunk i landed for every thread, and every warp is done with chunk i - 1's stage
    if (i + kStages - 1 < nc) {
      load_w(c0 + i + kStages - 1, (i + kStages - 1) % kStages);
      load_x(c0 + i + kStages - 1, (i + kStages - 1) % kStages);
    }
    cp_async_commit();
    const uint8_t* sw = smem + (i % kStages) * kStage;
    const uint8_t* sx = sw + kWBytes;
    {
      // A fragments of the warp's two 16-row tiles for the 4 k-steps: rows g and g + 8, widened.
      uint32_t af[2][4][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        const uint4 lo = *reinterpret_cast<const uint4*>(sw + (warp * 32 + mt * 16 + g) * kBK + 16 * t);
        const uint4 hi = *reinterpret_cast<const uint4*>(sw + (warp * 32 + mt * 16 + g + 8) * kBK + 16 * t);
        const uint32_t wl[4] = {lo.x, lo.y, lo.z, lo.w}, wh[4] = {hi.x, hi.y, hi.z, hi.w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          af[mt][j][0] = widen2<T, W>(wl[j], false);
          af[mt][j][1] = widen2<T, W>(wh[j], false);
          af[mt][j][2] = widen2<T, W>(wl[j], true);
          af[mt][j][3] = widen2<T, W>(wh[j], true);
        }
      }
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        const uint4* xp = reinterpret_cast<const uint4*>(sx + (nt * 8 + g) * kPitch + 32 * t);
        const uint4 b0 = xp[0], b1 = xp[1];
        const uint32_t b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int mt = 0; mt < 2; ++mt) mma16816(acc[mt][nt], af[mt][j], b[2 * j], b[2 * j + 1], static_cast<T*>(nullptr));
      }
    }
  }
  cp_async_wait<0>();

  // c0, c1: weight row g, input rows 2t, 2t + 1; c2, c3: weight row g + 8.
  float* out = part + (size_t)blockIdx.z * M * N;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int n = n0 + warp * 32 + mt * 16 + g + (e >= 2 ? 8 : 0), m = m0 + nt * 8 + 2 * t + (e & 1);
        if (n < N && m < M) out[(size_t)m * N + n] = acc[mt][nt][e];
      }
}

// y[m, n] = wscale[n] * sum over the splits of part[s, m, n], in split order; one element a thread.
template <typename T, GemvOut MODE>
__global__ void gemm_quant_reduce(const float* __restrict__ part, int splits, const float* __restrict__ wscale, int M, int N,
                                  void* __restrict__ y, bool rnd) {
  grid_dependency_wait();
  const size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x, MN = (size_t)M * N;
  if (idx >= MN) return;
  float v = 0.f;
  for (int s = 0; s < splits; ++s) v += part[s * MN + idx];
  v *= wscale[idx % N];
  if constexpr (MODE == GemvOut::Act) static_cast<T*>(y)[idx] = from_f<T>(v);
  else if constexpr (MODE == GemvOut::F32) static_cast<float*>(y)[idx] = v;
  else {
    float* res = static_cast<float*>(y) + idx;
    *res = round_if<T>(rnd, *res + round_if<T>(rnd, v));
  }
}

template <typename T, DType W>
void launch_gemm(const QuantGemm& g, GemvOut mode, float* ws, int splits, int per_split, cudaStream_t s) {
  auto* kernel = gemm_quant_kernel<T, W>;
  // kSmem > 48 KB needs the opt-in, once per device (one process may drive several); the warm-up
  // runs every decode shape before the graphs are captured.
  static std::atomic<uint64_t> configured{0};
  int dev = 0;
  check(cudaGetDevice(&dev), "gemm_quant: cudaGetDevice");
  const uint64_t bit = 1ull << (dev & 63);
  if (!(configured.load() & bit)) {
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem), "gemm_quant: reserving shared memory");
    configured.fetch_or(bit);
  }
  const dim3 grid(ceil_div(g.N, kBN), ceil_div(g.M, kBM), splits);
  launch_smem("gemm_quant", kernel, grid, dim3(kThreads), kSmem, s, static_cast<const uint8_t*>(g.w), g.x, g.M, g.N, g.K, per_split, ws);
  const bool rnd = rounds(kRoundResidual);
  const unsigned rg = ceil_div((size_t)g.M * g.N, 256);
  if (mode == GemvOut::Act)
    launch("gemm_quant_reduce", gemm_quant_reduce<T, GemvOut::Act>, dim3(rg), dim3(256), s, ws, splits, g.wscale, g.M, g.N, g.y, rnd);
  else if (mode == GemvOut::F32)
    launch("gemm_quant_reduce", gemm_quant_reduce<T, GemvOut::F32>, dim3(rg), dim3(256), s, ws, splits, g.wscale, g.M, g.N, g.y, rnd);
  else
    launch("gemm_quant_reduce", gemm_quant_reduce<T, GemvOut::AddResidual>, dim3(rg), dim3(256), s, ws, splits, g.wscale, g.M, g.N, g.y, rnd);
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

}  // namespace

bool gemm_quant(DType act, DType wt, const QuantGemm& g, GemvOut mode, float* ws, size_t ws_bytes, int sm_count, cudaStream_t s) {
  if (g.M == 0) return true;
  if (g.K % kBK != 0 || !aligned16(g.w) || !aligned16(g.x)) return false;
  const size_t slice = (size_t)g.M * g.N * 4;
  if (slice > ws_bytes) return false;
  // Splits of K until the grid covers every SM once (at least 4 chunks a split, within ws).
  const int chunks = g.K / kBK;
  const size_t tiles = (size_t)ceil_div(g.N, kBN) * ceil_div(g.M, kBM);
  int splits = static_cast<int>(std::min<size_t>({(std::max(sm_count, 1) + tiles - 1) / tiles, (size_t)std::max(chunks / 4, 1), ws_bytes / slice}));
  splits = std::max(splits, 1);
  const int per_split = (chunks + splits - 1) / splits;
  splits = (chunks + per_split - 1) / per_split;
  NS_DISPATCH_ACT(act, E, {
    if (wt == DType::I8) launch_gemm<E, DType::I8>(g, mode, ws, splits, per_split, s);
    else launch_gemm<E, DType::F8E4M3>(g, mode, ws, splits, per_split, s);
  });
  NS_LAUNCHED("gemm_quant");
  return true;
}

}  // namespace ns::cuda
