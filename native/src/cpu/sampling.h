// Host sampling, the algorithm of docs/ENGINE.md "Sampling" (the CUDA backend's sampling.cu
// implements the same cuts: ties at a cut are kept together, the draw picks the lowest id among
// equal values).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "engine.h"

namespace ns::cpu {

// Greedy: lowest id among the maximal logits (NaN never wins).
int argmax(const float* logits, int vocab);

// Samples one id from `logits` [vocab]; `position` is the absolute position the sampled token
// will take (the draw is ns::sampling_uniform(seed, position)). `scratch` is reused between calls.
int sample(const float* logits, int vocab, const SamplingParams& p, int64_t position,
           std::vector<std::pair<float, int>>& scratch);

}  // namespace ns::cpu
