// RoPE frequencies with the scaling types of HF's ROPE_INIT_FUNCTIONS (default, linear, llama3),
// computed like transformers does (f32 inverse frequencies, angle = f32(position) * inv_freq).
#pragma once

#include <cmath>
#include <stdexcept>
#include <vector>

#include "engine.h"

namespace ns::cpu {

inline std::vector<float> rope_inv_freq(const RopeConfig& rope, int head_dim) {
  const int half = head_dim / 2;
  std::vector<float> inv(half);
  for (int i = 0; i < half; ++i) {
    // HF: 1 / base ** (arange(0, dim, 2).float() / dim), in f32.
    float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    inv[i] = 1.0f / std::pow(rope.theta, exponent);
  }
  switch (rope.type) {
    case RopeType::Default: break;
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
    default: throw std::runtime_error("unknown rope type");
  }
  return inv;
}

// HF rotate_half convention: x[i] pairs with x[i + head_dim/2] (not interleaved pairs).
inline void rope_apply(float* x, const float* cos, const float* sin, int half) {
  for (int i = 0; i < half; ++i) {
    const float a = x[i], b = x[i + half];
    x[i] = a * cos[i] - b * sin[i];
    x[i + half] = b * cos[i] + a * sin[i];
  }
}

}  // namespace ns::cpu
