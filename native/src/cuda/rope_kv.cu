// Bias add + rotary embedding (HF rotate_half: pairs (i, i + hd/2)) + paged KV-cache write.
#include <algorithm>

#include "cuda/cuda_common.h"
#include "cuda/kernels.h"
#include "cuda/kv_layout.h"

namespace ns::cuda {
namespace {

// Grid (token, head) over the nh q heads, nkv k heads and nkv v heads: enough blocks to spread a
// single decode token over the GPU. q/k heads rotate pairs (j, j + hd/2); v heads are copied.
template <typename T>
__global__ void rope_kv_kernel(T* qkv, const T* bias, int nh, int nkv, int hd, const int32_t* pos,
                               const int32_t* slot, const float* inv_freq, T* kc, T* vc, int B, bool hm, bool rnd) {
  grid_dependency_wait();
  const int t = blockIdx.x, h = blockIdx.y;
  T* row = qkv + (size_t)t * (nh + 2 * nkv) * hd;
  const int sl = slot[t];
  if (h >= nh && sl < 0) return;  // padding token of a graph bucket: no cache write
  const int half = hd / 2;
  if (h < nh + nkv) {
    const float p = static_cast<float>(pos[t]);
    for (int j = threadIdx.x; j < half; j += blockDim.x) {
      const int a = h * hd + j, b = a + half;
      float x1 = to_f(row[a]), x2 = to_f(row[b]);
      if (bias) { x1 = to_f(from_f<T>(x1 + to_f(bias[a]))); x2 = to_f(from_f<T>(x2 + to_f(bias[b]))); }
      float sn, cs;
      sincosf(p * inv_freq[j], &sn, &cs);
      // HF: q * cos + rotate_half(q) * sin with cos, sin and both products activation-dtype tensors.
      cs = round_if<T>(rnd, cs);
      sn = round_if<T>(rnd, sn);
      const T o1 = from_f<T>(round_if<T>(rnd, x1 * cs) + round_if<T>(rnd, -x2 * sn));
      const T o2 = from_f<T>(round_if<T>(rnd, x2 * cs) + round_if<T>(rnd, x1 * sn));
      if (h < nh) {
        row[a] = o1; row[b] = o2;
      } else {
        T* k = kc + kv_offset(hm, sl / B, sl % B, h - nh, nkv, B, hd);
        k[j] = o1; k[j + half] = o2;
      }
    }
  } else {
    const int kvh = h - nh - nkv;
    const T* v = row + (size_t)(nh + nkv + kvh) * hd;
    const T* vb = bias ? bias + (size_t)(nh + nkv + kvh) * hd : nullptr;
    T* vo = vc + kv_offset(hm, sl / B, sl % B, kvh, nkv, B, hd);
    for (int i = threadIdx.x; i < hd; i += blockDim.x) vo[i] = vb ? from_f<T>(to_f(v[i]) + to_f(vb[i])) : v[i];
  }
}

}  // namespace

void rope_kv_write(DType act, void* qkv, const void* bias, int T, int nh, int nkv, int hd,
                   const int32_t* pos, const int32_t* slot, const float* inv_freq, void* kcache,
                   void* vcache, int block_size, bool kv_head_major, cudaStream_t s) {
  if (T == 0) return;
  NS_DISPATCH_ACT(act, E, {
    launch("rope_kv_write", rope_kv_kernel<E>, dim3(T, nh + 2 * nkv), dim3(std::max(32, std::min(128, hd / 2))), s, static_cast<E*>(qkv), static_cast<const E*>(bias), nh, nkv, hd, pos,
                                        slot, inv_freq, static_cast<E*>(kcache), static_cast<E*>(vcache), block_size, kv_head_major, rounds(kRoundRope));
  });
  NS_LAUNCHED("rope_kv_write");
}

}  // namespace ns::cuda
