#include "common/sample_check.h"

#include <algorithm>

#include "cpu/sampling.h"

namespace ns {

std::vector<PenaltyToken> sample_check_counts(const SampleCheckRow& row) {
  PenaltyHistories h;
  std::vector<int32_t> all(row.prompt);
  all.insert(all.end(), row.output.begin(), row.output.end());
  h.feed(0, 0, all.data(), static_cast<int>(all.size()), static_cast<int>(row.prompt.size()), "sampleCheck");
  return h.tokens(0);
}

std::vector<SampleCheckResult> cpu_sample_check(const std::vector<SampleCheckRow>& rows, int vocab) {
  std::vector<SampleCheckResult> out(rows.size());
  std::vector<std::pair<float, int>> scratch;
  for (size_t i = 0; i < rows.size(); ++i) {
    const SampleCheckRow& row = rows[i];
    SampleCheckResult& r = out[i];
    check_sampling(row.params, vocab, "sampleCheck rows[" + std::to_string(i) + "]");
    r.penalized = row.logits;
    const std::vector<PenaltyToken> counts = sample_check_counts(row);
    cpu::apply_bias_and_penalties(r.penalized.data(), vocab, row.params, row.params.penalized() ? &counts : nullptr);
    r.sampled = cpu::sample(r.penalized.data(), vocab, row.params, row.position, scratch, &r.kept);
    r.top_ids.assign(kMaxLogprobs, -1);
    r.top_logprobs.assign(kMaxLogprobs, 0.f);
    cpu::logprobs(r.penalized.data(), vocab, r.sampled, std::max(0, row.params.logprobs), &r.sampled_logprob, r.top_ids.data(),
                  r.top_logprobs.data());
  }
  return out;
}

}  // namespace ns
