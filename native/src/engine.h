// The contract between the addon's JS binding (addon/), the backends (cpu/, cuda/) and the
// communicators (comm/). One forward, two backends: a Backend owns the weights of one shard
// (a TP rank of a contiguous layer range) and its paged KV cache, and runs one step at a time.
//
// Shapes are per rank. Megatron slicing: q/k/v/gate/up are column-parallel (rows of the HF
// [out, in] weight), o_proj/down are row-parallel (columns), followed by an all-reduce. Embedding
// and LM head are vocab-parallel: rank r owns rows [vocab_start, vocab_end); the embedding is
// all-reduced (rows outside the shard contribute zero), the logits all-gathered.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace ns {

// I8 and F8E4M3 are storage types of quantized weight matrices (and of the fp8 KV cache); every
// quantized matrix arrives with one f32 scale per row (docs/QUANTIZATION.md).
enum class DType : int { F32 = 0, BF16 = 1, F16 = 2, I8 = 3, F8E4M3 = 4 };

inline size_t dtype_size(DType d) { return d == DType::F32 ? 4 : d == DType::I8 || d == DType::F8E4M3 ? 1 : 2; }

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::F32: return "f32";
    case DType::BF16: return "bf16";
    case DType::F16: return "f16";
    case DType::I8: return "i8";
    case DType::F8E4M3: return "f8e4m3";
  }
  return "?";
}

// How the weight matrices of a shard are stored. Native: the checkpoint's float dtype (CPU) or the
// compute dtype (CUDA). Int8: symmetric int8 with one scale per output row, activations stay in the
// compute dtype (W8A16). Fp8: E4M3 with one scale per output row; with fp8_activations the inputs
// are quantized to E4M3 per token (dynamic) or with the checkpoint's static per-tensor input_scale
// (W8A8; CUDA, sm_89+), else they stay in the compute dtype (an FP8 weight-only checkpoint, W8A16).
enum class WeightFormat : int { Native = 0, Int8 = 1, Fp8 = 2 };

enum class RopeType : int { Default = 0, Linear = 1, Llama3 = 2, Dynamic = 3, Yarn = 4, LongRope = 5 };

// transformers' ROPE_INIT_FUNCTIONS. Dynamic and LongRope depend on the sequence's length at the
// step (rope.h: rope_inv_freq(cfg, seq_len)), as transformers recomputes them per forward.
struct RopeConfig {
  RopeType type = RopeType::Default;
  float theta = 10000.f;
  float factor = 1.f;             // linear, llama3, dynamic, yarn
  float low_freq_factor = 1.f;    // llama3
  float high_freq_factor = 4.f;   // llama3
  int original_max_pos = 8192;    // llama3, yarn, longrope; dynamic: max_position_embeddings
  float attention_factor = 1.f;   // yarn, longrope: multiplies cos and sin
  float beta_fast = 32.f, beta_slow = 1.f;  // yarn
  bool truncate = true;                     // yarn
  std::vector<float> short_factor, long_factor;  // longrope: rotary_dim / 2 each
  int rotary_dim = 0;             // leading dims of a head that rotate (partial rotary); 0 = head_dim
};

enum class Activation : int { Silu = 0, GeluTanh = 1 };

// Everything a backend needs to know about its shard. All head/intermediate counts are this
// rank's share (full / tp_size); vocab_size is the full vocabulary.
struct ShardConfig {
  int hidden = 0;
  int intermediate = 0;   // per rank
  int n_heads = 0;        // per rank
  int n_kv_heads = 0;     // per rank (MQA with tp_size > kv heads: replicated, 1 per rank)
  int head_dim = 0;
  int vocab_size = 0;     // full
  int vocab_start = 0;    // this rank's rows of embedding / LM head
  int vocab_end = 0;
  int layer_start = 0;    // global index of the first layer this shard holds
  int layer_end = 0;      // one past the last
  int max_position = 0;
  float rms_eps = 1e-5f;
  bool qkv_bias = false;
  // Family switches (src/model/config.ts says which family sets which): one forward for all.
  bool o_bias = false;          // o_proj bias (added once: by TP rank 0 before the all-reduce)
  bool mlp_bias = false;        // gate/up (sliced) and down (whole, rank 0) biases
  bool qk_norm = false;         // RMSNorm of each q and k head (weight [head_dim]) before RoPE
  bool norm_plus_one = false;   // Gemma: x / rms(x) * (1 + w)
  bool sandwich_norms = false;  // Gemma: post_attention_layernorm on the attention output; pre/post_feedforward_layernorm
  Activation act = Activation::Silu;  // gate activation of the gated MLP
  float embed_scale = 1.f;      // Gemma: sqrt(hidden)
  float attn_scale = 0.f;       // 0: 1 / sqrt(head_dim)
  float attn_softcap = 0.f;     // cap * tanh(score / cap); 0 = off
  float final_softcap = 0.f;    // the same on the logits
  int sliding_window = 0;       // window of the layers marked in sliding_layers; 0 = none
  std::vector<uint8_t> sliding_layers;  // per layer of this shard (layer_start..): 1 = windowed
  // Models that mix windowed and global layers keep the windowed layers' KV in a pool of their own
  // (kv_window_pool_blocks), addressed through each sequence's window_block_table: a ring of the
  // few blocks the window needs, so a long sequence holds every block only in the global layers.
  // The model decides (every stage of a pipeline agrees), not the shard's own layers.
  bool kv_window_group = false;
  bool has_rope_local = false;  // sliding layers use rope_local (Gemma 3's local base)
  RopeConfig rope_local;
  // Mixture of experts: num_experts > 0. Each TP rank holds whole experts [expert_start,
  // expert_end) and computes their share for every token; the MLP's all-reduce combines them.
  int num_experts = 0;
  int expert_start = 0, expert_end = 0;
  int top_k = 0;
  int moe_intermediate = 0;     // per expert (whole: experts are not split)
  bool norm_topk = false;       // renormalise the top-k router probabilities
  int shared_intermediate = 0;  // this rank's share of the shared expert (0: none)
  std::vector<uint8_t> sparse_layers;   // per layer of this shard: 1 = routed experts, 0 = dense MLP
  bool tied_embeddings = false;
  bool has_embedding = false;   // first pipeline stage
  bool has_head = false;        // last pipeline stage (final norm + LM head + sampling)
  int tp_rank = 0;
  int tp_size = 1;
  RopeConfig rope;
  DType compute = DType::F32;   // CPU: F32. CUDA: BF16 or F16 (fp32 accumulation)
  int kv_block_size = 16;       // tokens per KV block
  int kv_blocks = 0;            // 0: backend sizes it (CUDA: from free memory x gpu_memory_fraction)
                                // kv_window_group: the global layers' pool; the window pool follows (kv_window_pool_blocks)
  float gpu_memory_fraction = 0.9f;
  int max_step_tokens = 0;      // most tokens one step carries (CUDA: scratch kept free beside the KV cache); 0: 2048
  int device_index = 0;
  int threads = 0;              // CPU: 0 = cores given to the process
  // Quantization (docs/QUANTIZATION.md). `weights` covers q/k/v/o/gate/up/down, `head_weights` the LM
  // head (with tied embeddings a quantized head arrives as lm_head.weight and tied_embeddings is false).
  // A quantized matrix X.weight comes with X.weight_scale (f32, one per row of this rank's slice) and,
  // with static_input_scales, X.input_scale (f32 [1]).
  WeightFormat weights = WeightFormat::Native;
  WeightFormat head_weights = WeightFormat::Native;
  bool static_input_scales = false;
  bool fp8_activations = true;      // fp8 weights: W8A8 (true) or weight-only W8A16 (false)
  float activation_scale_ub = 0.f;  // fp8 dynamic activations: cap on a token's absolute maximum (fbgemm_fp8); 0: none
  // CUDA: the paged KV cache in E4M3 (per-layer k/v scales, 1.0 unless the checkpoint has them),
  // half the bytes per block of the compute dtype.
  bool kv_fp8 = false;
};

// Most top logprobs a sequence can ask for per token (OpenAI's limit).
constexpr int kMaxLogprobs = 20;

struct LogitBias {
  int32_t token;
  float bias;
};

// Per-sequence sampling, in this order (docs/ENGINE.md "Sampling"): logit bias; the repetition
// penalty (transformers' definition: every token of the prompt and of the output so far, logit / p
// when positive, logit * p otherwise); frequency and presence penalties (OpenAI's: output tokens
// only, logit - f * count - p * [count > 0]); logprobs are the log-softmax of these logits; then
// temperature, top-k, top-p, min-p and one seeded draw.
struct SamplingParams {
  float temperature = 0.f;  // 0 = greedy
  int top_k = 0;            // 0 = off
  float top_p = 1.f;        // 1 = off
  float min_p = 0.f;        // 0 = off: keep tokens with p >= min_p * p(most likely)
  uint64_t seed = 0;
  float repetition_penalty = 1.f;  // 1 = off
  float presence_penalty = 0.f;
  float frequency_penalty = 0.f;
  // Positions below prompt_len hold the prompt; the penalties tell prompt and output tokens apart
  // by position (a replayed request feeds both again from position 0).
  int prompt_len = 0;
  const LogitBias* logit_bias = nullptr;  // distinct tokens; host memory valid for the step
  int n_logit_bias = 0;
  int logprobs = -1;  // -1: none; 0..kMaxLogprobs: the sampled token's logprob and this many top ones

  bool penalized() const { return repetition_penalty != 1.f || presence_penalty != 0.f || frequency_penalty != 0.f; }
};

// One sequence's slice of a step: n_tokens new tokens starting at absolute position pos.
// A prefill is n_tokens = prompt length (or a chunk of it); a decode is n_tokens = 1.
// block_table maps logical block i (positions [i*B, (i+1)*B)) to a physical KV block; it must
// cover positions [0, pos + n_tokens). With ShardConfig::kv_window_group, window_block_table does
// the same for the windowed layers, into their own pool (entries repeat: a ring, and the layers
// read only the window, whose blocks the ring still holds).
struct SeqInput {
  // n_tokens ids. The first stage embeds them; the last stage reads them too when the sequence has
  // penalties (its token counts are built from what each step feeds).
  const int32_t* tokens = nullptr;
  int n_tokens = 0;
  int pos = 0;
  const int32_t* block_table = nullptr;
  int n_blocks = 0;
  const int32_t* window_block_table = nullptr;  // kv_window_group only
  int n_window_blocks = 0;
  SamplingParams sampling;
  bool sample = true;        // last stage: sample one token from the last position
  bool all_logits = false;   // last stage: return logits of every position, not only the last
};

struct StepInput {
  std::vector<SeqInput> seqs;
  // Later pipeline stages: activations from the previous stage, [total_tokens, hidden] in
  // `compute` dtype, host memory. nullptr on the first stage.
  const void* hidden_in = nullptr;
  bool want_logits = false;  // last stage: copy logits back (tests, reference checks)
};

struct StepOutput {
  std::vector<int32_t> sampled;       // one per seq with sample=true (last stage)
  // Filled when a sampled seq asked for logprobs, one entry (of kMaxLogprobs for the top ones) per
  // sampled seq: the sampled token's logprob (NaN for a seq that asked for none) and the most likely
  // tokens, best first (lowest id among equals), id -1 past the number it asked for.
  std::vector<float> sampled_logprob;
  std::vector<int32_t> top_ids;
  std::vector<float> top_logprobs;
  std::vector<float> logits;          // want_logits: per seq, last (or all) positions x vocab
  std::vector<uint8_t> hidden_out;    // non-last stage: [total_tokens, hidden] in compute dtype
};

// A collective group. CPU: TCP sockets. CUDA: NCCL. Buffers live where the backend computes
// (host for CPU, device for CUDA); `stream` is the backend's CUDA stream or nullptr.
class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual void all_reduce_sum(void* buf, size_t count, DType dt, void* stream) = 0;
  // Each rank contributes `count` elements; out holds size()*count in rank order.
  virtual void all_gather(const void* in, void* out, size_t count, DType dt, void* stream) = 0;
  virtual void broadcast(void* buf, size_t bytes, int root, void* stream) = 0;
  virtual void send(const void* buf, size_t bytes, int peer, void* stream) = 0;
  virtual void recv(void* buf, size_t bytes, int peer, void* stream) = 0;
  // Makes every pending and future call fail fast (throws) instead of blocking on a dead peer.
  virtual void abort() = 0;
  // acc[i] += the sum over ranks of part[i] (f32, device buffers) in one kernel, when the comm has
  // a fused path for a message this size (NcclComm's one-shot P2P collectives); false otherwise,
  // and nothing was enqueued.
  virtual bool all_reduce_add_f32(const float* part, float* acc, size_t count, void* stream) { return false; }
  // The same for acc [rows, cols], followed in the same kernel by the residual stream's next
  // RMSNorm: out = acc / rms(acc) * w, in out_dt. false when the comm has no fused path for it.
  virtual bool all_reduce_add_rmsnorm(const float* part, float* acc, int rows, int cols, const float* w, float eps,
                                      DType out_dt, void* out, void* stream) { return false; }
  // Bytes per rank up to which all_reduce_sum and all_gather run as plain kernels that a CUDA
  // graph can capture and replay with no host involvement; 0 when none do.
  virtual size_t graph_safe_bytes() const { return 0; }
  // Throws when the comm was aborted or a collective reported a failure: a step whose collectives
  // were cut short (kernels that gave up waiting for a dead peer) must not return their results.
  virtual void check_healthy() {}
};

class Backend {
 public:
  virtual ~Backend() = default;
  // Copies one tensor of this shard (already sliced by the loader) into backend memory,
  // converting to the storage dtype the backend keeps. `name` is the HF tensor name.
  virtual void load_tensor(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                           const void* data, size_t bytes) = 0;
  // Checks every expected tensor arrived (throws naming the first missing one) and allocates
  // the KV cache. Returns the number of KV blocks.
  virtual int finalize() = 0;
  // Blocks of the windowed layers' pool after finalize (ShardConfig::kv_window_group), else 0.
  virtual int window_blocks() const { return 0; }
  virtual void set_tp_comm(std::shared_ptr<Communicator> comm) = 0;
  virtual void step(const StepInput& in, StepOutput& out) = 0;
  virtual std::string describe() const = 0;
};

// The windowed layers' pool for a global pool of `global_blocks` (kv_window_group): room for the
// ring of as many whole-context sequences as the global pool holds (ring: the window plus the
// longest step, max_step_tokens or 2048), at least one ring, at most global_blocks (a sequence never
// holds more window blocks than global ones). Memory is shared as TensorRT-LLM shares it between
// attention windows: in proportion to the tokens each window keeps per sequence.
inline int kv_window_pool_blocks(const ShardConfig& c, int global_blocks) {
  if (!c.kv_window_group || c.sliding_window <= 0 || global_blocks <= 0) return 0;
  const int64_t B = c.kv_block_size, step = c.max_step_tokens > 0 ? c.max_step_tokens : 2048;
  const int64_t ctx = (int64_t(c.max_position) + B - 1) / B;
  const int64_t ring = std::min<int64_t>(ctx, (c.sliding_window + step - 1 + B - 1) / B);
  const int64_t share = ctx > 0 ? (int64_t(global_blocks) * ring + ctx - 1) / ctx : global_blocks;
  return static_cast<int>(std::min<int64_t>(global_blocks, std::max<int64_t>(ring, share)));
}

std::unique_ptr<Backend> make_cpu_backend(const ShardConfig& cfg);
// Defined in cuda/ when built with CUDA; otherwise throws "cuda: unavailable (not built with CUDA)".
std::unique_ptr<Backend> make_cuda_backend(const ShardConfig& cfg);
// "" when CUDA can be used, else the reason ("not built with CUDA", "no CUDA device", ...).
std::string cuda_unavailable_reason();

// Seeded sampling shared by both backends: the random draw for a token depends only on
// (seed, position), so a replayed request draws the same numbers. Returns a uniform in [0, 1).
inline float sampling_uniform(uint64_t seed, int64_t position) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(position + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) * (1.0f / 16777216.0f);
}

}  // namespace ns
