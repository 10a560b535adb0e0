#include "cpu/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace ns::cpu {

int argmax(const float* z, int vocab) {
  int best = -1;
  for (int i = 0; i < vocab; ++i)
    if (!std::isnan(z[i]) && (best < 0 || z[i] > z[best])) best = i;
  return best < 0 ? 0 : best;
}

void apply_bias_and_penalties(float* z, int vocab, const SamplingParams& p, const std::vector<PenaltyToken>* counts) {
  for (int i = 0; i < p.n_logit_bias; ++i) z[p.logit_bias[i].token] += p.logit_bias[i].bias;
  if (!counts) return;
  const float rep = p.repetition_penalty, freq = p.frequency_penalty, pres = p.presence_penalty;
  for (const PenaltyToken& e : *counts) {
    if (e.token < 0 || e.token >= vocab) continue;  // fed ids are checked against the vocabulary on the first stage
    float v = z[e.token];
    if (rep != 1.f) v = v < 0.f ? v * rep : v / rep;
    v = v - freq * static_cast<float>(e.output_count);
    v = v - pres * (e.output_count > 0 ? 1.f : 0.f);
    z[e.token] = v;
  }
}

int sample(const float* z, int vocab, const SamplingParams& p, int64_t position, std::vector<std::pair<float, int>>& c,
           std::vector<std::pair<int, double>>* kept_out) {
  if (!(p.temperature > 0.f)) {
    const int id = argmax(z, vocab);
    if (kept_out) kept_out->assign(1, {id, 1.0});
    return id;
  }
  const float inv_t = 1.f / p.temperature;
  c.clear();
  for (int i = 0; i < vocab; ++i)
    if (!std::isnan(z[i]) && z[i] != -std::numeric_limits<float>::infinity()) c.emplace_back(z[i] * inv_t, i);
  if (c.empty()) return argmax(z, vocab);
  // Descending value, ascending id among equal values.
  auto order = [](const std::pair<float, int>& a, const std::pair<float, int>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  size_t keep = c.size();
  if (p.top_k > 0 && static_cast<size_t>(p.top_k) < c.size()) {
    std::nth_element(c.begin(), c.begin() + (p.top_k - 1), c.end(), order);
    const float kth = c[p.top_k - 1].first;
    // Keep every value >= the k-th largest (ties at the cut stay together).
    keep = std::partition(c.begin(), c.end(), [&](const auto& e) { return e.first >= kth; }) - c.begin();
  }
  std::sort(c.begin(), c.begin() + keep, order);
  const float m = c[0].first;
  auto weight = [&](size_t i) { return std::exp(static_cast<double>(c[i].first - m)); };
  double total = 0;
  for (size_t i = 0; i < keep; ++i) total += weight(i);

  // Walk groups of equal value from the top; `end` is one past the group.
  auto group_end = [&](size_t i) {
    size_t j = i + 1;
    while (j < keep && c[j].first == c[i].first) ++j;
    return j;
  };
  if (p.top_p < 1.f) {
    // Smallest prefix (whole groups) with mass >= top_p of the total.
    const double target = static_cast<double>(p.top_p) * total;
    double cum = 0;
    size_t i = 0;
    while (i < keep) {
      const size_t j = group_end(i);
      for (size_t a = i; a < j; ++a) cum += weight(a);
      i = j;
      if (cum >= target) break;
    }
    keep = i;
  }
  if (p.min_p > 0.f) {
    // p_i >= min_p * p_max  <=>  exp(v_i - v_max) >= min_p: a value threshold, so a prefix.
    size_t i = 1;
    while (i < keep && weight(i) >= static_cast<double>(p.min_p)) ++i;
    keep = i;
  }
  double kept = 0;
  for (size_t i = 0; i < keep; ++i) kept += weight(i);
  if (kept_out) {
    kept_out->clear();
    for (size_t i = 0; i < keep; ++i) kept_out->emplace_back(c[i].second, weight(i) / kept);
  }
  const double r = static_cast<double>(sampling_uniform(p.seed, position)) * kept;
  double cum = 0;
  for (size_t i = 0; i < keep;) {
    const size_t j = group_end(i);
    for (size_t a = i; a < j; ++a) cum += weight(a);
    if (cum > r) return c[i].second;  // lowest id of the group (sorted by id within it)
    i = j;
  }
  return c[0].second;  // rounding left no group above the draw: the most likely token
}

void logprobs(const float* z, int vocab, int sampled, int k, float* sampled_lp, int32_t* top_ids, float* top_lps) {
  float m = -std::numeric_limits<float>::infinity();
  for (int i = 0; i < vocab; ++i)
    if (z[i] > m) m = z[i];
  double s = 0;
  for (int i = 0; i < vocab; ++i)
    if (!std::isnan(z[i])) s += std::exp(static_cast<double>(z[i]) - m);
  const float lse = m + static_cast<float>(std::log(s));
  *sampled_lp = z[sampled] - lse;
  // The k best by (value desc, id asc): a bounded selection, k <= kMaxLogprobs.
  int n = 0;
  for (int i = 0; i < vocab && k > 0; ++i) {
    if (std::isnan(z[i])) continue;
    if (n == k && !(z[i] > z[top_ids[n - 1]])) continue;  // ids ascend: an equal value later loses
    int at = n < k ? n++ : k - 1;
    while (at > 0 && z[i] > z[top_ids[at - 1]]) {
      top_ids[at] = top_ids[at - 1];
      --at;
    }
    top_ids[at] = i;
  }
  for (int j = 0; j < kMaxLogprobs; ++j) {
    if (j < n) {
      top_lps[j] = z[top_ids[j]] - lse;
    } else {
      top_ids[j] = -1;
      top_lps[j] = std::numeric_limits<float>::quiet_NaN();
    }
  }
}

}  // namespace ns::cpu
