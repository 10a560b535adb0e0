// Device helpers of the kernels that end with one block finishing what the whole grid computed
// (the split attention's merge, the MoE router's routing, the decode output projection's residual
// add + norm): one launch instead of two, so a batch-1 decode layer pays fewer kernel boundaries
// (each a launch, a drain and a memory latency of a few us on an H100).
#pragma once

#include "cuda/cuda_common.h"

namespace ns::cuda {

// The threadfence-reduction handshake: every block calls it once its results are written; true
// (in every thread) for the block that brings *counter to `arrivals`, which then sees every other
// block's writes (read them with __ldcg: this SM's L1 may hold the same addresses from an earlier
// launch). That block sets *counter back to 0, so the next launch starts from 0 again; the counter
// must be 0 before the first one.
__device__ __forceinline__ bool last_arrival(int* counter, int arrivals) {
  __shared__ int s_last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    s_last = atomicAdd(counter, 1) == arrivals - 1;
    if (s_last) *counter = 0;
  }
  __syncthreads();
  if (s_last) __threadfence();
  return s_last;
}

// acc[s] += w . x[s] over K (K % 8 == 0) for the s < rows <= MT rows of x ([rows, K]), the lane's
// part of one warp's product (warp_sum it): 16-byte weight chunks, kDepth of them in flight per
// lane, each reused by every row.
template <typename T, int MT, int kDepth>
__device__ __forceinline__ void warp_row_dot(const uint4* w, const T* x, int K, int rows, float (&acc)[MT], int lane) {
  const int k8 = K / 8;
  for (int i = lane; i < k8; i += 32 * kDepth) {
    uint4 c[kDepth];
#pragma unroll
    for (int q = 0; q < kDepth; ++q) c[q] = i + 32 * q < k8 ? __ldg(w + i + 32 * q) : uint4{};
#pragma unroll
    for (int q = 0; q < kDepth; ++q) {
      if (i + 32 * q >= k8) break;
      float w8[8];
      unpack8<T>(c[q], w8);
#pragma unroll
      for (int s = 0; s < MT; ++s) {
        if (s >= rows) break;
        float x8[8];
        unpack8<T>(__ldg(reinterpret_cast<const uint4*>(x + (size_t)s * K) + i + 32 * q), x8);
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[s] += w8[e] * x8[e];
      }
    }
  }
}

}  // namespace ns::cuda
