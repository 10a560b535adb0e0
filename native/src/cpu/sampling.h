// Host sampling, the algorithm of docs/ENGINE.md "Sampling" (the CUDA backend's sampling.cu
// implements the same steps: ties at a cut are kept together, the draw picks the lowest id among
// equal values).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "common/penalties.h"
#include "engine.h"

namespace ns::cpu {

// Greedy: lowest id among the maximal logits (NaN never wins).
int argmax(const float* logits, int vocab);

// Logit bias, then the penalties over `counts` (nullptr when p has none), in place.
void apply_bias_and_penalties(float* logits, int vocab, const SamplingParams& p, const std::vector<PenaltyToken>* counts);

// Samples one id from `logits` [vocab] (already biased and penalized); `position` is the absolute
// position the sampled token will take (the draw is ns::sampling_uniform(seed, position)).
// `scratch` is reused between calls. `kept`, when given, receives the final distribution: every
// candidate left after top-k / top-p / min-p with its probability (tests compare it with
// transformers' warpers).
int sample(const float* logits, int vocab, const SamplingParams& p, int64_t position,
           std::vector<std::pair<float, int>>& scratch, std::vector<std::pair<int, double>>* kept = nullptr);

// Log-softmax of `logits`: the logprob of `sampled` and the k most likely (id, logprob), best
// first (lowest id among equals); ids/values past k are set to -1/NaN up to kMaxLogprobs.
void logprobs(const float* logits, int vocab, int sampled, int k, float* sampled_lp, int32_t* top_ids, float* top_lps);

}  // namespace ns::cpu
