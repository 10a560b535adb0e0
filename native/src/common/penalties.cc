#include "common/penalties.h"

#include <cmath>
#include <stdexcept>

namespace ns {

void check_sampling(const SamplingParams& p, int vocab, const std::string& who) {
  if (p.logprobs < -1 || p.logprobs > kMaxLogprobs)
    throw std::invalid_argument(who + ": logprobs must be in [-1, " + std::to_string(kMaxLogprobs) + "]");
  if (p.n_logit_bias < 0 || (p.n_logit_bias > 0 && !p.logit_bias)) throw std::invalid_argument(who + ": logit bias list is missing");
  for (int i = 0; i < p.n_logit_bias; ++i) {
    const LogitBias& b = p.logit_bias[i];
    if (b.token < 0 || b.token >= vocab)
      throw std::invalid_argument(who + ": logit bias token " + std::to_string(b.token) + " is outside [0, " + std::to_string(vocab) + ")");
    if (!std::isfinite(b.bias)) throw std::invalid_argument(who + ": logit bias of token " + std::to_string(b.token) + " is not finite");
  }
  if (p.prompt_len < 0) throw std::invalid_argument(who + ": promptLen must be >= 0");
}

void feed_penalties(PenaltyHistories& h, const StepInput& in) {
  for (size_t i = 0; i < in.seqs.size(); ++i) {
    const SeqInput& q = in.seqs[i];
    if (q.sampling.penalized() && q.n_blocks > 0)
      h.feed(q.block_table[0], q.pos, q.tokens, q.n_tokens, q.sampling.prompt_len, "seqs[" + std::to_string(i) + "]");
  }
  h.end_step();
}

void PenaltyHistories::feed(int key, int pos, const int32_t* tokens, int n, int prompt_len, const std::string& who) {
  if (n > 0 && !tokens) throw std::runtime_error(who + ": penalties need the step's token ids on the sampling rank");
  Seq& s = seqs_[key];
  if (pos == 0) {
    s.length = 0;
    s.list.clear();
    s.index.clear();
  } else if (s.length != pos) {
    throw std::runtime_error(who + ": penalty counts end at position " + std::to_string(s.length) + " but the step feeds position " +
                             std::to_string(pos));
  }
  for (int i = 0; i < n; ++i) {
    const int32_t t = tokens[i];
    auto [it, fresh] = s.index.try_emplace(t, static_cast<int>(s.list.size()));
    if (fresh) s.list.push_back({t, 0, 0});
    PenaltyToken& e = s.list[it->second];
    if (pos + i < prompt_len) e.in_prompt = 1;
    else ++e.output_count;
  }
  s.length = pos + n;
  s.last_step = step_;
}

const std::vector<PenaltyToken>& PenaltyHistories::tokens(int key) const {
  auto it = seqs_.find(key);
  if (it == seqs_.end()) throw std::logic_error("penalty counts of a sequence that was never fed");
  return it->second.list;
}

void PenaltyHistories::end_step() {
  ++step_;
  if (step_ % 256 != 0) return;
  for (auto it = seqs_.begin(); it != seqs_.end();)
    it = step_ - it->second.last_step > kForgetSteps ? seqs_.erase(it) : std::next(it);
}

}  // namespace ns
