// The sampler alone on given logits, for tests: the CPU test compares it with transformers' logits
// processors on fixture logits, and the GPU check compares the CUDA kernel with the CPU code.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "common/penalties.h"
#include "engine.h"

namespace ns {

struct SampleCheckRow {
  std::vector<float> logits;  // [vocab]
  SamplingParams params;      // params.logit_bias points into `bias`
  std::vector<LogitBias> bias;
  std::vector<int32_t> prompt, output;  // the sequence so far (for the penalties)
  int64_t position = 0;                 // where the sampled token goes (the draw's position)
};

struct SampleCheckResult {
  std::vector<float> penalized;  // the row after bias and penalties
  int32_t sampled = 0;
  float sampled_logprob = 0.f;
  std::vector<int32_t> top_ids;  // kMaxLogprobs each
  std::vector<float> top_logprobs;
  std::vector<std::pair<int, double>> kept;  // CPU only: the final distribution
};

// The penalty counts of a row, built as a step would build them (prompt then output, one feed).
std::vector<PenaltyToken> sample_check_counts(const SampleCheckRow& row);
std::vector<SampleCheckResult> cpu_sample_check(const std::vector<SampleCheckRow>& rows, int vocab);
// Defined in cuda/ when built with CUDA; otherwise throws.
std::vector<SampleCheckResult> cuda_sample_check(const std::vector<SampleCheckRow>& rows, int vocab, int device);

}  // namespace ns
