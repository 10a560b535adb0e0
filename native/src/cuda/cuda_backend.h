// The CUDA backend: one shard's weights and paged KV cache on one GPU, a forward step on one
// CUDA stream. Weights and activations are bf16 or fp16 (ShardConfig::compute); the residual
// stream, norms, softmax and logits are fp32. q/k/v and gate/up are concatenated at load time so
// that each layer runs 4 matrix products (qkv, o, gate_up, down). Weight matrices may be int8 or
// E4M3 with one f32 scale per row, and the KV cache E4M3 (docs/QUANTIZATION.md).
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "cuda/cublas_api.h"
#include "cuda/kernels.h"
#include "cuda/lt_gemm.h"
#include "common/penalties.h"
#include "cuda/moe_plan.h"
#include "engine.h"

namespace ns::cuda {

// A device allocation that only grows (growing frees the old contents).
struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  bool reserve(size_t need);  // true when it (re)allocated
  void release();
  template <typename T> T* as() const { return static_cast<T*>(ptr); }
  ~DeviceBuffer();
};

struct PinnedBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  void reserve(size_t need);
  ~PinnedBuffer();
};

struct LayerWeights {
  DeviceBuffer qkv, qkv_bias, o, gate_up, down, in_norm, post_norm;
  // Quantized matrices: one f32 scale per row (q|k|v and gate|up concatenated like their weights);
  // static fp8 activation scales: 4 floats {qkv, o, gate_up, down} (the largest of fused inputs').
  DeviceBuffer qkv_s, o_s, gate_up_s, down_s, in_s;
  // Family switches (ShardConfig): f32 biases and norms, the MoE's router and experts.
  DeviceBuffer o_bias, gu_bias, down_bias, q_norm, k_norm, pre_ff_norm, post_ff_norm;
  bool sliding = false, sparse = false;
  bool window_pool = false;  // sliding in a kv_window_group model: KV in the window pool, through the window tables
  DeviceBuffer router;                 // [num_experts (+ 1: the shared expert's gate), hidden]
  DeviceBuffer ex_gate_up, ex_down;    // this rank's experts back to back: [n][2 * moe_I, hidden], [n][hidden, moe_I]
  DeviceBuffer sh_gate_up, sh_down;    // the shared expert (rank's slice); its gate is the router's last row
  // Quantized experts (int8 / E4M3 like the layers' matrices): one f32 scale per row, [n][2 * moe_I],
  // [n][hidden]; the shared expert's [2 * shared_I], [hidden].
  DeviceBuffer ex_gate_up_s, ex_down_s, sh_gate_up_s, sh_down_s;
};

// A weight matrix [N, K] as matmul() takes it: in the activation dtype, or int8 / E4M3 with one f32
// scale per row; in_scale: a static fp8 activation scale (device, one float), nullptr: per token.
struct Weight {
  const void* w = nullptr;
  DType dt = DType::BF16;
  const float* scale = nullptr;
  const float* in_scale = nullptr;
};

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const ShardConfig& cfg);
  ~CudaBackend() override;
  void load_tensor(const std::string& name, DType dtype, const std::vector<int64_t>& shape, const void* data,
                   size_t bytes) override;
  int finalize() override;
  int window_blocks() const override { return kv_window_blocks_; }
  void set_tp_comm(std::shared_ptr<Communicator> comm) override { comm_ = std::move(comm); }
  void step(const StepInput& in, StepOutput& out) override;
  std::string describe() const override;

 private:
  enum class Out { Act, F32, AddResidual };
  static GemvOut gemv_mode(Out m) { return m == Out::Act ? GemvOut::Act : m == Out::F32 ? GemvOut::F32 : GemvOut::AddResidual; }
  // Offsets (int32 words) of the per-step arrays in the packed metadata buffer, and the counts.
  // Attention: n_tiles flash query tiles {first token, n} (`tiles`, sequences with >=
  // kFlashMinTokens new tokens) and the n_simt other tokens (`simt_tokens`; with no tiles the list
  // is left out and the SIMT kernel takes tokens 0..T-1, as in CUDA-graph decode steps).
  struct StepPlan {
    int T = 0, S = 0, n_bt = 0, R = 0, NS = 0, splits = 1, bucket = 0;  // bucket > 0: CUDA-graph decode
    int n_tiles = 0, n_simt = 0;
    bool flash_short = false;  // the short sequences take flash tiles too (flash_decode_min_)
    bool copy_logits = false;
    bool any_logprobs = false;  // a sampled row asked for logprobs: copy them back
    // wslot / seq_wbt_off: the windowed layers' KV slot per token and table offset per sequence
    // (kv_window_group; their tables follow each sequence's own in block_tables). Empty otherwise.
    int n_w = 0, n_ws = 0;
    size_t extras_ptr, tokens, pos, slot, wslot, tok_seq, seq_bt_off, seq_wbt_off, block_tables, rows, sample_rows, params, tiles,
        simt_tokens, total;
    void layout();
  };
  // warmed: the family forward runs a bucket's first step eagerly (its kernels and cuBLAS's get
  // loaded, shared-memory opt-ins set) and captures it from the second on.
  struct DecodeGraph { cudaGraphExec_t exec = nullptr; uint64_t epoch = 0; bool warmed = false; };
  // The graph bucket a decode step of S sequences is padded to (0: S is past graph_max_).
  int graph_bucket(int S) const;
  StepPlan plan_step(const StepInput& in) const;
  void pack(const StepInput& in, const StepPlan& p);
  void enqueue_forward(const StepPlan& p, const StepInput& in);
  // The families' forward (family.cu kernels; no graphs, no flash, no fused all-reduce+norm): used
  // when any family switch of ShardConfig is on (family_).
  void enqueue_family_forward(const StepPlan& p, const StepInput& in);
  void enqueue_any_forward(const StepPlan& p, const StepInput& in) {
    if (family_) enqueue_family_forward(p, in);
    else enqueue_forward(p, in);
  }
  void upload_rope_tables(const StepInput& in, int T);
  // This rank's experts (and its slice of the shared expert) for T tokens of xb_: true when the
  // result already joined the residual stream (tp 1: with post_w / next_w as add_norm), else it is
  // in tmp_ (f32 [T, hidden]) for the all-reduce.
  bool moe_layer(const LayerWeights& L, int T, const int32_t* slot, const float* post_w, const float* next_w);
  void reserve_family(int T);
  int attention_splits(int T) const;
  void run_graph(const StepPlan& p, const StepInput& in);
  // Captures (or re-captures) the graph of p's bucket without launching it; false with `why` on failure.
  bool capture_graph(const StepPlan& p, const StepInput& in, std::string* why);
  // At finalize (with the warm-up): every bucket's decode graph, so no serving step pays a capture.
  void capture_decode_graphs();
  // tp > 1 decode steps of up to `rows` tokens may be graphs only when each of their collectives
  // (hidden-row all-reduces, the logits all-gather) runs as a plain kernel (P2P), not NCCL.
  bool tp_graphable(int rows) const {
    if (cfg_.tp_size == 1) return true;
    if (!comm_ || cfg_.hidden % 4 != 0 || vocab_stride_ % 4 != 0) return false;
    const size_t widest = static_cast<size_t>(rows) * (cfg_.hidden > vocab_stride_ ? cfg_.hidden : vocab_stride_) * 4;
    return comm_->graph_safe_bytes() >= widest;
  }
  struct Target { void* dst; DType dt; std::vector<int64_t> shape; size_t offset_elems; };
  // Static fp8 input scales (X.input_scale) and fp8 KV scales (self_attn.k_scale / v_scale): kept
  // on the host while loading (fused inputs take their largest), uploaded at finalize. true when
  // `name` was one of them.
  bool load_scalar(const std::string& name, DType dtype, const std::vector<int64_t>& shape, const void* data, size_t bytes);
  Target target_for(const std::string& name) const;
  // An fp8 checkpoint's static input scale of an expert matrix (X.input_scale): checked and not
  // used (the experts run weight-only, moe_quant.cu). true when `name` was one.
  bool skip_expert_input_scale(const std::string& name, DType dtype, const std::vector<int64_t>& shape, const void* data, size_t bytes);
  // The shared expert's products when the grouped GEMV does not take it (quantized: weight-only).
  void shared_expert_matmul(const void* x, const DeviceBuffer& w, const DeviceBuffer& scale, int M, int N, int K, void* y, Out mode);
  void expect(const std::string& name) { expected_.insert(name); }
  // swiglu_in: x is the gate|up output [M, 2K]; SwiGLU runs first (into act_mlp_).
  void matmul(const void* x, const Weight& w, int M, int N, int K, void* y, Out mode, bool swiglu_in = false);
  // A matrix in the activation dtype (an MoE's router and shared expert).
  void matmul(const void* x, const void* w, int M, int N, int K, void* y, Out mode) { matmul(x, Weight{w, act_}, M, N, K, y, mode); }
  // x · W (M rows) with the next kernel's work in the GEMV's epilogue (kernels.h gemv_fused), where
  // matmul would take the decode GEMV (use_gemv_, M <= 4); false, nothing enqueued, otherwise.
  bool matmul_fused(const void* x, const Weight& w, int M, int K, const GemvFusion& f);
  // The quantized cases of matmul (quant_matmul.cu): int8 or E4M3 weights with activation-dtype
  // inputs (W8A16), E4M3 weights and inputs (W8A8).
  void matmul_weight_only(const void* x, const Weight& w, int M, int N, int K, void* y, Out mode);
  void matmul_fp8(const void* x, const Weight& w, int M, int N, int K, void* y, Out mode);
  // W8A8 products of M rows whose input rows are quantized by their producer (rmsnorm_quant,
  // swiglu_quant) rather than by quantize_act: matmul_fp8's cuBLASLt path.
  bool fp8_input_fused(const Weight& w, int M) const;
  // The RMSNorm of T rows of the residual stream as the input of `next` (xb_), or, where
  // fp8_input_fused, straight into its E4M3 rows (xq_ / xs_; xq_of_ = xb_: matmul_fp8 takes them).
  void norm_into_input(const float* res, int T, const float* norm_w, const Weight& next);
  // Times both forms of matmul_fp8 for the shape, scaled by cuBLASLt and f32 + epilogue, and keeps
  // the faster (warm_gemms, at the decode graphs' row counts: inputs of zeros).
  void tune_fp8(const std::vector<const void*>& weights, const Weight& w, const void* x, int M, int N, int K, void* y, Out mode);
  // A layer's matrix as matmul takes it (the LM head: head_weight()).
  Weight weight(const DeviceBuffer& w, const DeviceBuffer& scale, const DeviceBuffer& in_scale, int which) const;
  Weight head_weight() const;
  // Adds the row-parallel projection to the residual stream.
  // residual += x @ w^T summed over TP ranks. With next_norm, true when xb_ also holds
  // rmsnorm(residual) * next_norm (fused into the all-reduce), so the caller skips that norm.
  bool row_parallel_into_residual(const void* x, const Weight& w, int T, int K, bool swiglu_in,
                                  const float* next_norm);
  void ensure_activations(int T, int R, int n_sample, int attn_ws_floats);
  void warm_gemms();  // at finalize unless NODESPEED_CUDA_WARMUP=0 (cuda_backend.cu)
  size_t activation_bytes(int T) const;

  ShardConfig cfg_;
  DType act_;
  DType wdt_;  // storage of the layers' matrices: act_, I8 or F8E4M3
  DType hdt_;  // of the LM head
  bool kv_fp8_ = false;  // the KV cache in E4M3 with per-layer scales k_scale_ / v_scale_
  std::vector<float> k_scale_, v_scale_;
  std::vector<std::array<float, 4>> in_scale_host_;  // static fp8 activation scales per layer (0: not loaded yet)
  std::unique_ptr<LtGemm> fp8_lt_;  // E4M3 GEMMs (W8A8 weights)
  // Scratch of the quantized products: E4M3 activations and their row scales, the f32 result of an
  // E4M3 GEMM (acc_: a chunk of rows at a time), dequantized int8 rows for prefill-sized GEMMs.
  DeviceBuffer xq_, xs_, acc_, deq_;
  int n_layers_;
  int qkv_rows_;     // (n_heads + 2 kv_heads) * head_dim
  int vocab_shard_;   // vocab_end - vocab_start
  int vocab_stride_;  // ceil(vocab / tp): every rank's slot in the logits all-gather
  int sm_count_ = 0;
  std::string device_name_;
  bool use_gemv_ = true;
  bool warm_gemms_ = true;  // NODESPEED_CUDA_WARMUP=0 turns it off
  // The activation rows whose E4M3 form xq_ / xs_ already hold (set by their producer, taken by
  // the next matmul_fp8, which quantizes x itself when x is anything else).
  const void* xq_of_ = nullptr;
  std::unique_ptr<LtGemm> lt_;  // decode GEMMs with measured cuBLASLt algorithms (lt_gemm.h); NODESPEED_CUDA_LT=0: none
  // Tunes lt_ for one decode GEMM shape on `weights` (the same matrix of several layers).
  void tune_gemm(const std::vector<const void*>& weights, const void* x, int M, int N, int K, void* y, Out mode);
  // Tensor-core attention (attention_prefill.cu; NODESPEED_CUDA_FLASH=0 turns it off): prefill
  // chunks of >= kFlashMinTokens tokens. Decode tokens stay on the SIMT kernels: the vectorised
  // one reads K/V at 4.25 TB/s on an H200 where a one-row flash tile per decode reads 2.8
  // (test/gpu/flash-kernel.cu, 64 decodes at contexts 512..767). NODESPEED_CUDA_FLASH_DECODE_MIN=N
  // still sends the short sequences through flash tiles when they make >= N (tile, head) blocks.
  bool use_flash_ = true;
  int flash_decode_min_ = std::numeric_limits<int>::max();
  int max_attn_splits_ = 16;  // NODESPEED_CUDA_ATTN_SPLITS_MAX (1..16): for A/B runs of the batch-1 attention
  bool flash_seq(const StepPlan& p, int n_tokens) const;  // does a sequence take flash tiles
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  const CublasApi* api_ = nullptr;
  std::shared_ptr<Communicator> comm_;

  std::vector<LayerWeights> layers_;
  bool family_ = false;
  int rope_half_ = 0, local_half_ = 0;
  std::vector<float> inv_fixed_, local_inv_fixed_;   // step-independent RoPE types
  DeviceBuffer rope_dev_, router_dev_, route_dev_;   // per step: cos/sin tables; router logits; routing (moe_plan.h)
  PinnedBuffer rope_host_;
  moe::Layout route_layout_{};
  DeviceBuffer ex_gu_, ex_act_, ex_out_, sh_gu_, sh_act_, sh_out_;
  // Quantized experts, tensor-core path: a few active slots' matrices dequantized (moe_dequant_active).
  DeviceBuffer ex_deq_;
  int ex_deq_slots_ = 0;
  int family_cap_ = 0;
  DeviceBuffer embed_, lm_head_, lm_head_s_, final_norm_, inv_freq_, staging_;
  std::set<std::string> expected_, loaded_;

  DeviceBuffer kv_pool_;
  std::vector<void*> kcache_, vcache_;
  int kv_blocks_ = 0;
  int kv_window_blocks_ = 0;  // kv_window_group: the windowed layers' pool (kcache_ of those layers)
  bool finalized_ = false;

  // Step scratch, sized for `cap_tokens_` tokens (grown on demand).
  int cap_tokens_ = 0;
  DeviceBuffer residual_, tmp_, xb_, qkv_, attn_, gu_, act_mlp_, attn_ws_;
  DeviceBuffer logits_, logits_local_, logits_gather_, ids_, meta_;
  PinnedBuffer meta_host_, ids_host_;
  // Logit-bias and penalty lists of the step's sampled rows (SampleRow offsets point here; the
  // metadata holds this buffer's address, so it can move without invalidating captured graphs).
  DeviceBuffer extras_;
  PinnedBuffer extras_host_;
  size_t extras_words_ = 0;
  std::vector<int32_t> extras_build_;
  PenaltyHistories penalties_;
  // Decode CUDA graphs per batch bucket (cuda_graph.cu). Captured kernels hold buffer addresses, so
  // any reallocation of scratch (epoch_ bump) invalidates them.
  bool use_graphs_ = true;
  // Largest decode batch that runs as a graph: NODESPEED_CUDA_GRAPH_MAX (default 256, the warm-up's
  // rows); 4 where cuBLAS cannot be given a workspace (graphs of <= 4 rows have no cuBLAS call).
  int graph_max_ = 256;
  DeviceBuffer blas_ws_;  // cuBLAS's workspace (cublasSetWorkspace), so its GEMMs can be captured
  int max_blocks_per_seq_ = 0;
  uint64_t epoch_ = 1;
  std::map<int, DecodeGraph> graphs_;
};

}  // namespace ns::cuda
