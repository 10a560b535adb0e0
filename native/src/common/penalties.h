// Token counts for the repetition / presence / frequency penalties, kept by every rank that samples.
// They are built from the tokens the steps feed (the prompt, then each sampled token as it becomes
// the next input), which every sampling rank of a replica sees in the same order, so no rank needs
// a token list sent with each step. A sequence is known by its first KV block: unique among the
// sequences alive on a replica, stable for a sequence's life, and the same on every rank.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine.h"

namespace ns {

// The checks that keep a step in bounds (logit-bias ids inside the vocabulary, at most kMaxLogprobs);
// the value rules (ranges, defaults) belong to the API that accepted the request. Throws naming `who`.
void check_sampling(const SamplingParams& p, int vocab, const std::string& who);

// Feeds every penalized sequence's new tokens (sampling ranks call it once per step, before sampling).
class PenaltyHistories;
void feed_penalties(PenaltyHistories& h, const StepInput& in);

struct PenaltyToken {
  int32_t token;
  int32_t output_count;  // occurrences at positions >= prompt_len
  int32_t in_prompt;     // 1 when it occurs in the prompt
};

class PenaltyHistories {
 public:
  // The tokens a step feeds at positions [pos, pos + n) of the sequence `key`; pos 0 starts it over
  // (a new sequence on reused blocks, or a replay). Throws when pos is not where the sequence left
  // off (a step this rank never saw): its counts would be wrong.
  void feed(int key, int pos, const int32_t* tokens, int n, int prompt_len, const std::string& who);
  // The distinct tokens of `key` with their counts (feed it first).
  const std::vector<PenaltyToken>& tokens(int key) const;
  // Once per step: forgets sequences not fed for kForgetSteps steps. Finished sequences are never
  // announced to the engine; one that came back after that long fails in feed() instead of being
  // penalized with wrong counts.
  void end_step();

  static constexpr uint64_t kForgetSteps = 8192;

 private:
  struct Seq {
    int length = 0;
    uint64_t last_step = 0;
    std::vector<PenaltyToken> list;
    std::unordered_map<int32_t, int> index;  // token -> position in list
  };
  std::unordered_map<int, Seq> seqs_;
  uint64_t step_ = 0;
};

}  // namespace ns
