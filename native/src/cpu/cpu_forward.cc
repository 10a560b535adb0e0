// The CPU forward pass, llama2.c style, read top to bottom: step() → embed → per layer
// (attention_block, mlp_block) → head. All sequences of a step (prefills and decodes at any
// positions) are packed into one [T, hidden] activation matrix, so every weight matrix is read
// once per step; only attention looks at which sequence a token belongs to.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "common/moe_route.h"
#include "cpu/cpu_backend.h"
#include "cpu/kernels.h"
#include "cpu/rope.h"
#include "cpu/sampling.h"

namespace ns::cpu {

namespace {

template <typename T>
void grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

std::string seq_name(size_t i) { return "seqs[" + std::to_string(i) + "]"; }

// Below this many multiply-adds a parallel region costs more than it saves (measured on py-tiny:
// one thread decodes a token in 0.7 ms, two threads with a region per product in 1.4 ms).
constexpr int64_t kMinParallelMacs = 1 << 20;

// Steps below this many multiply-adds (~1-2 ms) run on the calling thread.
constexpr int64_t kInlineStepMacs = int64_t(32) << 20;

}  // namespace

void CpuBackend::step(const StepInput& in, StepOutput& out) {
  if (!finalized_) throw std::runtime_error("step: call finalize() first");
  validate(in);
  // A long step runs on the pool's driver thread (see ThreadPool): the calling libuv thread sleeps
  // instead of competing with the event loop for a core. A short one (a small model's decode)
  // runs here: two thread hand-offs would cost more than it takes.
  int64_t tokens = 0;
  for (const auto& s : in.seqs) tokens += s.n_tokens;
  if (tokens * macs_per_token_ < kInlineStepMacs) forward(in, out);
  else pool_.execute([&] { forward(in, out); });
}

void CpuBackend::forward(const StepInput& in, StepOutput& out) {
  int T = 0;
  for (const auto& s : in.seqs) T += s.n_tokens;
  out.sampled.clear();
  out.logits.clear();
  out.hidden_out.clear();
  out.sampled_logprob.clear();
  out.top_ids.clear();
  out.top_logprobs.clear();
  if (T == 0) return;
  if (cfg_.has_head) feed_penalties(penalties_, in);
  prepare(in, T);
  embed(in, T);
  for (int l = 0; l < n_layers_; ++l) {
    attention_block(l, in, T);
    mlp_block(l, T);
  }
  if (cfg_.has_head) {
    head(in, T, out);
  } else {
    const size_t bytes = size_t(T) * cfg_.hidden * sizeof(float);
    out.hidden_out.resize(bytes);
    std::memcpy(out.hidden_out.data(), s_.x.data(), bytes);
  }
}

void CpuBackend::validate(const StepInput& in) const {
  if (cfg_.tp_size > 1 && !comm_)
    throw std::runtime_error("step: tpSize is " + std::to_string(cfg_.tp_size) +
                             " but no TP communicator was set (engine.setTpComm)");
  if (!cfg_.has_embedding && !in.hidden_in)
    throw std::invalid_argument("step: hiddenIn is required on a pipeline stage without the embedding");
  const int B = cfg_.kv_block_size;
  for (size_t i = 0; i < in.seqs.size(); ++i) {
    const SeqInput& s = in.seqs[i];
    if (s.n_tokens < 1) throw std::invalid_argument(seq_name(i) + ": tokens is empty");
    if (s.pos < 0) throw std::invalid_argument(seq_name(i) + ": pos must be >= 0");
    // In 64 bits: pos near INT_MAX plus the tokens must not wrap around into a small number.
    if (int64_t(s.pos) + s.n_tokens > cfg_.max_position)
      throw std::invalid_argument(seq_name(i) + ": positions up to " + std::to_string(int64_t(s.pos) + s.n_tokens) +
                                  " exceed maxPosition " + std::to_string(cfg_.max_position));
    const int need = (s.pos + s.n_tokens + B - 1) / B;
    if (s.n_blocks < need)
      throw std::invalid_argument(seq_name(i) + ": blockTable has " + std::to_string(s.n_blocks) + " blocks, " +
                                  std::to_string(need) + " needed for " + std::to_string(s.pos + s.n_tokens) + " positions");
    for (int b = 0; b < need; ++b)
      if (s.block_table[b] < 0 || s.block_table[b] >= kv_blocks_)
        throw std::invalid_argument(seq_name(i) + ": blockTable[" + std::to_string(b) + "] = " +
                                    std::to_string(s.block_table[b]) + " is outside [0, " + std::to_string(kv_blocks_) + ")");
    if (cfg_.kv_window_group) {
      if (!s.window_block_table || s.n_window_blocks < need)
        throw std::invalid_argument(seq_name(i) + ": windowBlockTable has " + std::to_string(s.window_block_table ? s.n_window_blocks : 0) +
                                    " blocks, " + std::to_string(need) + " needed for " + std::to_string(s.pos + s.n_tokens) +
                                    " positions (the model's windowed layers keep their own KV blocks)");
      for (int b = 0; b < need; ++b)
        if (s.window_block_table[b] < 0 || s.window_block_table[b] >= kv_window_blocks_)
          throw std::invalid_argument(seq_name(i) + ": windowBlockTable[" + std::to_string(b) + "] = " +
                                      std::to_string(s.window_block_table[b]) + " is outside [0, " +
                                      std::to_string(kv_window_blocks_) + ")");
    }
    if (cfg_.has_embedding)
      for (int t = 0; t < s.n_tokens; ++t)
        if (s.tokens[t] < 0 || s.tokens[t] >= cfg_.vocab_size)
          throw std::invalid_argument(seq_name(i) + ": token id " + std::to_string(s.tokens[t]) + " is outside [0, " +
                                      std::to_string(cfg_.vocab_size) + ")");
    if (cfg_.has_head && s.sampling.temperature < 0)
      throw std::invalid_argument(seq_name(i) + ": temperature must be >= 0");
    if (cfg_.has_head) check_sampling(s.sampling, cfg_.vocab_size, seq_name(i));
  }
}

// Sizes the activation buffers for T tokens and fills per-token sequence/position and RoPE tables.
void CpuBackend::prepare(const StepInput& in, int T) {
  const size_t H = cfg_.hidden, QD = size_t(cfg_.n_heads) * cfg_.head_dim, KD = size_t(cfg_.n_kv_heads) * cfg_.head_dim;
  const size_t inter = std::max({cfg_.intermediate, cfg_.moe_intermediate, cfg_.shared_intermediate});
  grow(s_.x, T * H);
  grow(s_.xn, T * H);
  grow(s_.proj, T * H);
  grow(s_.q, T * QD);
  grow(s_.attn, T * QD);
  grow(s_.k, T * KD);
  grow(s_.v, T * KD);
  grow(s_.gate, T * inter);
  grow(s_.up, T * inter);
  grow(s_.tok_seq, T);
  grow(s_.tok_pos, T);
  int t = 0;
  for (size_t i = 0; i < in.seqs.size(); ++i) {
    for (int j = 0; j < in.seqs[i].n_tokens; ++j, ++t) {
      s_.tok_seq[t] = static_cast<int>(i);
      s_.tok_pos[t] = in.seqs[i].pos + j;
    }
  }
  rope_tables(cfg_.rope, in, T, s_.rope_cos, s_.rope_sin);
  if (cfg_.has_rope_local) rope_tables(cfg_.rope_local, in, T, s_.local_cos, s_.local_sin);
}

// cos/sin of every token's angles (times the yarn / longrope attention factor). Dynamic and
// longrope frequencies follow each sequence's length at this step, as transformers recomputes them
// from max(position) + 1 on every forward.
void CpuBackend::rope_tables(const RopeConfig& rope, const StepInput& in, int T, std::vector<float>& cos,
                             std::vector<float>& sin) {
  const size_t half = rope_dim(rope, cfg_.head_dim) / 2;
  grow(cos, T * half);
  grow(sin, T * half);
  const bool per_seq = rope_depends_on_length(rope);
  const std::vector<float>& fixed = &rope == &cfg_.rope ? inv_freq_ : local_inv_freq_;
  std::vector<float> inv;
  int t = 0;
  for (const auto& s : in.seqs) {
    if (per_seq) inv = rope_inv_freq(rope, cfg_.head_dim, s.pos + s.n_tokens);
    const std::vector<float>& f = per_seq ? inv : fixed;
    for (int j = 0; j < s.n_tokens; ++j, ++t) {
      const int p = s.pos + j;
      for (size_t i = 0; i < half; ++i) {
        const float angle = static_cast<float>(p) * f[i];  // f32 product, as HF computes it
        cos[t * half + i] = static_cast<float>(std::cos(static_cast<double>(angle))) * rope.attention_factor;
        sin[t * half + i] = static_cast<float>(std::sin(static_cast<double>(angle))) * rope.attention_factor;
      }
    }
  }
}

void CpuBackend::all_reduce(float* buf, size_t count) {
  if (cfg_.tp_size > 1) comm_->all_reduce_sum(buf, count, DType::F32, nullptr);
}

// Embedding rows of this rank's vocab slice; other ids contribute zeros, summed over TP ranks.
void CpuBackend::embed(const StepInput& in, int T) {
  const int H = cfg_.hidden;
  float* x = s_.x.data();
  if (!cfg_.has_embedding) {
    std::memcpy(x, in.hidden_in, size_t(T) * H * sizeof(float));
    return;
  }
  const size_t row_bytes = size_t(H) * dtype_size(embed_.dtype);
  int t = 0;
  for (const auto& s : in.seqs) {
    for (int j = 0; j < s.n_tokens; ++j, ++t) {
      const int id = s.tokens[j];
      if (id >= cfg_.vocab_start && id < cfg_.vocab_end)
        to_f32(embed_.data.data() + size_t(id - cfg_.vocab_start) * row_bytes, embed_.dtype, x + size_t(t) * H, H);
      else
        std::fill(x + size_t(t) * H, x + size_t(t + 1) * H, 0.f);
    }
  }
  all_reduce(x, size_t(T) * H);
  if (cfg_.embed_scale != 1.f)  // Gemma: embeddings times sqrt(hidden)
    for (size_t i = 0, n = size_t(T) * H; i < n; ++i) x[i] *= cfg_.embed_scale;
}

// HF LlamaRMSNorm: x / sqrt(mean(x^2) + eps) * w, in f32, over rows of H values (w holds 1 + w
// for Gemma's norms, see load_tensor).
void CpuBackend::rms_norm(const float* x, const std::vector<float>& w, float* y, int T, int H) const {
  for (int t = 0; t < T; ++t) {
    const float* xt = x + size_t(t) * H;
    float* yt = y + size_t(t) * H;
    double ss = 0;
    for (int i = 0; i < H; ++i) ss += double(xt[i]) * xt[i];
    const float scale = 1.0f / std::sqrt(static_cast<float>(ss / H) + cfg_.rms_eps);
    for (int i = 0; i < H; ++i) yt[i] = w[i] * (xt[i] * scale);
  }
}

// y_j = x @ W_j^T for several weights sharing the input (q/k/v, gate/up): one parallel region
// over all their rows, split in contiguous ranges of 4 rows.
void CpuBackend::matmul(const float* x, int T, std::initializer_list<MatJob> jobs) {
  int total = 0;
  for (const auto& j : jobs) total += j.w->rows;
  const KernelTable& k = kernels();
  const int in = jobs.begin()->w->cols;
  auto rows = [&](int64_t b, int64_t e) {
    int base = 0;
    for (const auto& j : jobs) {
      const int lo = std::max<int64_t>(b - base, 0), hi = std::min<int64_t>(e - base, j.w->rows);
      if (lo < hi) k.matmul(x, T, in, j.w->ptr(), j.w->dtype, j.w->scale(), in, lo, hi, j.y, j.w->rows);
      base += j.w->rows;
    }
  };
  // Waking the other workers costs more than a small product (a tiny model's decode step).
  if (int64_t(total) * in * T < kMinParallelMacs) rows(0, total);
  else pool_.parallel_for(total, rows, 4);
}

namespace {
// The block table a layer's KV goes through: the window pool's for windowed layers of a model that
// keeps one (the ring), else the sequence's table.
inline const int32_t* table_of(const Layer& L, const SeqInput& s) { return L.window_pool ? s.window_block_table : s.block_table; }
}  // namespace

void CpuBackend::attention_block(int l, const StepInput& in, int T) {
  const Layer& L = layers_[l];
  const int H = cfg_.hidden, D = cfg_.head_dim, NH = cfg_.n_heads, NKV = cfg_.n_kv_heads;
  const int QD = NH * D, KD = NKV * D, B = cfg_.kv_block_size;
  rms_norm(s_.x.data(), L.in_norm, s_.xn.data(), T);
  matmul(s_.xn.data(), T, {{&L.q, s_.q.data()}, {&L.k, s_.k.data()}, {&L.v, s_.v.data()}});

  // Bias, q/k norms, RoPE on q and k, then K/V of every new token into its sequence's cache blocks
  // (before attention: a prefill's tokens attend to each other). Sliding layers with a RoPE of
  // their own (Gemma 3) use its tables.
  const bool local_rope = L.sliding && cfg_.has_rope_local;
  const RopeConfig& rope = local_rope ? cfg_.rope_local : cfg_.rope;
  const int half = rope_dim(rope, D) / 2;
  const std::vector<float>& cos_tab = local_rope ? s_.local_cos : s_.rope_cos;
  const std::vector<float>& sin_tab = local_rope ? s_.local_sin : s_.rope_sin;
  float* kc = k_cache_[l].data();
  float* vc = v_cache_[l].data();
  for (int t = 0; t < T; ++t) {
    float* q = s_.q.data() + size_t(t) * QD;
    float* k = s_.k.data() + size_t(t) * KD;
    float* v = s_.v.data() + size_t(t) * KD;
    if (cfg_.qkv_bias) {
      for (int i = 0; i < QD; ++i) q[i] += L.q_bias[i];
      for (int i = 0; i < KD; ++i) k[i] += L.k_bias[i];
      for (int i = 0; i < KD; ++i) v[i] += L.v_bias[i];
    }
    if (cfg_.qk_norm) {
      rms_norm(q, L.q_norm, q, NH, D);
      rms_norm(k, L.k_norm, k, NKV, D);
    }
    const float* cs = cos_tab.data() + size_t(t) * half;
    const float* sn = sin_tab.data() + size_t(t) * half;
    for (int h = 0; h < NH; ++h) rope_apply(q + h * D, cs, sn, half);
    for (int h = 0; h < NKV; ++h) rope_apply(k + h * D, cs, sn, half);
    const SeqInput& s = in.seqs[s_.tok_seq[t]];
    const int p = s_.tok_pos[t];
    const size_t slot = (size_t(table_of(L, s)[p / B]) * B + p % B) * KD;
    std::memcpy(kc + slot, k, KD * sizeof(float));
    std::memcpy(vc + slot, v, KD * sizeof(float));
  }

  // Causal attention over the paged cache (the last sliding_window positions on sliding layers),
  // one (token, KV head) per work item: the group of query heads h = kvh * G + g that share KV
  // head kvh (GQA) reads each K/V row once.
  const KernelTable& kt = kernels();
  const float scale = cfg_.attn_scale > 0 ? cfg_.attn_scale : 1.0f / std::sqrt(static_cast<float>(D));
  const int G = NH / NKV, W = L.sliding ? cfg_.sliding_window : 0;
  auto first_key = [&](int t) { return W > 0 ? std::max(0, s_.tok_pos[t] + 1 - W) : 0; };
  int64_t attn_macs = 0;
  for (int t = 0; t < T; ++t) attn_macs += int64_t(s_.tok_pos[t] + 1 - first_key(t)) * QD * 2;
  auto attend = [&](int64_t item, int w) {
    const int t = static_cast<int>(item / NKV), kvh = static_cast<int>(item % NKV);
    const SeqInput& s = in.seqs[s_.tok_seq[t]];
    const size_t q_off = size_t(t) * QD + size_t(kvh) * G * D;
    float* scores = s_.scores.data() + size_t(w) * G * cfg_.max_position;
    kt.attend(s_.q.data() + q_off, G, kc, vc, table_of(L, s), B, KD, size_t(kvh) * D, first_key(t), s_.tok_pos[t] + 1, D,
              scale, cfg_.attn_softcap, scores, s_.attn.data() + q_off);
  };
  if (attn_macs < kMinParallelMacs) {
    for (int64_t i = 0; i < int64_t(T) * NKV; ++i) attend(i, 0);
  } else {
    pool_.parallel_dynamic(int64_t(T) * NKV, attend);
  }

  matmul(s_.attn.data(), T, {{&L.o, s_.proj.data()}});
  float* p = s_.proj.data();
  if (cfg_.o_bias && cfg_.tp_rank == 0)  // a row-parallel bias joins the sum once
    for (int t = 0; t < T; ++t)
      for (int i = 0; i < H; ++i) p[size_t(t) * H + i] += L.o_bias[i];
  all_reduce(p, size_t(T) * H);
  if (cfg_.sandwich_norms) rms_norm(p, L.post_norm, p, T);  // Gemma normalises the attention output
  float* x = s_.x.data();
  for (size_t i = 0, n = size_t(T) * H; i < n; ++i) x[i] += p[i];
}

namespace {

// The gate activation of a gated MLP, as transformers computes it in f32.
inline float activate(Activation a, float g) {
  if (a == Activation::Silu) return g / (1.0f + std::exp(-g));
  // gelu_pytorch_tanh: 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))
  const float k = 0.7978845608028654f;
  return 0.5f * g * (1.0f + std::tanh(k * (g + 0.044715f * g * g * g)));
}

}  // namespace

void CpuBackend::gated_mlp(const Mlp& m, const float* x, int T, float* y, bool add_down_bias) {
  const size_t I = m.gate.rows, H = cfg_.hidden;
  matmul(x, T, {{&m.gate, s_.gate.data()}, {&m.up, s_.up.data()}});
  float* g = s_.gate.data();
  float* u = s_.up.data();
  if (!m.gate_bias.empty())
    for (int t = 0; t < T; ++t)
      for (size_t i = 0; i < I; ++i) g[t * I + i] += m.gate_bias[i], u[t * I + i] += m.up_bias[i];
  for (size_t i = 0, n = T * I; i < n; ++i) g[i] = activate(cfg_.act, g[i]) * u[i];
  matmul(g, T, {{&m.down, y}});
  if (add_down_bias && !m.down_bias.empty())
    for (int t = 0; t < T; ++t)
      for (size_t i = 0; i < H; ++i) y[t * H + i] += m.down_bias[i];
}

// Routed experts: each token's router softmax over all experts, its top_k (renormalised with
// norm_topk), then this rank's experts on the rows routed to them, weighted into proj; plus this
// rank's slice of the shared expert times sigmoid(x . shared_expert_gate). The caller's all-reduce
// adds up the ranks' experts, as it adds up a dense MLP's slices.
void CpuBackend::experts(const Layer& L, int T) {
  const int H = cfg_.hidden, E = cfg_.num_experts, K = cfg_.top_k;
  float* proj = s_.proj.data();
  std::fill(proj, proj + size_t(T) * H, 0.f);
  grow(s_.router, size_t(T) * E);
  grow(s_.expert_w, size_t(T) * K);
  grow(s_.expert_id, size_t(T) * K);
  matmul(s_.xn.data(), T, {{&L.router, s_.router.data()}});
  for (int t = 0; t < T; ++t)
    moe::route_topk(s_.router.data() + size_t(t) * E, E, K, cfg_.norm_topk, s_.expert_w.data() + size_t(t) * K,
               s_.expert_id.data() + size_t(t) * K);
  for (int e = cfg_.expert_start; e < cfg_.expert_end; ++e) {
    s_.ex_tok.clear();
    for (int i = 0; i < T * K; ++i)
      if (s_.expert_id[i] == e) s_.ex_tok.push_back(i);
    const int n = static_cast<int>(s_.ex_tok.size());
    if (n == 0) continue;
    grow(s_.ex_in, size_t(n) * H);
    grow(s_.ex_out, size_t(n) * H);
    for (int r = 0; r < n; ++r)
      std::memcpy(s_.ex_in.data() + size_t(r) * H, s_.xn.data() + size_t(s_.ex_tok[r] / K) * H, H * sizeof(float));
    gated_mlp(L.experts[e - cfg_.expert_start], s_.ex_in.data(), n, s_.ex_out.data(), false);
    for (int r = 0; r < n; ++r) {
      const float w = s_.expert_w[s_.ex_tok[r]];
      kernels().axpy(w, s_.ex_out.data() + size_t(r) * H, proj + size_t(s_.ex_tok[r] / K) * H, H);
    }
  }
  if (cfg_.shared_intermediate > 0) {
    grow(s_.sh_out, size_t(T) * H);
    grow(s_.sh_gate, size_t(T));
    gated_mlp(L.shared, s_.xn.data(), T, s_.sh_out.data(), false);
    matmul(s_.xn.data(), T, {{&L.shared_gate, s_.sh_gate.data()}});
    for (int t = 0; t < T; ++t)
      kernels().axpy(1.0f / (1.0f + std::exp(-s_.sh_gate[t])), s_.sh_out.data() + size_t(t) * H, proj + size_t(t) * H, H);
  }
}

void CpuBackend::mlp_block(int l, int T) {
  const Layer& L = layers_[l];
  const size_t H = cfg_.hidden;
  rms_norm(s_.x.data(), cfg_.sandwich_norms ? L.pre_ff_norm : L.post_norm, s_.xn.data(), T);
  if (L.sparse) experts(L, T);
  else gated_mlp(L.mlp, s_.xn.data(), T, s_.proj.data(), cfg_.tp_rank == 0);
  float* p = s_.proj.data();
  all_reduce(p, T * H);
  if (cfg_.sandwich_norms) rms_norm(p, L.post_ff_norm, p, T);
  float* x = s_.x.data();
  for (size_t i = 0, n = T * H; i < n; ++i) x[i] += p[i];
}

// Final norm and LM head on the rows that need logits (each sequence's last position, or all of
// them with allLogits), gather the vocab shards, sample.
void CpuBackend::head(const StepInput& in, int T, StepOutput& out) {
  const int H = cfg_.hidden, V = cfg_.vocab_size;
  int R = 0;
  for (const auto& s : in.seqs) R += s.all_logits ? s.n_tokens : (s.sample || in.want_logits) ? 1 : 0;
  if (R == 0) return;
  grow(s_.head_in, size_t(R) * H);
  int r = 0, t0 = 0;
  for (const auto& s : in.seqs) {
    const int rows = s.all_logits ? s.n_tokens : (s.sample || in.want_logits) ? 1 : 0;
    const int first = t0 + s.n_tokens - rows;
    std::memcpy(s_.head_in.data() + size_t(r) * H, s_.x.data() + size_t(first) * H, size_t(rows) * H * sizeof(float));
    r += rows;
    t0 += s.n_tokens;
  }
  rms_norm(s_.head_in.data(), final_norm_, s_.head_in.data(), R);

  // Local logits in this rank's slot of width vocab_stride_ (padding = -inf), then gather.
  const int W = vocab_stride_;
  grow(s_.logits, size_t(R) * W);
  const Matrix& lm = lm_head();
  for (int i = 0; i < R; ++i) std::fill(s_.logits.data() + size_t(i) * W + vocab_shard_, s_.logits.data() + size_t(i + 1) * W, -INFINITY);
  const KernelTable& k = kernels();
  auto head_rows = [&](int64_t b, int64_t e) {
    k.matmul(s_.head_in.data(), R, H, lm.ptr(), lm.dtype, lm.scale(), H, static_cast<int>(b), static_cast<int>(e), s_.logits.data(), W);
  };
  if (int64_t(vocab_shard_) * H * R < kMinParallelMacs) head_rows(0, vocab_shard_);
  else pool_.parallel_for(vocab_shard_, head_rows, 4);
  if (cfg_.final_softcap > 0) {  // Gemma 2: cap * tanh(logits / cap)
    const float cap = cfg_.final_softcap;
    for (int i = 0; i < R; ++i)
      for (int j = 0; j < vocab_shard_; ++j) {
        float& z = s_.logits[size_t(i) * W + j];
        z = std::tanh(z / cap) * cap;
      }
  }
  const float* full = s_.logits.data();
  if (cfg_.tp_size > 1) {
    const size_t slot = size_t(R) * W;
    grow(s_.gathered, slot * cfg_.tp_size + size_t(R) * V);
    comm_->all_gather(s_.logits.data(), s_.gathered.data(), slot, DType::F32, nullptr);
    float* dst = s_.gathered.data() + slot * cfg_.tp_size;  // [R, V] after the gathered slots
    for (int rank = 0; rank < cfg_.tp_size; ++rank) {
      const int start = rank * W, len = std::min(W, V - start);
      for (int i = 0; i < R && len > 0; ++i)
        std::memcpy(dst + size_t(i) * V + start, s_.gathered.data() + rank * slot + size_t(i) * W, size_t(len) * sizeof(float));
    }
    full = dst;
  }
  const size_t ld = cfg_.tp_size > 1 ? size_t(V) : size_t(W);  // W == V when tp_size == 1

  bool any_logprobs = false;
  for (const auto& s : in.seqs) any_logprobs |= s.sample && s.sampling.logprobs >= 0;
  r = 0;
  for (const auto& s : in.seqs) {
    const int rows = s.all_logits ? s.n_tokens : (s.sample || in.want_logits) ? 1 : 0;
    if (s.sample) {
      // Our own buffer: biased and penalized in place, so returned logits are the ones sampled from.
      float* last = const_cast<float*>(full) + size_t(r + rows - 1) * ld;
      apply_bias_and_penalties(last, V, s.sampling, s.sampling.penalized() ? &penalties_.tokens(s.block_table[0]) : nullptr);
      const int id = sample(last, V, s.sampling, int64_t(s.pos) + s.n_tokens, sample_scratch_);
      out.sampled.push_back(id);
      if (any_logprobs) {
        const size_t j = out.sampled_logprob.size();
        out.sampled_logprob.push_back(NAN);
        out.top_ids.resize((j + 1) * kMaxLogprobs, -1);
        out.top_logprobs.resize((j + 1) * kMaxLogprobs, NAN);
        if (s.sampling.logprobs >= 0)
          logprobs(last, V, id, s.sampling.logprobs, &out.sampled_logprob[j], &out.top_ids[j * kMaxLogprobs], &out.top_logprobs[j * kMaxLogprobs]);
      }
    }
    if (in.want_logits)
      for (int i = 0; i < rows; ++i) out.logits.insert(out.logits.end(), full + size_t(r + i) * ld, full + size_t(r + i) * ld + V);
    r += rows;
  }
}

}  // namespace ns::cpu
