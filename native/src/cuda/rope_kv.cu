// Bias add + rotary embedding (HF rotate_half: pairs (i, i + hd/2)) + paged KV-cache write.
#include "cuda/cuda_common.h"
#include "cuda/kernels.h"

namespace ns::cuda {
namespace {

// One block per token; threads walk (head, pair) for the nh + nkv rotated heads, then the v heads.
template <typename T>
__global__ void rope_kv_kernel(T* qkv, const T* bias, int nh, int nkv, int hd, const int32_t* pos,
                               const int32_t* slot, const float* inv_freq, T* kc, T* vc) {
  const int t = blockIdx.x;
  const int stride = (nh + 2 * nkv) * hd;
  T* row = qkv + (size_t)t * stride;
  const int half = hd / 2;
  const float p = static_cast<float>(pos[t]);
  const int sl = slot[t];
  for (int i = threadIdx.x; i < (nh + nkv) * half; i += blockDim.x) {
    const int h = i / half, j = i % half;
    const int a = h * hd + j, b = a + half;
    float x1 = to_f(row[a]), x2 = to_f(row[b]);
    if (bias) { x1 += to_f(bias[a]); x2 += to_f(bias[b]); }
    float sn, cs;
    sincosf(p * inv_freq[j], &sn, &cs);
    const T o1 = from_f<T>(x1 * cs - x2 * sn);
    const T o2 = from_f<T>(x2 * cs + x1 * sn);
    if (h < nh) {
      row[a] = o1; row[b] = o2;
    } else if (sl >= 0) {
      T* k = kc + ((size_t)sl * nkv + (h - nh)) * hd;
      k[j] = o1; k[j + half] = o2;
    }
  }
  if (sl < 0) return;
  const T* v = row + (nh + nkv) * hd;
  const T* vb = bias ? bias + (nh + nkv) * hd : nullptr;
  T* vo = vc + (size_t)sl * nkv * hd;
  for (int i = threadIdx.x; i < nkv * hd; i += blockDim.x)
    vo[i] = vb ? from_f<T>(to_f(v[i]) + to_f(vb[i])) : v[i];
}

}  // namespace

void rope_kv_write(DType act, void* qkv, const void* bias, int T, int nh, int nkv, int hd,
                   const int32_t* pos, const int32_t* slot, const float* inv_freq, void* kcache,
                   void* vcache, cudaStream_t s) {
  if (T == 0) return;
  NS_DISPATCH_ACT(act, E, {
    rope_kv_kernel<E><<<T, 256, 0, s>>>(static_cast<E*>(qkv), static_cast<const E*>(bias), nh, nkv, hd, pos,
                                        slot, inv_freq, static_cast<E*>(kcache), static_cast<E*>(vcache));
  });
  NS_LAUNCHED("rope_kv_write");
}

}  // namespace ns::cuda
