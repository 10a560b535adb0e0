// The router of a mixture-of-experts layer, one definition for every backend: the CPU forward calls
// route_topk per token; the CUDA route kernel (cuda/moe.cu) runs the same arithmetic with one warp a
// token and must give the same bits (test/flash-emu/moe_emu.cc and test/gpu/moe-kernels.cu check it).
//
// Softmax over the E experts in f32, the top-k largest first (the lower id on ties, torch.topk's
// order), renormalised to sum to 1 when `norm` (mixtral always; qwen's norm_topk_prob), as
// transformers computes it. Two choices make the result the same on a CPU and a GPU:
//  - e^x is route_exp below (explicit fmaf, no library exp: glibc's and CUDA's expf differ in the
//    last bit);
//  - the sum over experts is taken in a warp's order: "lane" l adds experts l, l + 32, l + 64, ...
//    in turn, then the 32 partial sums are added pairwise at distances 16, 8, 4, 2, 1 (xor pairs).
// Everything else (max, subtraction, division, comparisons) is exact or correctly rounded in IEEE
// f32 on both. Probabilities below e^-86 of the largest are taken as 0 (torch keeps ~1e-38 there;
// no top-k pick can depend on it unless E - k experts sit that far below the rest).
#pragma once

#include <math.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define NS_MOE_HD __host__ __device__ __forceinline__
#else
#define NS_MOE_HD inline
#endif

namespace ns::moe {

constexpr int kLanes = 32;
constexpr int kMaxExperts = 256;               // experts a warp routes: 8 a lane
constexpr int kPerLane = kMaxExperts / kLanes;
constexpr int kMaxTopK = 16;

// 2^n for -126 <= n <= 127.
NS_MOE_HD float pow2i(int n) {
  const uint32_t bits = static_cast<uint32_t>(n + 127) << 23;
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
#endif
}

// e^x for x <= 0 (x = logit - max): x = n ln2 + r with |r| <= ln2 / 2 (Cody-Waite, ln2 in two
// parts), e^r by its degree-7 Taylor polynomial in Horner form (truncation < 6e-9, below half an
// ulp), times 2^n. Every product that meets a sum is an explicit fmaf, so no compiler may contract
// differently on the two sides.
NS_MOE_HD float mul_rn(float a, float b) {  // a product no compiler fuses into a following add
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

NS_MOE_HD float route_exp(float x) {
  if (!(x > -86.f)) return 0.f;  // NaN too
  const float n = rintf(mul_rn(x, 1.44269504088896341f));
  float r = fmaf(n, -0.693145751953125f, x);
  r = fmaf(n, -1.428606765330187045e-6f, r);
  float p = 1.f / 5040.f;
  p = fmaf(p, r, 1.f / 720.f);
  p = fmaf(p, r, 1.f / 120.f);
  p = fmaf(p, r, 1.f / 24.f);
  p = fmaf(p, r, 1.f / 6.f);
  p = fmaf(p, r, 0.5f);
  p = fmaf(p, r, 1.f);
  p = fmaf(p, r, 1.f);
  return mul_rn(p, pow2i(static_cast<int>(n)));
}

// Whether candidate (v, id) ranks before (bv, bid) in torch.topk's order: the larger value, the
// lower id on ties; any real candidate before none (bid < 0).
NS_MOE_HD bool ranks_before(float v, int id, float bv, int bid) {
  if (id < 0) return false;
  if (bid < 0) return true;
  return v > bv || (v == bv && id < bid);
}

// One token: logits[E] (overwritten with the probabilities) -> w[k], id[k]. E <= kMaxExperts,
// 1 <= k <= min(E, kMaxTopK).
inline void route_topk(float* logits, int E, int k, bool norm, float* w, int* id) {
  float mx = -INFINITY;
  for (int e = 0; e < E; ++e) mx = fmaxf(mx, logits[e]);
  float part[kLanes] = {};
  for (int e = 0; e < E; ++e) {
    logits[e] = route_exp(logits[e] - mx);
    part[e % kLanes] += logits[e];
  }
  for (int off = kLanes / 2; off > 0; off >>= 1) {
    float next[kLanes];
    for (int l = 0; l < kLanes; ++l) next[l] = part[l] + part[l ^ off];
    std::memcpy(part, next, sizeof(part));
  }
  const float sum = part[0];
  for (int e = 0; e < E; ++e) logits[e] /= sum;
  float picked = 0.f;
  for (int j = 0; j < k; ++j) {
    int best = -1;
    float bv = 0.f;
    for (int e = 0; e < E; ++e) {
      bool taken = false;
      for (int i = 0; i < j; ++i) taken |= id[i] == e;
      if (!taken && ranks_before(logits[e], e, bv, best)) { best = e; bv = logits[e]; }
    }
    id[j] = best;
    picked += (w[j] = bv);
  }
  if (norm)
    for (int j = 0; j < k; ++j) w[j] /= picked;
}

}  // namespace ns::moe
