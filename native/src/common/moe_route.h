// The router of a mixture-of-experts layer, shared by the backends (the CPU forward, and the CUDA
// backend on the host after copying the router logits back): softmax over the experts in f32,
// the top-k largest first (the lower id on ties, torch.topk's order), renormalised to sum to 1
// when `norm` (mixtral always; qwen's norm_topk_prob).
#pragma once

#include <algorithm>
#include <cmath>

namespace ns {

// logits: one token's E router logits (overwritten with the probabilities); w, id: k entries.
inline void route_topk(float* logits, int E, int k, bool norm, float* w, int* id) {
  const float mx = *std::max_element(logits, logits + E);
  float sum = 0;
  for (int e = 0; e < E; ++e) sum += (logits[e] = std::exp(logits[e] - mx));
  for (int e = 0; e < E; ++e) logits[e] /= sum;
  float picked = 0;
  for (int j = 0; j < k; ++j) {
    int best = -1;
    for (int e = 0; e < E; ++e) {
      bool taken = false;
      for (int i = 0; i < j; ++i) taken |= id[i] == e;
      if (!taken && (best < 0 || logits[e] > logits[best])) best = e;
    }
    id[j] = best;
    picked += (w[j] = logits[best]);
  }
  if (norm)
    for (int j = 0; j < k; ++j) w[j] /= picked;
}

}  // namespace ns
