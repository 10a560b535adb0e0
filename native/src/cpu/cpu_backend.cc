// CpuBackend: shard bookkeeping, tensor loading (with shape checks naming the tensor), KV cache
// allocation. The forward pass is in cpu_forward.cc.
#include "cpu/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>
#include <stdexcept>

#include "cpu/cpu_info.h"
#include "cpu/kernels.h"
#include "cpu/rope.h"

namespace ns::cpu {

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << "]";
  return o.str();
}

bool is_float(DType d) { return d == DType::F32 || d == DType::BF16 || d == DType::F16; }

const char* format_name(WeightFormat f) { return f == WeightFormat::Int8 ? "int8" : f == WeightFormat::Fp8 ? "fp8" : "native"; }

// "X.weight_scale" -> "X.weight"; "" for other names.
std::string scaled_weight(const std::string& name) {
  static const std::string suffix = ".weight_scale";
  if (name.size() <= suffix.size() || name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) return "";
  return name.substr(0, name.size() - suffix.size()) + ".weight";
}

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("cpu backend: " + what);
}

}  // namespace

CpuBackend::CpuBackend(const ShardConfig& c)
    : cfg_(c),
      n_layers_(c.layer_end - c.layer_start),
      vocab_shard_(c.vocab_end - c.vocab_start),
      vocab_stride_(c.tp_size > 0 ? (c.vocab_size + c.tp_size - 1) / c.tp_size : 0),
      pool_(c.threads > 0 ? c.threads : default_threads()) {
  require(c.hidden > 0 && c.intermediate >= 0 && c.n_heads > 0 && c.n_kv_heads > 0 && c.head_dim > 0,
          "hidden, nHeads, nKvHeads and headDim must be positive");
  require(c.head_dim % 2 == 0, "headDim must be even (RoPE)");
  require(c.n_heads % c.n_kv_heads == 0, "nHeads must be a multiple of nKvHeads");
  require(c.vocab_size > 0, "vocabSize must be positive");
  require(c.tp_size >= 1 && c.tp_rank >= 0 && c.tp_rank < c.tp_size, "tpRank must be in [0, tpSize)");
  require(c.layer_start >= 0 && c.layer_end >= c.layer_start, "layerStart..layerEnd is not a valid range");
  require(c.max_position > 0, "maxPosition must be positive");
  require(c.kv_block_size > 0, "kvBlockSize must be positive");
  require(c.kv_blocks >= 0, "kvBlocks must be >= 0");
  require(c.compute == DType::F32, "the CPU backend computes in f32 (compute must be 'f32')");
  require(c.weights != WeightFormat::Fp8 && c.head_weights != WeightFormat::Fp8,
          "fp8 weights need a GPU with FP8 tensor cores (CUDA compute capability 8.9 or newer); on CPU use int8");
  require(!c.kv_fp8, "the fp8 KV cache is a CUDA feature (the CPU backend keeps K/V in f32)");
  require(!c.static_input_scales, "static input scales are for fp8 activations, which the CPU backend does not run");
  require(!(c.tied_embeddings && c.head_weights != WeightFormat::Native),
          "a quantized LM head arrives as lm_head.weight (tiedEmbeddings must be false)");
  if (c.has_embedding || c.has_head) {
    // Vocab-parallel slots are ceil(vocab / tp) rows each, rank r's starting at r * that.
    require(c.vocab_start == std::min(c.vocab_size, c.tp_rank * vocab_stride_) &&
                c.vocab_end == std::min(c.vocab_size, (c.tp_rank + 1) * vocab_stride_),
            "vocab shard [" + std::to_string(c.vocab_start) + ", " + std::to_string(c.vocab_end) +
                ") is not rank " + std::to_string(c.tp_rank) + "'s slot of ceil(vocab / tp) rows");
  }

  require(c.sliding_layers.size() == size_t(n_layers_) && c.sparse_layers.size() == size_t(n_layers_),
          "slidingLayers and sparseLayers need one entry per layer");
  require(c.attn_scale >= 0 && c.attn_softcap >= 0 && c.final_softcap >= 0, "attnScale and the soft-caps must be >= 0");

  const int64_t H = c.hidden, D = c.head_dim, I = c.intermediate;
  const int64_t q_rows = int64_t(c.n_heads) * D, kv_rows = int64_t(c.n_kv_heads) * D;
  if (c.has_embedding || (c.has_head && c.tied_embeddings)) expect("model.embed_tokens.weight", {vocab_shard_, H});
  auto expect_mlp = [&](const std::string& p, int64_t inter, bool bias) {
    expect_matrix(p + "gate_proj.weight", inter, H, c.weights);
    expect_matrix(p + "up_proj.weight", inter, H, c.weights);
    expect_matrix(p + "down_proj.weight", H, inter, c.weights);
    if (bias) {
      expect(p + "gate_proj.bias", {inter});
      expect(p + "up_proj.bias", {inter});
      expect(p + "down_proj.bias", {H});
    }
  };
  layers_.resize(n_layers_);
  for (int l = c.layer_start; l < c.layer_end; ++l) {
    Layer& L = layers_[l - c.layer_start];
    L.sliding = c.sliding_window > 0 && c.sliding_layers[l - c.layer_start];
    L.window_pool = L.sliding && c.kv_window_group;
    L.sparse = c.num_experts > 0 && c.sparse_layers[l - c.layer_start];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    expect(p + "input_layernorm.weight", {H});
    expect_matrix(p + "self_attn.q_proj.weight", q_rows, H, c.weights);
    expect_matrix(p + "self_attn.k_proj.weight", kv_rows, H, c.weights);
    expect_matrix(p + "self_attn.v_proj.weight", kv_rows, H, c.weights);
    if (c.qkv_bias) {
      expect(p + "self_attn.q_proj.bias", {q_rows});
      expect(p + "self_attn.k_proj.bias", {kv_rows});
      expect(p + "self_attn.v_proj.bias", {kv_rows});
    }
    if (c.qk_norm) {
      expect(p + "self_attn.q_norm.weight", {D});
      expect(p + "self_attn.k_norm.weight", {D});
    }
    expect_matrix(p + "self_attn.o_proj.weight", H, q_rows, c.weights);
    if (c.o_bias) expect(p + "self_attn.o_proj.bias", {H});
    expect(p + "post_attention_layernorm.weight", {H});
    if (c.sandwich_norms) {
      expect(p + "pre_feedforward_layernorm.weight", {H});
      expect(p + "post_feedforward_layernorm.weight", {H});
    }
    if (L.sparse) {
      expect(p + "mlp.gate.weight", {c.num_experts, H});
      L.experts.resize(c.expert_end - c.expert_start);
      for (int e = c.expert_start; e < c.expert_end; ++e)
        expect_mlp(p + "mlp.experts." + std::to_string(e) + ".", c.moe_intermediate, false);
      if (c.shared_intermediate > 0) {
        expect_mlp(p + "mlp.shared_expert.", c.shared_intermediate, false);
        expect(p + "mlp.shared_expert_gate.weight", {1, H});
      }
    } else {
      require(I > 0, "intermediate must be positive for a dense layer");
      expect_mlp(p + "mlp.", I, c.mlp_bias);
    }
  }
  if (c.has_head) {
    expect("model.norm.weight", {H});
    if (!c.tied_embeddings) expect_matrix("lm_head.weight", vocab_shard_, H, c.head_weights);
  }
  if (!rope_depends_on_length(c.rope)) inv_freq_ = rope_inv_freq(c.rope, c.head_dim);
  if (c.has_rope_local && !rope_depends_on_length(c.rope_local)) local_inv_freq_ = rope_inv_freq(c.rope_local, c.head_dim);
}

void CpuBackend::expect(const std::string& name, std::vector<int64_t> shape) {
  expected_.emplace_back(name, std::move(shape));
}

void CpuBackend::expect_matrix(const std::string& name, int64_t rows, int64_t cols, WeightFormat fmt) {
  expect(name, {rows, cols});
  if (fmt != WeightFormat::Native) expect(name + "_scale", {rows});
}

Matrix* CpuBackend::matrix_of(const std::string& name, WeightFormat* fmt) {
  const std::string w = scaled_weight(name);
  const std::string& n = w.empty() ? name : w;
  *fmt = cfg_.weights;
  if (n == "model.embed_tokens.weight") { *fmt = WeightFormat::Native; return &embed_; }
  if (n == "lm_head.weight") { *fmt = cfg_.head_weights; return &lm_head_; }
  if (n.rfind("model.layers.", 0) != 0) return nullptr;
  const size_t dot = n.find('.', 13);
  Layer& L = layers_[std::stoi(n.substr(13, dot - 13)) - cfg_.layer_start];
  const std::string rest = n.substr(dot + 1);
  if (rest == "self_attn.q_proj.weight") return &L.q;
  if (rest == "self_attn.k_proj.weight") return &L.k;
  if (rest == "self_attn.v_proj.weight") return &L.v;
  if (rest == "self_attn.o_proj.weight") return &L.o;
  // The gated MLPs: a dense layer's (mlp.), the shared expert's, this rank's routed experts'.
  Mlp* m = nullptr;
  std::string part;
  if (rest.rfind("mlp.shared_expert.", 0) == 0) {
    m = &L.shared;
    part = rest.substr(18);
  } else if (rest.rfind("mlp.experts.", 0) == 0) {
    const size_t d2 = rest.find('.', 12);
    const int e = std::stoi(rest.substr(12, d2 - 12)) - cfg_.expert_start;
    if (d2 == std::string::npos || e < 0 || e >= static_cast<int>(L.experts.size())) return nullptr;
    m = &L.experts[e];
    part = rest.substr(d2 + 1);
  } else if (rest.rfind("mlp.", 0) == 0) {
    m = &L.mlp;
    part = rest.substr(4);
  }
  if (!m) return nullptr;
  if (part == "gate_proj.weight") return &m->gate;
  if (part == "up_proj.weight") return &m->up;
  if (part == "down_proj.weight") return &m->down;
  return nullptr;
}

void CpuBackend::load_tensor(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                             const void* data, size_t bytes) {
  if (finalized_) throw std::runtime_error("tensor " + name + ": the engine is already finalized");
  auto it = std::find_if(expected_.begin(), expected_.end(), [&](const auto& e) { return e.first == name; });
  if (it == expected_.end())
    throw std::invalid_argument("tensor " + name + ": not part of this shard (layers " + std::to_string(cfg_.layer_start) +
                                ".." + std::to_string(cfg_.layer_end - 1) + ")");
  if (shape != it->second)
    throw std::invalid_argument("tensor " + name + ": shape " + shape_str(shape) + ", expected " + shape_str(it->second));
  size_t count = 1;
  for (int64_t d : shape) count *= static_cast<size_t>(d);
  if (bytes != count * dtype_size(dtype))
    throw std::invalid_argument("tensor " + name + ": " + std::to_string(bytes) + " bytes for " + std::to_string(count) +
                                " " + dtype_name(dtype) + " elements");

  // Vectors (norms, biases, scales) become f32; matrices keep the stored dtype (int8: with the
  // per-row scales of their X.weight_scale). Norm weights are kept as the factor they multiply by:
  // 1 + w for Gemma's norms (in f32, as transformers computes it).
  auto vec = [&](std::vector<float>& dst) {
    if (!is_float(dtype)) throw std::invalid_argument("tensor " + name + ": dtype " + dtype_name(dtype) + " (expected f32, bf16 or f16)");
    dst.resize(count);
    to_f32(data, dtype, dst.data(), count);
  };
  auto norm = [&](std::vector<float>& dst) {
    vec(dst);
    if (cfg_.norm_plus_one)
      for (float& w : dst) w = 1.0f + w;
  };
  auto mat = [&](Matrix& dst) {
    dst.dtype = dtype;
    dst.rows = static_cast<int>(shape[0]);
    dst.cols = static_cast<int>(shape[1]);
    dst.data.assign(static_cast<const uint8_t*>(data), static_cast<const uint8_t*>(data) + bytes);
  };
  auto bias = [&](Mlp& m, const std::string& part) {
    if (part == "gate_proj.bias") vec(m.gate_bias);
    else if (part == "up_proj.bias") vec(m.up_bias);
    else if (part == "down_proj.bias") vec(m.down_bias);
  };
  auto starts = [](const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; };

  WeightFormat fmt = WeightFormat::Native;
  Matrix* m = matrix_of(name, &fmt);
  if (m && !scaled_weight(name).empty()) {
    vec(m->scales);
    for (float v : m->scales)
      if (!std::isfinite(v)) throw std::invalid_argument("tensor " + name + ": holds a non-finite scale");
  } else if (m) {
    const DType want = fmt == WeightFormat::Int8 ? DType::I8 : fmt == WeightFormat::Fp8 ? DType::F8E4M3 : dtype;
    if (dtype != want || (fmt == WeightFormat::Native && !is_float(dtype)))
      throw std::invalid_argument("tensor " + name + ": dtype " + dtype_name(dtype) + ", expected " +
                                  (fmt == WeightFormat::Native ? "f32, bf16 or f16" : std::string(dtype_name(want)) + " (" +
                                   format_name(fmt) + " weights)"));
    mat(*m);
  } else if (name == "model.norm.weight") {
    norm(final_norm_);
  } else {
    // model.layers.<l>.<rest>
    const size_t dot = name.find('.', 13);
    Layer& L = layers_[std::stoi(name.substr(13, dot - 13)) - cfg_.layer_start];
    const std::string rest = name.substr(dot + 1);
    if (rest == "input_layernorm.weight") norm(L.in_norm);
    else if (rest == "post_attention_layernorm.weight") norm(L.post_norm);
    else if (rest == "pre_feedforward_layernorm.weight") norm(L.pre_ff_norm);
    else if (rest == "post_feedforward_layernorm.weight") norm(L.post_ff_norm);
    else if (rest == "self_attn.q_norm.weight") norm(L.q_norm);
    else if (rest == "self_attn.k_norm.weight") norm(L.k_norm);
    else if (rest == "self_attn.q_proj.bias") vec(L.q_bias);
    else if (rest == "self_attn.k_proj.bias") vec(L.k_bias);
    else if (rest == "self_attn.v_proj.bias") vec(L.v_bias);
    else if (rest == "self_attn.o_proj.bias") vec(L.o_bias);
    else if (rest == "mlp.gate.weight") mat(L.router);
    else if (rest == "mlp.shared_expert_gate.weight") mat(L.shared_gate);
    else if (starts(rest, "mlp.shared_expert.")) bias(L.shared, rest.substr(18));
    else if (starts(rest, "mlp.experts.")) {
      const size_t d2 = rest.find('.', 12);
      bias(L.experts[std::stoi(rest.substr(12, d2 - 12)) - cfg_.expert_start], rest.substr(d2 + 1));
    } else if (starts(rest, "mlp.")) bias(L.mlp, rest.substr(4));
  }
  loaded_.insert(name);
}

int CpuBackend::finalize() {
  if (finalized_) return kv_blocks_;
  for (const auto& e : expected_)
    if (!loaded_.count(e.first)) throw std::runtime_error("tensor " + e.first + ": missing (never loaded)");

  // A token's matmul work: attention and the dense or shared MLP, plus top_k experts' worth (spread
  // over the TP ranks, so top_k / tp of them here on average) and the router.
  macs_per_token_ = cfg_.has_head ? int64_t(lm_head().rows) * lm_head().cols : 0;
  for (const auto& L : layers_) {
    for (const Matrix* m : {&L.q, &L.k, &L.v, &L.o, &L.mlp.gate, &L.mlp.up, &L.mlp.down, &L.router, &L.shared.gate,
                            &L.shared.up, &L.shared.down})
      macs_per_token_ += int64_t(m->rows) * m->cols;
    if (!L.experts.empty())
      macs_per_token_ += int64_t(3) * cfg_.moe_intermediate * cfg_.hidden * std::max(1, cfg_.top_k / cfg_.tp_size);
  }

  const size_t block_floats = size_t(cfg_.kv_block_size) * cfg_.n_kv_heads * cfg_.head_dim;
  kv_blocks_ = cfg_.kv_blocks;
  if (kv_blocks_ == 0) {
    // Room for 8 sequences of min(max_position, 4096) tokens, at most 2 GiB of K+V.
    const int per_seq = (std::min(cfg_.max_position, 4096) + cfg_.kv_block_size - 1) / cfg_.kv_block_size;
    const size_t bytes_per_block = std::max<size_t>(1, block_floats * 4 * 2 * std::max(1, n_layers_));
    const size_t cap = (size_t(2) << 30) / bytes_per_block;
    kv_blocks_ = static_cast<int>(std::max<size_t>(per_seq, std::min<size_t>(size_t(8) * per_seq, cap)));
  }
  kv_window_blocks_ = kv_window_pool_blocks(cfg_, kv_blocks_);
  k_cache_.assign(n_layers_, std::vector<float>());
  v_cache_.assign(n_layers_, std::vector<float>());
  for (int l = 0; l < n_layers_; ++l) {
    const size_t blocks = layers_[l].window_pool ? kv_window_blocks_ : kv_blocks_;
    k_cache_[l].assign(block_floats * blocks, 0.f);
    v_cache_[l].assign(block_floats * blocks, 0.f);
  }
  s_.scores.assign(size_t(pool_.size()) * cfg_.max_position * (cfg_.n_heads / cfg_.n_kv_heads), 0.f);
  finalized_ = true;
  return kv_blocks_;
}

void CpuBackend::set_tp_comm(std::shared_ptr<Communicator> comm) {
  if (comm && (comm->size() != cfg_.tp_size || comm->rank() != cfg_.tp_rank))
    throw std::invalid_argument("setTpComm: communicator is rank " + std::to_string(comm->rank()) + " of " +
                                std::to_string(comm->size()) + ", the shard is TP rank " + std::to_string(cfg_.tp_rank) +
                                " of " + std::to_string(cfg_.tp_size));
  comm_ = std::move(comm);
}

const Matrix& CpuBackend::lm_head() const { return cfg_.tied_embeddings && lm_head_.data.empty() ? embed_ : lm_head_; }

std::string CpuBackend::describe() const {
  size_t weight_bytes = embed_.data.size() + lm_head_.data.size();
  for (const auto& L : layers_) {
    for (const Matrix* m : {&L.q, &L.k, &L.v, &L.o, &L.mlp.gate, &L.mlp.up, &L.mlp.down, &L.router, &L.shared.gate,
                            &L.shared.up, &L.shared.down, &L.shared_gate})
      weight_bytes += m->data.size();
    for (const Mlp& e : L.experts) weight_bytes += e.gate.data.size() + e.up.data.size() + e.down.data.size();
  }
  size_t kv_bytes = 0;
  for (int l = 0; l < n_layers_; ++l) kv_bytes += (k_cache_[l].size() + v_cache_[l].size()) * 4;
  std::ostringstream o;
  o << "cpu (" << simd_name() << ", " << pool_.size() << " threads): layers " << cfg_.layer_start << ".."
    << cfg_.layer_end - 1 << ", tp " << cfg_.tp_rank << "/" << cfg_.tp_size << ", weights "
    << weight_bytes / (1 << 20) << " MiB";
  if (cfg_.weights != WeightFormat::Native) o << " (" << format_name(cfg_.weights) << " W8A16";
  if (cfg_.has_head && cfg_.head_weights != cfg_.weights)
    o << (cfg_.weights != WeightFormat::Native ? ", " : " (") << "LM head " << format_name(cfg_.head_weights);
  if (cfg_.weights != WeightFormat::Native || (cfg_.has_head && cfg_.head_weights != cfg_.weights)) o << ")";
  if (cfg_.num_experts > 0)
    o << ", experts " << cfg_.expert_start << ".." << cfg_.expert_end - 1 << " of " << cfg_.num_experts;
  if (cfg_.sliding_window > 0) o << ", window " << cfg_.sliding_window;
  o << ", kv " << kv_blocks_ << " blocks";
  if (cfg_.kv_window_group) o << " (+ " << kv_window_blocks_ << " for the windowed layers)";
  o << " x " << cfg_.kv_block_size << " tokens (" << kv_bytes / (1 << 20) << " MiB)";
  return o.str();
}

}  // namespace ns::cpu

namespace ns {
std::unique_ptr<Backend> make_cpu_backend(const ShardConfig& cfg) { return std::make_unique<cpu::CpuBackend>(cfg); }
}  // namespace ns
