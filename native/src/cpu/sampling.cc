#include "cpu/sampling.h"

#include <algorithm>
#include <cmath>

namespace ns::cpu {

int argmax(const float* z, int vocab) {
  int best = -1;
  for (int i = 0; i < vocab; ++i)
    if (!std::isnan(z[i]) && (best < 0 || z[i] > z[best])) best = i;
  return best < 0 ? 0 : best;
}

int sample(const float* z, int vocab, const SamplingParams& p, int64_t position,
           std::vector<std::pair<float, int>>& c) {
  if (!(p.temperature > 0.f)) return argmax(z, vocab);
  const float inv_t = 1.f / p.temperature;
  c.clear();
  for (int i = 0; i < vocab; ++i)
    if (!std::isnan(z[i])) c.emplace_back(z[i] * inv_t, i);
  if (c.empty()) return 0;
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
  double total = 0;
  for (size_t i = 0; i < keep; ++i) total += std::exp(static_cast<double>(c[i].first - m));

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
      for (size_t a = i; a < j; ++a) cum += std::exp(static_cast<double>(c[a].first - m));
      i = j;
      if (cum >= target) break;
    }
    keep = i;
  }
  double kept = 0;
  for (size_t i = 0; i < keep; ++i) kept += std::exp(static_cast<double>(c[i].first - m));
  const double r = static_cast<double>(sampling_uniform(p.seed, position)) * kept;
  double cum = 0;
  for (size_t i = 0; i < keep;) {
    const size_t j = group_end(i);
    for (size_t a = i; a < j; ++a) cum += std::exp(static_cast<double>(c[a].first - m));
    if (cum > r) return c[i].second;  // lowest id of the group (sorted by id within it)
    i = j;
  }
  return argmax(z, vocab);  // rounding left no group above the draw: the most likely token
}

}  // namespace ns::cpu
