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
  require(c.hidden > 0 && c.intermediate > 0 && c.n_heads > 0 && c.n_kv_heads > 0 && c.head_dim > 0,
          "hidden, intermediate, nHeads, nKvHeads and headDim must be positive");
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

  const int64_t H = c.hidden, D = c.head_dim;
  const int64_t q_rows = int64_t(c.n_heads) * D, kv_rows = int64_t(c.n_kv_heads) * D;
  if (c.has_embedding || (c.has_head && c.tied_embeddings)) expect("model.embed_tokens.weight", {vocab_shard_, H});
  for (int l = c.layer_start; l < c.layer_end; ++l) {
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
    expect_matrix(p + "self_attn.o_proj.weight", H, q_rows, c.weights);
    expect(p + "post_attention_layernorm.weight", {H});
    expect_matrix(p + "mlp.gate_proj.weight", c.intermediate, H, c.weights);
    expect_matrix(p + "mlp.up_proj.weight", c.intermediate, H, c.weights);
    expect_matrix(p + "mlp.down_proj.weight", H, c.intermediate, c.weights);
  }
  if (c.has_head) {
    expect("model.norm.weight", {H});
    if (!c.tied_embeddings) expect_matrix("lm_head.weight", vocab_shard_, H, c.head_weights);
  }
  layers_.resize(n_layers_);
  inv_freq_ = rope_inv_freq(c.rope, c.head_dim);
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
  if (rest == "mlp.gate_proj.weight") return &L.gate;
  if (rest == "mlp.up_proj.weight") return &L.up;
  if (rest == "mlp.down_proj.weight") return &L.down;
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
  // per-row scales of their X.weight_scale).
  auto vec = [&](std::vector<float>& dst) {
    if (!is_float(dtype)) throw std::invalid_argument("tensor " + name + ": dtype " + dtype_name(dtype) + " (expected f32, bf16 or f16)");
    dst.resize(count);
    to_f32(data, dtype, dst.data(), count);
  };
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
    m->dtype = dtype;
    m->rows = static_cast<int>(shape[0]);
    m->cols = static_cast<int>(shape[1]);
    m->data.assign(static_cast<const uint8_t*>(data), static_cast<const uint8_t*>(data) + bytes);
  } else if (name == "model.norm.weight") {
    vec(final_norm_);
  } else {
    // model.layers.<l>.<rest>
    const size_t dot = name.find('.', 13);
    Layer& L = layers_[std::stoi(name.substr(13, dot - 13)) - cfg_.layer_start];
    const std::string rest = name.substr(dot + 1);
    if (rest == "input_layernorm.weight") vec(L.in_norm);
    else if (rest == "post_attention_layernorm.weight") vec(L.post_norm);
    else if (rest == "self_attn.q_proj.bias") vec(L.q_bias);
    else if (rest == "self_attn.k_proj.bias") vec(L.k_bias);
    else if (rest == "self_attn.v_proj.bias") vec(L.v_bias);
  }
  loaded_.insert(name);
}

int CpuBackend::finalize() {
  if (finalized_) return kv_blocks_;
  for (const auto& e : expected_)
    if (!loaded_.count(e.first)) throw std::runtime_error("tensor " + e.first + ": missing (never loaded)");

  macs_per_token_ = cfg_.has_head ? int64_t(lm_head().rows) * lm_head().cols : 0;
  for (const auto& L : layers_)
    for (const Matrix* m : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) macs_per_token_ += int64_t(m->rows) * m->cols;

  const size_t block_floats = size_t(cfg_.kv_block_size) * cfg_.n_kv_heads * cfg_.head_dim;
  kv_blocks_ = cfg_.kv_blocks;
  if (kv_blocks_ == 0) {
    // Room for 8 sequences of min(max_position, 4096) tokens, at most 2 GiB of K+V.
    const int per_seq = (std::min(cfg_.max_position, 4096) + cfg_.kv_block_size - 1) / cfg_.kv_block_size;
    const size_t bytes_per_block = std::max<size_t>(1, block_floats * 4 * 2 * std::max(1, n_layers_));
    const size_t cap = (size_t(2) << 30) / bytes_per_block;
    kv_blocks_ = static_cast<int>(std::max<size_t>(per_seq, std::min<size_t>(size_t(8) * per_seq, cap)));
  }
  k_cache_.assign(n_layers_, std::vector<float>());
  v_cache_.assign(n_layers_, std::vector<float>());
  for (int l = 0; l < n_layers_; ++l) {
    k_cache_[l].assign(block_floats * kv_blocks_, 0.f);
    v_cache_[l].assign(block_floats * kv_blocks_, 0.f);
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
  for (const auto& L : layers_)
    for (const Matrix* m : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) weight_bytes += m->data.size();
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
  o << ", kv " << kv_blocks_ << " blocks x " << cfg_.kv_block_size << " tokens (" << kv_bytes / (1 << 20) << " MiB)";
  return o.str();
}

}  // namespace ns::cpu

namespace ns {
std::unique_ptr<Backend> make_cpu_backend(const ShardConfig& cfg) { return std::make_unique<cpu::CpuBackend>(cfg); }
}  // namespace ns
