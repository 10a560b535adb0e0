// RoPE frequencies with the scaling types of transformers' ROPE_INIT_FUNCTIONS, computed as
// transformers does (f32 inverse frequencies, angle = f32(position) * inv_freq). Shared by both
// backends: the CUDA one uploads the same tables.
#pragma once

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "engine.h"

namespace ns {

// Leading dimensions of a head that rotate (partial rotary: Phi-4-mini rotates 3/4 of each head).
inline int rope_dim(const RopeConfig& rope, int head_dim) { return rope.rotary_dim > 0 ? rope.rotary_dim : head_dim; }

// Whether the frequencies depend on the sequence's length (transformers recomputes them per forward
// from max(position) + 1: dynamic NTK grows the base past the context, longrope switches factors).
inline bool rope_depends_on_length(const RopeConfig& rope) {
  return rope.type == RopeType::Dynamic || rope.type == RopeType::LongRope;
}

// inv_freq for a sequence whose longest position this step is seq_len - 1; rope_dim / 2 values.
inline std::vector<float> rope_inv_freq(const RopeConfig& rope, int head_dim, int seq_len = 0) {
  const int dim = rope_dim(rope, head_dim), half = dim / 2;
  std::vector<float> inv(half);
  float base = rope.theta;
  if (rope.type == RopeType::Dynamic) {
    // transformers: seq = max(seq_len, max_position_embeddings); base *= (f * seq / max - (f - 1)) ^ (dim / (dim - 2)), in f32.
    const float seq = static_cast<float>(std::max(seq_len, rope.original_max_pos));
    const float grow = rope.factor * seq / static_cast<float>(rope.original_max_pos) - (rope.factor - 1.f);
    base = base * std::pow(grow, static_cast<float>(dim) / static_cast<float>(dim - 2));
  }
  for (int i = 0; i < half; ++i) {
    // 1 / base ** (arange(0, dim, 2).float() / dim), in f32.
    inv[i] = 1.0f / std::pow(base, static_cast<float>(2 * i) / static_cast<float>(dim));
  }
  switch (rope.type) {
    case RopeType::Default:
    case RopeType::Dynamic: break;
    case RopeType::Linear:
      for (float& f : inv) f /= rope.factor;
      break;
    case RopeType::Llama3: {
      const double low_wavelen = rope.original_max_pos / rope.low_freq_factor;
      const double high_wavelen = rope.original_max_pos / rope.high_freq_factor;
      for (float& f : inv) {
        const double wavelen = 2 * M_PI / f;
        if (wavelen < high_wavelen) continue;  // high frequencies: unchanged
        if (wavelen > low_wavelen) {           // low frequencies: scaled by factor
          f = f / rope.factor;
          continue;
        }
        const double smooth = (rope.original_max_pos / wavelen - rope.low_freq_factor) /
                              (rope.high_freq_factor - rope.low_freq_factor);
        f = static_cast<float>((1 - smooth) * f / rope.factor + smooth * f);
      }
      break;
    }
    case RopeType::Yarn: {
      // Interpolate (divide by factor) the low frequencies, extrapolate (keep) the high ones, with a
      // linear ramp between the dimensions that turn beta_fast and beta_slow times over the original context.
      auto correction_dim = [&](double rotations) {
        return dim * std::log(rope.original_max_pos / (rotations * 2 * M_PI)) / (2 * std::log(static_cast<double>(rope.theta)));
      };
      double low = correction_dim(rope.beta_fast), high = correction_dim(rope.beta_slow);
      if (rope.truncate) {
        low = std::floor(low);
        high = std::ceil(high);
      }
      low = std::max(low, 0.0);
      high = std::min(high, static_cast<double>(dim - 1));
      if (low == high) high += 0.001;
      for (int i = 0; i < half; ++i) {
        const float pos_freq = std::pow(rope.theta, static_cast<float>(2 * i) / static_cast<float>(dim));
        const float extrapolation = 1.0f / pos_freq, interpolation = 1.0f / (rope.factor * pos_freq);
        const float ramp = std::clamp(static_cast<float>((i - low) / (high - low)), 0.f, 1.f);
        const float keep = 1.f - ramp;
        inv[i] = interpolation * (1.f - keep) + extrapolation * keep;
      }
      break;
    }
    case RopeType::LongRope: {
      const std::vector<float>& ext = seq_len > rope.original_max_pos ? rope.long_factor : rope.short_factor;
      for (int i = 0; i < half; ++i)
        inv[i] = 1.0f / (ext[i] * std::pow(rope.theta, static_cast<float>(2 * i) / static_cast<float>(dim)));
      break;
    }
  }
  return inv;
}

namespace cpu {

// HF rotate_half convention over the rotary part: x[i] pairs with x[i + half] (not interleaved
// pairs); dimensions past 2 * half pass through.
inline void rope_apply(float* x, const float* cos, const float* sin, int half) {
  for (int i = 0; i < half; ++i) {
    const float a = x[i], b = x[i + half];
    x[i] = a * cos[i] - b * sin[i];
    x[i + half] = b * cos[i] + a * sin[i];
  }
}

}  // namespace cpu
}  // namespace ns
