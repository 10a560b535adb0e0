// Blocks of one launch that wait for each other (the threadfence-reduction pattern): the split
// attention's merge by its last block (attention.cu), the fused MoE decode launches (moe.cu). Where
// a block waits for others, its place comes from block_ticket, so it only ever waits for blocks that
// already run (the hardware's dispatch order is not a guarantee of the programming model).
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

// The block's place in the launch, in the order blocks start running: 0, 1, ... gridDim.x - 1, the
// same in every thread. The dispenser *counter wraps back to 0 with the last ticket (it must hold 0
// when the launch starts, and no other launch may draw from it meanwhile).
__device__ __forceinline__ int block_ticket(int* counter) {
  __shared__ int s_ticket;
  if (threadIdx.x == 0) s_ticket = static_cast<int>(atomicInc(reinterpret_cast<unsigned*>(counter), gridDim.x - 1));
  __syncthreads();
  return s_ticket;
}

// The block's writes made visible, then *counter incremented once for the block.
__device__ __forceinline__ void arrive(int* counter) {
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) atomicAdd(counter, 1);
}

__device__ __forceinline__ int load_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// The whole block waits until *word >= value (written by earlier blocks of the launch with a
// release or after a fence); afterwards their writes are visible (read through L2).
__device__ __forceinline__ void block_wait_at_least(const int* word, int value) {
  if (threadIdx.x == 0)
    while (load_acquire(word) < value) __nanosleep(64);
  __syncthreads();
}

}  // namespace ns::cuda
