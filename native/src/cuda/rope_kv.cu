// Bias add + rotary embedding (HF rotate_half: pairs (i, i + hd/2)) + paged KV-cache write. With
// the fp8 KV cache (KV8) k and v, rounded to the activation dtype as always, are stored as
// E4M3 of k / k_scale and v / v_scale.
#include <algorithm>

#include "cuda/act_math.h"
#include "cuda/cuda_common.h"
#include "cuda/kernels.h"
#include "cuda/kv_layout.h"
#include "cuda/quant.h"

namespace ns::cuda {
namespace {

// Grid (token, group of hpb heads) over the nh q heads, nkv k heads and nkv v heads; every head
// is hd/2 work items (a rotated pair (j, j + hd/2) of a q/k head, or two copied elements of a v
// head). A block computes its token's cos/sin once into shared memory. Decode steps use one head
// per block (enough blocks to spread a single token over the GPU); long prefill steps hpb heads per
// block: one block per (token, head) there is ~200k tiny blocks and 4x the copy time.
constexpr int kRopeMaxHalf = 128;  // head_dim <= 256, even (checked when the backend is constructed)

// cos/sin of one token's position for the pair-starts 0..half-1 into shared memory (the caller syncs).
// HF: q * cos + rotate_half(q) * sin with cos, sin and both products activation-dtype tensors.
template <typename T>
__device__ __forceinline__ void rope_table(int pos, const float* inv_freq, int half, bool rnd, float* s_cos, float* s_sin) {
  for (int j = threadIdx.x; j < half; j += blockDim.x) rope_cos_sin<T>(pos, inv_freq[j], rnd, s_cos[j], s_sin[j]);
}

template <typename T, bool KV8>
__global__ void rope_kv_kernel(T* qkv, const T* bias, int nh, int nkv, int hd, int hpb, const int32_t* pos,
                               const int32_t* slot, const float* inv_freq, void* kc, void* vc, int B, bool rnd,
                               float ks, float vs) {
  grid_dependency_wait();
  const int t = blockIdx.x, h0 = blockIdx.y * hpb, h1 = min(h0 + hpb, nh + 2 * nkv);
  T* row = qkv + (size_t)t * (nh + 2 * nkv) * hd;
  const int sl = slot[t];
  const int half = hd / 2;
  __shared__ float s_cos[kRopeMaxHalf], s_sin[kRopeMaxHalf];
  if (h0 < nh + nkv) {
    rope_table<T>(pos[t], inv_freq, half, rnd, s_cos, s_sin);
    __syncthreads();
  }
  for (int i = threadIdx.x; i < (h1 - h0) * half; i += blockDim.x) {
    const int h = h0 + i / half, j = i % half;
    if (h >= nh && sl < 0) continue;  // padding token of a graph bucket: no cache write
    const int a = h * hd + j, b = a + half;
    if (h < nh + nkv) {
      float x1 = to_f(row[a]), x2 = to_f(row[b]);
      if (bias) { x1 = to_f(from_f<T>(x1 + to_f(bias[a]))); x2 = to_f(from_f<T>(x2 + to_f(bias[b]))); }
      float f1, f2;
      rope_rotate<T>(x1, x2, s_cos[j], s_sin[j], rnd, f1, f2);
      const T o1 = from_f<T>(f1), o2 = from_f<T>(f2);
      if (h < nh) {
        row[a] = o1; row[b] = o2;
      } else {
        const size_t k = kv_offset(sl / B, sl % B, h - nh, nkv, B, hd);
        store_kv<T, KV8>(kc, k + j, o1, ks);
        store_kv<T, KV8>(kc, k + j + half, o2, ks);
      }
    } else {
      const size_t vo = kv_offset(sl / B, sl % B, h - nh - nkv, nkv, B, hd);
      store_kv<T, KV8>(vc, vo + j, bias ? from_f<T>(to_f(row[a]) + to_f(bias[a])) : row[a], vs);
      store_kv<T, KV8>(vc, vo + j + half, bias ? from_f<T>(to_f(row[b]) + to_f(bias[b])) : row[b], vs);
    }
  }
}

// The same operation, element for element (bit-identical outputs), with 16-byte accesses: a work item
// is 8 consecutive pair-starts j..j+7 of one head (two 16-byte loads, two 16-byte stores), hd % 16
// == 0. Grid (token, chunk of kRopeVecThreads items). On an H200 the scalar kernel above took 281 us
// a layer for an 8192-token prefill step (~35% of copy bandwidth for its 400 MB; ncu, bench/results/serve-profile-h200-bbaa8c7.json).
constexpr int kRopeVecThreads = 128;

template <typename T, bool KV8>
__global__ void rope_kv_vec_kernel(T* qkv, const T* bias, int nh, int nkv, int hd, const int32_t* pos,
                                   const int32_t* slot, const float* inv_freq, void* kc, void* vc, int B, bool rnd,
                                   float ks, float vs) {
  grid_dependency_wait();
  const int t = blockIdx.x, half = hd / 2, per_head = half / 8;
  const int i = blockIdx.y * blockDim.x + threadIdx.x;
  const int h = i / per_head, j0 = (i % per_head) * 8;
  T* row = qkv + (size_t)t * (nh + 2 * nkv) * hd;
  const int sl = slot[t];
  __shared__ float s_cos[kRopeMaxHalf], s_sin[kRopeMaxHalf];
  rope_table<T>(pos[t], inv_freq, half, rnd, s_cos, s_sin);
  __syncthreads();
  if (h >= nh + 2 * nkv) return;
  if (h >= nh && sl < 0) return;  // padding token of a graph bucket: no cache write
  const int a = h * hd + j0, b = a + half;
  float x1[8], x2[8], o1[8], o2[8];
  unpack8<T>(*reinterpret_cast<const uint4*>(row + a), x1);
  unpack8<T>(*reinterpret_cast<const uint4*>(row + b), x2);
  if (bias) {
    float b1[8], b2[8];
    unpack8<T>(*reinterpret_cast<const uint4*>(bias + a), b1);
    unpack8<T>(*reinterpret_cast<const uint4*>(bias + b), b2);
#pragma unroll
    for (int e = 0; e < 8; ++e) { x1[e] = to_f(from_f<T>(x1[e] + b1[e])); x2[e] = to_f(from_f<T>(x2[e] + b2[e])); }
  }
  if (h < nh + nkv) {
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      rope_rotate<T>(x1[e], x2[e], s_cos[j0 + e], s_sin[j0 + e], rnd, o1[e], o2[e]);
      o1[e] = to_f(from_f<T>(o1[e]));
      o2[e] = to_f(from_f<T>(o2[e]));
    }
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e) { o1[e] = x1[e]; o2[e] = x2[e]; }
  }
  if (KV8 && h >= nh) {  // 8 E4M3 bytes each: value / scale (o1, o2 already hold the activation-dtype values)
    const bool is_k = h < nh + nkv;
    const float sc = is_k ? ks : vs;
    uint8_t* dst = static_cast<uint8_t*>(is_k ? kc : vc) + kv_offset(sl / B, sl % B, is_k ? h - nh : h - nh - nkv, nkv, B, hd);
#pragma unroll
    for (int e = 0; e < 8; ++e) { o1[e] = __fdiv_rn(o1[e], sc); o2[e] = __fdiv_rn(o2[e], sc); }
    *reinterpret_cast<uint2*>(dst + j0) = pack_e4m3x8(o1);
    *reinterpret_cast<uint2*>(dst + j0 + half) = pack_e4m3x8(o2);
    return;
  }
  T* dst;
  if (h < nh) dst = row + h * hd;
  else if (h < nh + nkv) dst = static_cast<T*>(kc) + kv_offset(sl / B, sl % B, h - nh, nkv, B, hd);
  else dst = static_cast<T*>(vc) + kv_offset(sl / B, sl % B, h - nh - nkv, nkv, B, hd);
  *reinterpret_cast<uint4*>(dst + j0) = pack8<T>(o1);
  *reinterpret_cast<uint4*>(dst + j0 + half) = pack8<T>(o2);
}


template <typename E, bool KV8>
void launch_rope_kv(void* qkv, const void* bias, int T, int nh, int nkv, int hd, const int32_t* pos, const int32_t* slot,
                    const float* inv_freq, const KvCache& kv, int block_size, cudaStream_t s) {
  const int heads = nh + 2 * nkv;
  if (hd % 16 == 0) {
    const int items = heads * (hd / 16);
    launch("rope_kv_write", rope_kv_vec_kernel<E, KV8>, dim3(T, (items + kRopeVecThreads - 1) / kRopeVecThreads), dim3(kRopeVecThreads), s,
           static_cast<E*>(qkv), static_cast<const E*>(bias), nh, nkv, hd, pos, slot, inv_freq, kv.k, kv.v, block_size,
           rounds(kRoundRope), kv.k_scale, kv.v_scale);
    return;
  }
  const int hpb = T >= 32 ? 8 : 1;
  const int threads = std::max(32, std::min(128, hpb * hd / 2));
  launch("rope_kv_write", rope_kv_kernel<E, KV8>, dim3(T, (heads + hpb - 1) / hpb), dim3(threads), s, static_cast<E*>(qkv),
         static_cast<const E*>(bias), nh, nkv, hd, hpb, pos, slot, inv_freq, kv.k, kv.v, block_size, rounds(kRoundRope),
         kv.k_scale, kv.v_scale);
}

}  // namespace

void rope_kv_write(DType act, void* qkv, const void* bias, int T, int nh, int nkv, int hd,
                   const int32_t* pos, const int32_t* slot, const float* inv_freq, const KvCache& kv,
                   int block_size, cudaStream_t s) {
  if (T == 0) return;
  NS_DISPATCH_ACT(act, E, {
    if (kv.fp8) launch_rope_kv<E, true>(qkv, bias, T, nh, nkv, hd, pos, slot, inv_freq, kv, block_size, s);
    else launch_rope_kv<E, false>(qkv, bias, T, nh, nkv, hd, pos, slot, inv_freq, kv, block_size, s);
  });
  NS_LAUNCHED("rope_kv_write");
}

}  // namespace ns::cuda
