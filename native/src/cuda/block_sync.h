// Blocks of one launch that wait for each other (the threadfence-reduction pattern): the split
// attention's merge by its last block (attention.cu).
#pragma once

#include "cuda/cuda_common.h"

namespace ns::cuda {

// Every block of a group calls it once its results are written; true (in every thread) for the
// block that brings *counter to `arrivals`, which then sees every other block's results (read them
// through L2, __ldcg: this SM's L1 may hold the same addresses from an earlier launch). That block
// sets *counter back to 0 for the next launch.
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

}  // namespace ns::cuda
