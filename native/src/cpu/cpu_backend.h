// The CPU backend: one shard's weights (kept in their stored dtype) and its paged KV cache (f32)
// in host memory, and the forward step (cpu_forward.cc) run on a thread pool.
#pragma once

#include <memory>
#include <set>
#include <string>
#include <vector>

#include "cpu/thread_pool.h"
#include "common/penalties.h"
#include "engine.h"

namespace ns::cpu {

// A weight matrix: row-major [rows, cols] as the checkpoint stores it (f32 / bf16 / f16), or int8
// with one f32 scale per row (W8A16: y = scale[r] * sum_i x[i] * q[r, i]).
struct Matrix {
  std::vector<uint8_t> data;
  DType dtype = DType::F32;
  int rows = 0, cols = 0;
  std::vector<float> scales;  // int8 only: [rows]
  const void* ptr() const { return data.data(); }
  const float* scale() const { return scales.empty() ? nullptr : scales.data(); }
};

// A gated MLP (a dense layer's, a routed expert's, the shared expert's): down(act(gate x) * up x).
struct Mlp {
  Matrix gate, up, down;
  std::vector<float> gate_bias, up_bias, down_bias;  // only with mlp_bias
};

struct Layer {
  // Norm weights are stored ready to multiply: 1 + w for Gemma's (1 + w) RMSNorm.
  std::vector<float> in_norm, post_norm;          // [hidden]
  std::vector<float> pre_ff_norm, post_ff_norm;   // sandwich_norms (Gemma)
  std::vector<float> q_norm, k_norm;              // qk_norm: [head_dim]
  Matrix q, k, v, o;
  std::vector<float> q_bias, k_bias, v_bias;      // qkv_bias
  std::vector<float> o_bias;                      // o_bias (added by TP rank 0)
  bool sliding = false;  // attends to the last sliding_window positions only
  bool window_pool = false;  // sliding in a kv_window_group model: its KV lives in the window pool
  bool sparse = false;   // routed experts instead of `mlp`
  Mlp mlp;                                         // dense layers
  Matrix router;                                   // sparse: [num_experts, hidden]
  std::vector<Mlp> experts;                        // sparse: this rank's experts, expert_start..
  Mlp shared;                                      // sparse with shared_intermediate > 0
  Matrix shared_gate;                              // [1, hidden]
};

// Per-step activations; grow-only so steady-state decoding does not allocate.
struct Scratch {
  std::vector<float> x, xn, q, k, v, attn, proj, gate, up;  // per token
  std::vector<float> head_in, logits, gathered;              // per logits row
  std::vector<float> scores;                                 // per worker: max_position floats
  std::vector<int> tok_seq, tok_pos;                         // per token: its sequence and position
  std::vector<float> rope_cos, rope_sin;                     // per token: rotary dims / 2 (global layers)
  std::vector<float> local_cos, local_sin;                   // the same for sliding layers with their own RoPE
  std::vector<float> router, expert_w, ex_in, ex_out, sh_out, sh_gate;  // MoE: router logits, top-k weights, gathered rows
  std::vector<int> expert_id, ex_tok;
};

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(const ShardConfig& cfg);
  void load_tensor(const std::string& name, DType dtype, const std::vector<int64_t>& shape, const void* data,
                   size_t bytes) override;
  int finalize() override;
  int window_blocks() const override { return kv_window_blocks_; }
  void set_tp_comm(std::shared_ptr<Communicator> comm) override;
  void step(const StepInput& in, StepOutput& out) override;
  std::string describe() const override;

 private:
  // cpu_backend.cc: loading
  void expect(const std::string& name, std::vector<int64_t> shape);
  // A weight matrix and, when `fmt` quantizes it, its per-row scales (X.weight_scale).
  void expect_matrix(const std::string& name, int64_t rows, int64_t cols, WeightFormat fmt);
  // The matrix a tensor name denotes (its .weight or .weight_scale), nullptr for norms and biases.
  Matrix* matrix_of(const std::string& name, WeightFormat* fmt);
  // cpu_forward.cc: the forward pass, top to bottom
  void validate(const StepInput& in) const;
  void forward(const StepInput& in, StepOutput& out);
  void prepare(const StepInput& in, int total_tokens);
  void embed(const StepInput& in, int T);
  void attention_block(int layer, const StepInput& in, int T);
  void mlp_block(int layer, int T);
  // y[T, hidden] = m(x) for a gated MLP (biases included, except down's: add_down_bias says).
  void gated_mlp(const Mlp& m, const float* x, int T, float* y, bool add_down_bias);
  void experts(const Layer& L, int T);  // proj = this rank's routed (and shared) experts' share of the MoE output
  void head(const StepInput& in, int T, StepOutput& out);
  void rms_norm(const float* x, const std::vector<float>& w, float* y, int T, int n) const;
  void rms_norm(const float* x, const std::vector<float>& w, float* y, int T) const { rms_norm(x, w, y, T, cfg_.hidden); }
  void rope_tables(const RopeConfig& rope, const StepInput& in, int T, std::vector<float>& cos, std::vector<float>& sin);
  struct MatJob { const Matrix* w; float* y; };
  void matmul(const float* x, int T, std::initializer_list<MatJob> jobs);
  void all_reduce(float* buf, size_t count);
  const Matrix& lm_head() const;

  ShardConfig cfg_;
  int n_layers_;
  int vocab_shard_;   // rows of embedding / LM head on this rank
  int vocab_stride_;  // ceil(vocab / tp): each rank's slot in the gathered logits
  bool finalized_ = false;
  ThreadPool pool_;
  std::shared_ptr<Communicator> comm_;

  Matrix embed_, lm_head_;
  std::vector<float> final_norm_;
  std::vector<Layer> layers_;
  std::vector<float> inv_freq_, local_inv_freq_;  // RoPE frequencies of the step-independent types

  // Expected tensors: name -> shape; filled by the constructor, ticked off by load_tensor.
  std::vector<std::pair<std::string, std::vector<int64_t>>> expected_;
  std::set<std::string> loaded_;

  int64_t macs_per_token_ = 0;  // weight elements of this shard: the matmul work of one token
  int kv_blocks_ = 0;
  int kv_window_blocks_ = 0;  // kv_window_group: the windowed layers' pool
  // Per layer [blocks, block_size, kv_heads, head_dim]: kv_window_blocks_ blocks on the windowed
  // layers of a kv_window_group model, kv_blocks_ on the others.
  std::vector<std::vector<float>> k_cache_, v_cache_;

  Scratch s_;
  std::vector<std::pair<float, int>> sample_scratch_;
  PenaltyHistories penalties_;  // last stage: token counts of the sequences with penalties
};

}  // namespace ns::cpu
