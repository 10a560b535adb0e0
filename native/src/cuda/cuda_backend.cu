// CudaBackend: construction, weight upload (slice by slice, converted on the GPU), KV-cache
// sizing, and the matrix-product helpers. The forward step is in cuda_step.cu.
#include "cuda/cuda_backend.h"

#include <cstdio>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "common/settings.h"
#include "cuda/cuda_common.h"
#include "cpu/rope.h"
#include "common/half.h"
#include "cuda/kernels.h"

namespace ns::cuda {

bool DeviceBuffer::reserve(size_t need) {
  if (need <= bytes) return false;
  if (ptr) NS_CUDA(cudaFree(ptr));
  ptr = nullptr;
  bytes = 0;
  const cudaError_t e = cudaMalloc(&ptr, need);
  if (e != cudaSuccess) {
    cudaGetLastError();
    ptr = nullptr;
    throw std::runtime_error("cuda: out of device memory allocating " + std::to_string(need >> 20) + " MiB (" +
                             cudaGetErrorString(e) + ")");
  }
  bytes = need;
  return true;
}
void DeviceBuffer::release() {
  if (ptr) cudaFree(ptr);
  ptr = nullptr;
  bytes = 0;
}
DeviceBuffer::~DeviceBuffer() { release(); }

void PinnedBuffer::reserve(size_t need) {
  if (need <= bytes) return;
  if (ptr) NS_CUDA(cudaFreeHost(ptr));
  ptr = nullptr;
  bytes = 0;
  NS_CUDA(cudaMallocHost(&ptr, need));
  bytes = need;
}
PinnedBuffer::~PinnedBuffer() { if (ptr) cudaFreeHost(ptr); }

// Programmatic dependent launch needs sm_90. It took the batch-1 decode step from 4.47-4.52 to
// 4.40-4.46 ms on an H200 (bench/results/decode-ab-h200.json), so it is on wherever it exists.
bool pdl_enabled() {
  static const bool on = [] {
    int dev = 0, major = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    return major >= 9;
  }();
  return on;
}

namespace {

std::vector<float> rope_inv_freq(const ShardConfig& c) {
  const int half = c.head_dim / 2;
  std::vector<float> f(half);
  for (int j = 0; j < half; ++j)  // float32 like HF: 1 / theta^(2j / d)
    f[j] = 1.0f / std::pow(c.rope.theta, static_cast<float>(2 * j) / static_cast<float>(c.head_dim));
  if (c.rope.type == RopeType::Linear) {
    for (auto& v : f) v /= c.rope.factor;
  } else if (c.rope.type == RopeType::Llama3) {  // transformers' _compute_llama3_parameters
    const float old_len = static_cast<float>(c.rope.original_max_pos);
    const float low_wl = old_len / c.rope.low_freq_factor, high_wl = old_len / c.rope.high_freq_factor;
    for (auto& v : f) {
      const float wl = 2.f * static_cast<float>(M_PI) / v;
      float scaled = wl > low_wl ? v / c.rope.factor : v;
      if (!(wl < high_wl) && !(wl > low_wl)) {
        const float smooth = (old_len / wl - c.rope.low_freq_factor) / (c.rope.high_freq_factor - c.rope.low_freq_factor);
        scaled = (1.f - smooth) * scaled / c.rope.factor + smooth * scaled;
      }
      v = scaled;
    }
  }
  return f;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

size_t numel(const std::vector<int64_t>& s) {
  size_t n = 1;
  for (auto d : s) n *= static_cast<size_t>(d);
  return n;
}

}  // namespace

CudaBackend::CudaBackend(const ShardConfig& cfg) : cfg_(cfg), act_(cfg.compute) {
  if (act_ != DType::BF16 && act_ != DType::F16) act_ = DType::BF16;  // the CPU default F32 means "unset" here
  cfg_.compute = act_;
  const auto& c = cfg_;
  if (c.hidden <= 0 || c.n_heads <= 0 || c.n_kv_heads <= 0 || c.head_dim <= 0 || c.intermediate < 0 ||
      (c.intermediate == 0 && c.num_experts == 0))
    throw std::runtime_error("cuda: ShardConfig has a zero size (hidden/heads/head_dim/intermediate)");
  if (c.n_heads % c.n_kv_heads != 0) throw std::runtime_error("cuda: n_heads must be a multiple of n_kv_heads");
  if (c.head_dim % 2 != 0 || c.head_dim > 256) throw std::runtime_error("cuda: head_dim must be even and <= 256");
  if (c.kv_block_size <= 0) throw std::runtime_error("cuda: kv_block_size must be > 0");
  // The expert kernels (moe.cu) move rows in 16-byte chunks.
  if (c.num_experts > 0 && (c.hidden % 8 != 0 || c.moe_intermediate % 8 != 0 || c.shared_intermediate % 8 != 0))
    throw std::runtime_error("cuda: mixture of experts needs hidden, moe_intermediate and the shared expert's intermediate size "
                             "to be multiples of 8 (got " + std::to_string(c.hidden) + ", " + std::to_string(c.moe_intermediate) +
                             ", " + std::to_string(c.shared_intermediate) + ")");
  // Any family switch on: the family forward (enqueue_family_forward) with its plain kernels.
  {
    const bool any_sliding = c.sliding_window > 0 && std::any_of(c.sliding_layers.begin(), c.sliding_layers.end(), [](uint8_t x) { return x != 0; });
    const auto plain_rope = [&](const RopeConfig& r) {
      return (r.type == RopeType::Default || r.type == RopeType::Linear || r.type == RopeType::Llama3) &&
             (r.rotary_dim == 0 || r.rotary_dim == c.head_dim) && r.attention_factor == 1.f;
    };
    family_ = c.o_bias || c.mlp_bias || c.qk_norm || c.norm_plus_one || c.sandwich_norms || c.act != Activation::Silu ||
              c.embed_scale != 1.f || (c.attn_scale > 0 && std::fabs(c.attn_scale * std::sqrt((float)c.head_dim) - 1.f) > 1e-6f) ||
              c.attn_softcap > 0 || c.final_softcap > 0 || any_sliding || c.has_rope_local || !plain_rope(c.rope) ||
              c.num_experts > 0;
  }
  n_layers_ = c.layer_end - c.layer_start;
  qkv_rows_ = (c.n_heads + 2 * c.n_kv_heads) * c.head_dim;
  vocab_shard_ = c.vocab_end - c.vocab_start;
  vocab_stride_ = (c.vocab_size + c.tp_size - 1) / c.tp_size;
  if (c.tp_size > 1 && (c.vocab_start != std::min(c.vocab_size, c.tp_rank * vocab_stride_) || vocab_shard_ > vocab_stride_))
    throw std::runtime_error("cuda: vocab rows [" + std::to_string(c.vocab_start) + ", " + std::to_string(c.vocab_end) +
                             ") of tp rank " + std::to_string(c.tp_rank) + " are not slot " + std::to_string(c.tp_rank) +
                             " of ceil(vocab / tp) = " + std::to_string(vocab_stride_) + " rows");
  const Settings set = settings();  // the registry's switches (src/settings/index.ts, `nodespeed env`)
  use_gemv_ = set.cuda_gemv;
  use_graphs_ = set.cuda_graphs;
  graph_max_ = std::clamp(set.cuda_graph_max, 1, 256);
  use_flash_ = set.cuda_flash && flash_attention_supported(c.head_dim);
  warm_gemms_ = set.cuda_warmup;
  if (set.cuda_flash_decode_min > 0) flash_decode_min_ = set.cuda_flash_decode_min;
  max_attn_splits_ = std::clamp(set.cuda_attn_splits_max, 1, 16);
  if (family_) {  // the family forward runs its own kernels; its decode graphs are captured on first use
    use_flash_ = warm_gemms_ = false;
  }

  NS_CUDA(cudaSetDevice(c.device_index));
  cudaDeviceProp prop{};
  NS_CUDA(cudaGetDeviceProperties(&prop, c.device_index));
  sm_count_ = prop.multiProcessorCount;
  device_name_ = prop.name;
  auto storage = [&](WeightFormat f) { return f == WeightFormat::Int8 ? DType::I8 : f == WeightFormat::Fp8 ? DType::F8E4M3 : act_; };
  wdt_ = storage(c.weights);
  hdt_ = storage(c.head_weights);
  kv_fp8_ = c.kv_fp8;
  // E4M3 tensor-core GEMMs (W8A8) and the E4M3 KV cache need sm_89+; FP8 weight-only checkpoints
  // decode E4M3 in software (quant.h) and run anywhere.
  const bool fp8 = (wdt_ == DType::F8E4M3 || hdt_ == DType::F8E4M3) && c.fp8_activations;
  if ((fp8 || kv_fp8_) && prop.major * 10 + prop.minor < 89)
    throw std::runtime_error(std::string("cuda: ") + (fp8 ? "fp8 weights" : "the fp8 KV cache") + " need FP8 tensor cores (compute capability 8.9 or newer); " +
                             "GPU " + std::to_string(c.device_index) + " (" + prop.name + ") is " + std::to_string(prop.major) + "." + std::to_string(prop.minor));
  if ((wdt_ != act_ || hdt_ != act_) &&
      (c.hidden % 16 != 0 || c.intermediate % 16 != 0 || (c.n_heads * c.head_dim) % 16 != 0 || qkv_rows_ % 16 != 0))
    throw std::runtime_error("cuda: quantized weights need hidden, intermediate (per rank), heads x head_dim (per rank) and the q|k|v rows "
                             "to be multiples of 16");
  // An MoE block's quantized matrices are read 16 weights at a time (moe_quant.cu).
  if (wdt_ != act_ && c.num_experts > 0 && (c.moe_intermediate % 16 != 0 || c.shared_intermediate % 16 != 0))
    throw std::runtime_error("cuda: quantized mixture-of-experts weights need moe_intermediate and the shared expert's intermediate size "
                             "(per rank) to be multiples of 16 (got " + std::to_string(c.moe_intermediate) + ", " +
                             std::to_string(c.shared_intermediate) + ")");
  if (c.static_input_scales && wdt_ != DType::F8E4M3) throw std::runtime_error("cuda: static input scales are for fp8 weights");
  if (c.tied_embeddings && hdt_ != act_) throw std::runtime_error("cuda: a quantized LM head arrives as lm_head.weight (tiedEmbeddings must be false)");
  std::string why;
  api_ = cublas_api(&why);
  if (!api_) throw std::runtime_error("cuda: unavailable (" + why + ")");
  NS_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  if (api_->create(&blas_) != CUBLAS_STATUS_SUCCESS) throw std::runtime_error("cuda: cublasCreate failed");
  api_->set_stream(blas_, stream_);
  // 32 MiB: cuBLAS's recommendation for Hopper. Without it, graphs keep to the cuBLAS-free <= 4 rows.
  if (!(api_->set_workspace && blas_ws_.reserve(32u << 20) &&
        api_->set_workspace(blas_, blas_ws_.ptr, blas_ws_.bytes) == CUBLAS_STATUS_SUCCESS))
    graph_max_ = std::min(graph_max_, 4);
  if (set.cuda_lt && !family_) {
    lt_ = LtGemm::create(stream_, &why);
    if (!lt_) std::fprintf(stderr, "nodespeed: cuBLASLt decode GEMMs off (cublasGemmEx for all): %s\n", why.c_str());
  }
  if (fp8) {
    fp8_lt_ = LtGemm::create(stream_, &why);
    if (!fp8_lt_) throw std::runtime_error("cuda: fp8 weights run their GEMMs through cuBLASLt, which could not be loaded: " + why);
    acc_.reserve(64u << 20);  // f32 results of E4M3 GEMMs without cuBLASLt's scaling, a chunk of rows at a time (matmul_fp8)
  }

  const size_t es = dtype_size(act_), ws = dtype_size(wdt_), H = c.hidden;
  const bool quantized = wdt_ != act_;
  layers_.resize(n_layers_);
  for (int l = 0; l < n_layers_; ++l) {
    auto& L = layers_[l];
    L.sliding = c.sliding_window > 0 && c.sliding_layers[l];
    L.window_pool = L.sliding && c.kv_window_group;
    L.sparse = c.num_experts > 0 && c.sparse_layers[l];
    L.qkv.reserve(ws * qkv_rows_ * H);
    if (c.qkv_bias) L.qkv_bias.reserve(es * qkv_rows_);
    L.o.reserve(ws * H * c.n_heads * c.head_dim);
    L.in_norm.reserve(4 * H);
    L.post_norm.reserve(4 * H);
    if (quantized) {
      L.qkv_s.reserve(4 * qkv_rows_);
      L.o_s.reserve(4 * H);
    }
    if (c.static_input_scales) L.in_s.reserve(4 * 4);
    const std::string p = "model.layers." + std::to_string(c.layer_start + l) + ".";
    for (const char* n : {"input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_proj.weight",
                          "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight"})
      expect(p + n);
    // A quantized matrix's per-row scales, and its static fp8 activation scale.
    auto expect_scales = [&](const std::string& m) {
      if (quantized) expect(p + m + "_scale");
      if (c.static_input_scales) expect(p + m.substr(0, m.size() - 6) + "input_scale");
    };
    for (const char* n : {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight"})
      expect_scales(n);
    if (c.o_bias) { L.o_bias.reserve(4 * H); expect(p + "self_attn.o_proj.bias"); }
    if (c.qk_norm) {
      L.q_norm.reserve(4 * c.head_dim);
      L.k_norm.reserve(4 * c.head_dim);
      expect(p + "self_attn.q_norm.weight");
      expect(p + "self_attn.k_norm.weight");
    }
    if (c.sandwich_norms) {
      L.pre_ff_norm.reserve(4 * H);
      L.post_ff_norm.reserve(4 * H);
      expect(p + "pre_feedforward_layernorm.weight");
      expect(p + "post_feedforward_layernorm.weight");
    }
    if (L.sparse) {
      const size_t n = c.expert_end - c.expert_start, I = c.moe_intermediate;
      L.router.reserve(es * (c.num_experts + (c.shared_intermediate > 0)) * H);
      expect(p + "mlp.gate.weight");
      if (n > 0) {
        L.ex_gate_up.reserve(ws * n * 2 * I * H);
        L.ex_down.reserve(ws * n * H * I);
        if (quantized) {
          L.ex_gate_up_s.reserve(4 * n * 2 * I);
          L.ex_down_s.reserve(4 * n * H);
        }
      }
      for (int e = c.expert_start; e < c.expert_end; ++e)
        for (const char* w : {"gate_proj.weight", "up_proj.weight", "down_proj.weight"}) {
          expect(p + "mlp.experts." + std::to_string(e) + "." + w);
          if (quantized) expect(p + "mlp.experts." + std::to_string(e) + "." + w + "_scale");
        }
      if (c.shared_intermediate > 0) {
        L.sh_gate_up.reserve(ws * 2 * c.shared_intermediate * H);
        L.sh_down.reserve(ws * H * c.shared_intermediate);
        if (quantized) {
          L.sh_gate_up_s.reserve(4 * 2 * c.shared_intermediate);
          L.sh_down_s.reserve(4 * H);
        }
        for (const char* w : {"mlp.shared_expert.gate_proj.weight", "mlp.shared_expert.up_proj.weight",
                              "mlp.shared_expert.down_proj.weight", "mlp.shared_expert_gate.weight"})
          expect(p + w);
        if (quantized)
          for (const char* w : {"mlp.shared_expert.gate_proj.weight_scale", "mlp.shared_expert.up_proj.weight_scale",
                                "mlp.shared_expert.down_proj.weight_scale"})
            expect(p + w);
      }
    } else {
      L.gate_up.reserve(ws * 2 * c.intermediate * H);
      L.down.reserve(ws * H * c.intermediate);
      if (quantized) {
        L.gate_up_s.reserve(4 * 2 * c.intermediate);
        L.down_s.reserve(4 * H);
      }
      for (const char* w : {"mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"}) {
        expect(p + w);
        expect_scales(w);
      }
      if (c.mlp_bias) {
        L.gu_bias.reserve(4 * 2 * c.intermediate);
        L.down_bias.reserve(4 * H);
        for (const char* w : {"mlp.gate_proj.bias", "mlp.up_proj.bias", "mlp.down_proj.bias"}) expect(p + w);
      }
    }
    if (c.qkv_bias)
      for (const char* n : {"self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"}) expect(p + n);
  }
  k_scale_.assign(n_layers_, 1.f);
  v_scale_.assign(n_layers_, 1.f);
  in_scale_host_.assign(n_layers_, {0.f, 0.f, 0.f, 0.f});
  if (c.has_embedding || (c.has_head && c.tied_embeddings)) {
    embed_.reserve(es * vocab_shard_ * H);
    expect("model.embed_tokens.weight");
  }
  if (c.has_head) {
    final_norm_.reserve(4 * H);
    expect("model.norm.weight");
    if (!c.tied_embeddings) {
      lm_head_.reserve(dtype_size(hdt_) * vocab_shard_ * H);
      expect("lm_head.weight");
      if (hdt_ != act_) {
        lm_head_s_.reserve(4 * vocab_shard_);
        expect("lm_head.weight_scale");
      }
    }
  }
  const auto f = rope_inv_freq(c);
  inv_freq_.reserve(4 * f.size());
  NS_CUDA(cudaMemcpy(inv_freq_.ptr, f.data(), 4 * f.size(), cudaMemcpyHostToDevice));
  if (family_) {  // cos/sin tables per step (upload_rope_tables) from the CPU backend's frequencies
    rope_half_ = rope_dim(c.rope, c.head_dim) / 2;
    if (!rope_depends_on_length(c.rope)) inv_fixed_ = ns::rope_inv_freq(c.rope, c.head_dim);
    if (c.has_rope_local) {
      local_half_ = rope_dim(c.rope_local, c.head_dim) / 2;
      if (!rope_depends_on_length(c.rope_local)) local_inv_fixed_ = ns::rope_inv_freq(c.rope_local, c.head_dim);
    }
  }
}

CudaBackend::~CudaBackend() {
  cudaSetDevice(cfg_.device_index);
  if (stream_) cudaStreamSynchronize(stream_);
  for (auto& [bucket, g] : graphs_) if (g.exec) cudaGraphExecDestroy(g.exec);
  if (blas_ && api_) api_->destroy(blas_);
  if (stream_) cudaStreamDestroy(stream_);
}

// Where an HF tensor goes: its buffer, storage dtype, expected (per-rank) shape and the element
// offset inside a concatenated buffer (q|k|v rows, gate|up rows).
CudaBackend::Target CudaBackend::target_for(const std::string& name) const {
  const auto& c = cfg_;
  const int64_t H = c.hidden, I = c.intermediate, qd = (int64_t)c.n_heads * c.head_dim,
                kvd = (int64_t)c.n_kv_heads * c.head_dim, Vs = vocab_shard_;
  if (name == "model.embed_tokens.weight" && embed_.ptr) return {embed_.ptr, act_, {Vs, H}, 0};
  if (name == "lm_head.weight" && lm_head_.ptr) return {lm_head_.ptr, hdt_, {Vs, H}, 0};
  if (name == "lm_head.weight_scale" && lm_head_s_.ptr) return {lm_head_s_.ptr, DType::F32, {Vs}, 0};
  if (name == "model.norm.weight" && final_norm_.ptr) return {final_norm_.ptr, DType::F32, {H}, 0};
  const std::string pre = "model.layers.";
  if (name.rfind(pre, 0) == 0) {
    size_t dot = name.find('.', pre.size());
    const int g = std::atoi(name.substr(pre.size(), dot - pre.size()).c_str());
    const int l = g - c.layer_start;
    if (dot != std::string::npos && l >= 0 && l < n_layers_) {
      const std::string rest = name.substr(dot + 1);
      const LayerWeights& L = layers_[l];
      if (rest == "input_layernorm.weight") return {L.in_norm.ptr, DType::F32, {H}, 0};
      if (rest == "post_attention_layernorm.weight") return {L.post_norm.ptr, DType::F32, {H}, 0};
      if (rest == "self_attn.q_proj.weight") return {L.qkv.ptr, wdt_, {qd, H}, 0};
      if (rest == "self_attn.k_proj.weight") return {L.qkv.ptr, wdt_, {kvd, H}, (size_t)(qd * H)};
      if (rest == "self_attn.v_proj.weight") return {L.qkv.ptr, wdt_, {kvd, H}, (size_t)((qd + kvd) * H)};
      if (rest == "self_attn.o_proj.weight") return {L.o.ptr, wdt_, {H, qd}, 0};
      if (rest == "mlp.gate_proj.weight" && L.gate_up.ptr) return {L.gate_up.ptr, wdt_, {I, H}, 0};
      if (rest == "mlp.up_proj.weight" && L.gate_up.ptr) return {L.gate_up.ptr, wdt_, {I, H}, (size_t)(I * H)};
      if (rest == "mlp.down_proj.weight" && L.down.ptr) return {L.down.ptr, wdt_, {H, I}, 0};
      if (wdt_ != act_) {  // one f32 scale per row, concatenated like the rows
        if (rest == "self_attn.q_proj.weight_scale") return {L.qkv_s.ptr, DType::F32, {qd}, 0};
        if (rest == "self_attn.k_proj.weight_scale") return {L.qkv_s.ptr, DType::F32, {kvd}, (size_t)qd};
        if (rest == "self_attn.v_proj.weight_scale") return {L.qkv_s.ptr, DType::F32, {kvd}, (size_t)(qd + kvd)};
        if (rest == "self_attn.o_proj.weight_scale") return {L.o_s.ptr, DType::F32, {H}, 0};
        if (rest == "mlp.gate_proj.weight_scale") return {L.gate_up_s.ptr, DType::F32, {I}, 0};
        if (rest == "mlp.up_proj.weight_scale") return {L.gate_up_s.ptr, DType::F32, {I}, (size_t)I};
        if (rest == "mlp.down_proj.weight_scale") return {L.down_s.ptr, DType::F32, {H}, 0};
      }
      const int64_t D = c.head_dim, Ie = c.moe_intermediate, Is = c.shared_intermediate;
      if (rest == "self_attn.o_proj.bias" && L.o_bias.ptr) return {L.o_bias.ptr, DType::F32, {H}, 0};
      if (rest == "self_attn.q_norm.weight" && L.q_norm.ptr) return {L.q_norm.ptr, DType::F32, {D}, 0};
      if (rest == "self_attn.k_norm.weight" && L.k_norm.ptr) return {L.k_norm.ptr, DType::F32, {D}, 0};
      if (rest == "pre_feedforward_layernorm.weight" && L.pre_ff_norm.ptr) return {L.pre_ff_norm.ptr, DType::F32, {H}, 0};
      if (rest == "post_feedforward_layernorm.weight" && L.post_ff_norm.ptr) return {L.post_ff_norm.ptr, DType::F32, {H}, 0};
      if (rest == "mlp.gate_proj.bias" && L.gu_bias.ptr) return {L.gu_bias.ptr, DType::F32, {I}, 0};
      if (rest == "mlp.up_proj.bias" && L.gu_bias.ptr) return {L.gu_bias.ptr, DType::F32, {I}, (size_t)I};
      if (rest == "mlp.down_proj.bias" && L.down_bias.ptr) return {L.down_bias.ptr, DType::F32, {H}, 0};
      if (rest == "mlp.gate.weight" && L.router.ptr) return {L.router.ptr, act_, {c.num_experts, H}, 0};
      if (rest == "mlp.shared_expert_gate.weight" && L.sh_gate_up.ptr) return {L.router.ptr, act_, {1, H}, (size_t)c.num_experts * H};
      if (L.sh_gate_up.ptr) {
        if (rest == "mlp.shared_expert.gate_proj.weight") return {L.sh_gate_up.ptr, wdt_, {Is, H}, 0};
        if (rest == "mlp.shared_expert.up_proj.weight") return {L.sh_gate_up.ptr, wdt_, {Is, H}, (size_t)(Is * H)};
        if (rest == "mlp.shared_expert.down_proj.weight") return {L.sh_down.ptr, wdt_, {H, Is}, 0};
        if (L.sh_gate_up_s.ptr) {
          if (rest == "mlp.shared_expert.gate_proj.weight_scale") return {L.sh_gate_up_s.ptr, DType::F32, {Is}, 0};
          if (rest == "mlp.shared_expert.up_proj.weight_scale") return {L.sh_gate_up_s.ptr, DType::F32, {Is}, (size_t)Is};
          if (rest == "mlp.shared_expert.down_proj.weight_scale") return {L.sh_down_s.ptr, DType::F32, {H}, 0};
        }
      }
      if (L.sparse && rest.rfind("mlp.experts.", 0) == 0) {
        const size_t d2 = rest.find('.', 12);
        const int e = std::atoi(rest.substr(12, d2 - 12).c_str()) - c.expert_start;
        const std::string w = d2 == std::string::npos ? "" : rest.substr(d2 + 1);
        if (e >= 0 && e < c.expert_end - c.expert_start) {
          const size_t gu = (size_t)e * 2 * Ie * H;
          if (w == "gate_proj.weight") return {L.ex_gate_up.ptr, wdt_, {Ie, H}, gu};
          if (w == "up_proj.weight") return {L.ex_gate_up.ptr, wdt_, {Ie, H}, gu + (size_t)(Ie * H)};
          if (w == "down_proj.weight") return {L.ex_down.ptr, wdt_, {H, Ie}, (size_t)e * H * Ie};
          if (L.ex_gate_up_s.ptr) {
            if (w == "gate_proj.weight_scale") return {L.ex_gate_up_s.ptr, DType::F32, {Ie}, (size_t)e * 2 * Ie};
            if (w == "up_proj.weight_scale") return {L.ex_gate_up_s.ptr, DType::F32, {Ie}, (size_t)e * 2 * Ie + Ie};
            if (w == "down_proj.weight_scale") return {L.ex_down_s.ptr, DType::F32, {H}, (size_t)e * H};
          }
        }
      }
      if (c.qkv_bias) {
        if (rest == "self_attn.q_proj.bias") return {L.qkv_bias.ptr, act_, {qd}, 0};
        if (rest == "self_attn.k_proj.bias") return {L.qkv_bias.ptr, act_, {kvd}, (size_t)qd};
        if (rest == "self_attn.v_proj.bias") return {L.qkv_bias.ptr, act_, {kvd}, (size_t)(qd + kvd)};
      }
    }
  }
  throw std::runtime_error("cuda: unexpected tensor " + name + " for this shard (layers " +
                           std::to_string(c.layer_start) + ".." + std::to_string(c.layer_end - 1) + ")");
}

bool CudaBackend::load_scalar(const std::string& name, DType dtype, const std::vector<int64_t>& shape, const void* data,
                              size_t bytes) {
  static const char* kInputs[4][3] = {{"self_attn.q_proj.input_scale", "self_attn.k_proj.input_scale", "self_attn.v_proj.input_scale"},
                                      {"self_attn.o_proj.input_scale", nullptr, nullptr},
                                      {"mlp.gate_proj.input_scale", "mlp.up_proj.input_scale", nullptr},
                                      {"mlp.down_proj.input_scale", nullptr, nullptr}};
  const std::string pre = "model.layers.";
  if (name.rfind(pre, 0) != 0) return false;
  const size_t dot = name.find('.', pre.size());
  const int l = std::atoi(name.substr(pre.size(), dot - pre.size()).c_str()) - cfg_.layer_start;
  if (dot == std::string::npos || l < 0 || l >= n_layers_) return false;
  const std::string rest = name.substr(dot + 1);
  float* slot = nullptr;
  if (rest == "self_attn.k_scale") slot = &k_scale_[l];
  if (rest == "self_attn.v_scale") slot = &v_scale_[l];
  for (int g = 0; g < 4 && !slot && cfg_.static_input_scales; ++g)
    for (const char* n : kInputs[g])
      if (n && rest == n) slot = &in_scale_host_[l][g];
  if (!slot) return false;
  if (dtype != DType::F32 || bytes != 4 || numel(shape) != 1)
    throw std::runtime_error("cuda: tensor " + name + " must be one f32 value");
  float v;
  std::memcpy(&v, data, 4);
  if (!(v > 0.f) || !std::isfinite(v)) throw std::runtime_error("cuda: tensor " + name + " must be a positive finite scale");
  // Fused inputs (q|k|v, gate|up) share one quantization: the largest scale covers each one's range.
  *slot = rest.find("input_scale") != std::string::npos ? std::max(*slot, v) : v;
  loaded_.insert(name);
  return true;
}

bool CudaBackend::skip_expert_input_scale(const std::string& name, DType dtype, const std::vector<int64_t>& shape, const void* data,
                                          size_t bytes) {
  if (wdt_ == act_ || cfg_.num_experts == 0) return false;
  const std::string pre = "model.layers.", suffix = ".input_scale";
  if (name.rfind(pre, 0) != 0 || name.size() <= suffix.size() || name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
    return false;
  const size_t dot = name.find('.', pre.size());
  if (dot == std::string::npos) return false;
  const std::string rest = name.substr(dot + 1);
  if (rest.rfind("mlp.experts.", 0) != 0 && rest.rfind("mlp.shared_expert.", 0) != 0) return false;
  float v = 0.f;
  if (dtype != DType::F32 || bytes != 4 || numel(shape) != 1 || (std::memcpy(&v, data, 4), !(v > 0.f) || !std::isfinite(v)))
    throw std::runtime_error("cuda: tensor " + name + " must be one positive finite f32 value");
  return true;
}

void CudaBackend::load_tensor(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                              const void* data, size_t bytes) {
  NS_CUDA(cudaSetDevice(cfg_.device_index));
  if (load_scalar(name, dtype, shape, data, bytes)) return;
  if (skip_expert_input_scale(name, dtype, shape, data, bytes)) return;
  const Target t = target_for(name);
  if (shape != t.shape)
    throw std::runtime_error("cuda: tensor " + name + " has shape " + shape_str(shape) + ", expected " +
                             shape_str(t.shape));
  const size_t n = numel(shape);
  if (bytes != n * dtype_size(dtype))
    throw std::runtime_error("cuda: tensor " + name + " has " + std::to_string(bytes) + " bytes, expected " +
                             std::to_string(n * dtype_size(dtype)));
  const bool quant_t = t.dt == DType::I8 || t.dt == DType::F8E4M3, quant_in = dtype == DType::I8 || dtype == DType::F8E4M3;
  const bool scale = name.size() > 6 && name.compare(name.size() - 6, 6, "_scale") == 0;  // row scales arrive as f32 (the loader widens them)
  if (quant_t != quant_in || (quant_t && dtype != t.dt) || (scale && dtype != DType::F32))
    throw std::runtime_error(std::string("cuda: tensor ") + name + " has dtype " + dtype_name(dtype) + ", expected " +
                             (quant_t ? dtype_name(t.dt) : scale ? "f32" : "f32, bf16 or f16"));
  char* dst = static_cast<char*>(t.dst) + t.offset_elems * dtype_size(t.dt);
  const bool norm = name.size() > 11 && name.compare(name.size() - 11, 11, "norm.weight") == 0;
  if (cfg_.norm_plus_one && norm) {
    // Gemma's (1 + w) norms: stored as the factor they multiply by, computed in f32 on the host.
    std::vector<float> w(n);
    for (size_t i = 0; i < n; ++i) {
      const float x = dtype == DType::F32 ? static_cast<const float*>(data)[i]
                      : dtype == DType::BF16 ? bf16_to_f32(static_cast<const uint16_t*>(data)[i])
                                             : f16_to_f32(static_cast<const uint16_t*>(data)[i]);
      w[i] = 1.0f + x;
    }
    NS_CUDA(cudaMemcpy(dst, w.data(), 4 * n, cudaMemcpyHostToDevice));
    loaded_.insert(name);
    return;
  }
  if (dtype == t.dt) {
    // From pageable memory this returns once the bytes are staged, so the caller may unmap them.
    NS_CUDA(cudaMemcpyAsync(dst, data, bytes, cudaMemcpyHostToDevice, stream_));
  } else {
    NS_CUDA(cudaStreamSynchronize(stream_));  // the staging buffer may still feed the last conversion
    staging_.reserve(bytes);
    NS_CUDA(cudaMemcpyAsync(staging_.ptr, data, bytes, cudaMemcpyHostToDevice, stream_));
    convert(t.dt, dst, dtype, staging_.ptr, n, stream_);
  }
  loaded_.insert(name);
}

size_t CudaBackend::activation_bytes(int T) const {
  const auto& c = cfg_;
  const size_t es = dtype_size(act_), H = c.hidden;
  return (size_t)T * (8 * H + es * (H + qkv_rows_ + (size_t)c.n_heads * c.head_dim + 3 * (size_t)c.intermediate));
}

int CudaBackend::finalize() {
  NS_CUDA(cudaSetDevice(cfg_.device_index));
  for (const auto& n : expected_)
    if (!loaded_.count(n)) throw std::runtime_error("cuda: tensor " + n + " was not loaded");
  NS_CUDA(cudaStreamSynchronize(stream_));
  staging_.release();
  const auto& c = cfg_;
  if (c.static_input_scales)
    for (int l = 0; l < n_layers_; ++l) NS_CUDA(cudaMemcpy(layers_[l].in_s.ptr, in_scale_host_[l].data(), 4 * 4, cudaMemcpyHostToDevice));
  if (wdt_ == DType::I8 || hdt_ == DType::I8 || ((wdt_ == DType::F8E4M3 || hdt_ == DType::F8E4M3) && !c.fp8_activations)) {
    // Weight-only GEMMs past the GEMV dequantize into this and run on cuBLAS: room for the largest
    // layer matrix (the head, if quantized and larger, goes through in slices of it).
    const size_t qd = (size_t)c.n_heads * c.head_dim, H = c.hidden, I = c.intermediate;
    deq_.reserve(dtype_size(act_) * std::max({(size_t)qkv_rows_ * H, H * qd, 2 * I * H}));
  }
  if (wdt_ != act_ && c.shared_intermediate > 0)  // a quantized shared expert past the grouped GEMV: weight-only through deq_
    deq_.reserve(dtype_size(act_) * 2 * c.shared_intermediate * c.hidden);
  // The fp8 KV cache keeps one byte an element: twice the blocks in the same memory.
  const size_t block_bytes = (size_t)2 * c.kv_block_size * c.n_kv_heads * c.head_dim * (kv_fp8_ ? 1 : dtype_size(act_));
  int n_window_layers = 0;
  for (const LayerWeights& L : layers_) n_window_layers += L.window_pool;
  // Bytes of both pools for a main pool of `blocks`: the windowed layers' pool follows its size
  // (kv_window_pool_blocks; kv_window_group only, else every layer is in the main pool).
  auto pool_bytes = [&](int blocks) {
    return block_bytes * ((size_t)(n_layers_ - n_window_layers) * blocks + (size_t)n_window_layers * kv_window_pool_blocks(c, blocks));
  };
  // The largest step's scratch is reserved now (a server's --max-batch-tokens, 8192 by default on
  // CUDA: ~1.1 GB on a 7B), so the first long prefill does not reallocate it and invalidate the
  // decode graphs captured below.
  const int step_tokens = std::max(std::min(2048, std::max(c.max_position, 256)), c.max_step_tokens);
  ensure_activations(step_tokens, 256, 64, 0);
  reserve_family(step_tokens);
  if (c.kv_blocks > 0) {
    kv_blocks_ = c.kv_blocks;
  } else {
    size_t free_b = 0, total_b = 0;
    NS_CUDA(cudaMemGetInfo(&free_b, &total_b));
    // Budget: fraction of the whole card, less what is already used (weights, the step scratch
    // reserved above, cuBLAS workspaces, other processes), less headroom for 2048 tokens' scratch
    // past it (a longer step than planned) and the logits buffers.
    const double budget = c.gpu_memory_fraction * (double)total_b - (double)(total_b - free_b) -
                          (double)activation_bytes(2048) - 256.0 * (1 << 20);
    // The largest main pool whose pools fit, at most what one layer's worth of the budget holds.
    int lo = 0, hi = budget > 0 ? static_cast<int>(std::min(budget / (double)block_bytes, 2e9)) : 0;
    while (lo < hi) {
      const int mid = lo + (hi - lo + 1) / 2;
      if ((double)pool_bytes(mid) <= budget) lo = mid; else hi = mid - 1;
    }
    kv_blocks_ = lo;
    if (kv_blocks_ < 1)
      throw std::runtime_error("cuda: no GPU memory left for the KV cache after the weights (free " +
                               std::to_string(free_b >> 20) + " MiB of " + std::to_string(total_b >> 20) +
                               " MiB, gpu_memory_fraction " + std::to_string(c.gpu_memory_fraction) + ")");
  }
  kv_window_blocks_ = kv_window_pool_blocks(c, kv_blocks_);
  kv_pool_.reserve(std::max(pool_bytes(kv_blocks_), block_bytes));
  // Defined contents: a padded graph step's dummy sequences read block 0 (their outputs are dropped).
  NS_CUDA(cudaMemsetAsync(kv_pool_.ptr, 0, kv_pool_.bytes, stream_));
  char* at = static_cast<char*>(kv_pool_.ptr);
  for (int l = 0; l < n_layers_; ++l) {
    const size_t layer_bytes = block_bytes / 2 * (layers_[l].window_pool ? kv_window_blocks_ : kv_blocks_);
    kcache_.push_back(at);
    vcache_.push_back(at + layer_bytes);
    at += 2 * layer_bytes;
  }
  max_blocks_per_seq_ = c.max_position > 0 ? (c.max_position + c.kv_block_size - 1) / c.kv_block_size : 0;
  if (warm_gemms_ || lt_) warm_gemms();
  if (warm_gemms_) capture_decode_graphs();
  finalized_ = true;
  return kv_blocks_;
}

// On by default (NODESPEED_CUDA_WARMUP=0 turns it off; H200, 64-stream bench/serve: first
// batch-64 step 22.0 -> 9.7 ms, the tail steps of 63/48/16 sequences 16.9/18.5/14.0 -> 10.6/10.1/6.4
// ms, 4,887 -> 4,927 generated tok/s, bench/results/serve-warmup-ab-h200.json). Runs every
// cuBLAS GEMM shape of a decode step once for 5..256 rows at load (and the layer GEMMs of prefill
// steps up to the step's token budget, at most 1024 rows), in the output mode the step uses,
// so the kernels cuBLAS picks are loaded before the first step of each batch size (CUDA loads
// modules lazily; on an H200 the first step of each new batch size cost 6-10 ms once). Inputs are
// zeros; the outputs land in scratch that every step overwrites (the residual stream is rewritten
// by the embedding or the previous stage's hidden state).
void CudaBackend::warm_gemms() {
  const auto& c = cfg_;
  constexpr int kMaxRows = 256;  // the logits scratch finalize() reserved
  const int rows = std::min(kMaxRows, cap_tokens_);
  const bool tp1 = c.tp_size == 1;
  const int qd = c.n_heads * c.head_dim;
  const size_t es = dtype_size(act_);
  NS_CUDA(cudaMemsetAsync(xb_.ptr, 0, es * rows * c.hidden, stream_));
  NS_CUDA(cudaMemsetAsync(attn_.ptr, 0, es * rows * qd, stream_));
  NS_CUDA(cudaMemsetAsync(act_mlp_.ptr, 0, es * rows * c.intermediate, stream_));
  const void* head = c.tied_embeddings ? embed_.ptr : lm_head_.ptr;
  std::vector<const void*> qkv, o, gate_up, down;
  for (int l = 0; l < std::min(n_layers_, 4); ++l) {  // the tuner rotates 4 layers' copies: past L2 even for o_proj
    qkv.push_back(layers_[l].qkv.ptr);
    o.push_back(layers_[l].o.ptr);
    gate_up.push_back(layers_[l].gate_up.ptr);
    down.push_back(layers_[l].down.ptr);
  }
  void* into = tp1 ? residual_.ptr : tmp_.ptr;
  const Out mode = tp1 ? Out::AddResidual : Out::F32;  // row_parallel_into_residual's
  // Each shape once: tuned (which runs it too) at the row counts the decode graphs use (every row
  // count without graphs), else just run.
  bool tune = false;
  // Quantized matrices are run as the step runs them (their own kernels), so their kernels load and
  // their plans exist before any capture; the E4M3 GEMMs' cuBLASLt algorithms are measured first
  // (matmul_fp8's scaled GEMMs). Only at the graph buckets' row counts: a weight-only product of
  // more rows dequantizes its whole matrix, 250 row counts of that would take seconds.
  auto each = [&](const std::vector<const void*>& ws, const Weight& w, const void* x, int m, int N, int K, void* y, Out out) {
    if (w.dt != act_ && (m > rows || (use_graphs_ && graph_bucket(m) != m))) return;
    if (w.dt == DType::F8E4M3 && cfg_.fp8_activations) tune_fp8(ws, w, x, m, N, K, y, out);
    if (tune && w.dt == act_) tune_gemm(ws, x, m, N, K, y, out);
    else matmul(x, w, m, N, K, y, out);
  };
  const LayerWeights* L0 = n_layers_ > 0 ? &layers_[0] : nullptr;
  // A layer's four GEMMs at m rows (down's x: SwiGLU's output buffer).
  auto layer_gemms = [&](int m) {
    each(qkv, weight(L0->qkv, L0->qkv_s, L0->in_s, 0), xb_.ptr, m, qkv_rows_, c.hidden, qkv_.ptr, Out::Act);
    each(o, weight(L0->o, L0->o_s, L0->in_s, 1), attn_.ptr, m, c.hidden, qd, into, mode);
    each(gate_up, weight(L0->gate_up, L0->gate_up_s, L0->in_s, 2), xb_.ptr, m, 2 * c.intermediate, c.hidden, gu_.ptr, Out::Act);
    each(down, weight(L0->down, L0->down_s, L0->in_s, 3), act_mlp_.ptr, m, c.hidden, c.intermediate, into, mode);
  };
  for (int m = use_gemv_ ? 5 : 1; m <= rows; ++m) {
    tune = lt_ && (!use_graphs_ || graph_bucket(m) == m);
    if (L0) layer_gemms(m);
    if (c.has_head) each({head}, head_weight(), xb_.ptr, m, vocab_shard_, c.hidden, tp1 ? logits_.ptr : logits_local_.ptr, Out::F32);
  }
  // The row counts of prefill steps past the decode range, up to the step's token budget (at most
  // kPrefillRows): the layer GEMMs only (a step samples at most 256 rows of logits), weights of the
  // activation type only (a quantized matrix at each of these counts would be dequantized whole or get
  // its E4M3 plan made, as above: seconds; its prefill steps keep the first-use cost). Without
  // this, the first step of each such token count chose and loaded cuBLAS's kernels while serving:
  // bench/hetero on an H100 (1B, --max-batch-tokens 512) measured the first step of a count above 256
  // +0.7-0.9 ms at the median over later steps of that count, 5-15 ms for one in eight, and none
  // slower at the warmed counts (bench/hetero/README.md).
  constexpr int kPrefillRows = 1024;
  const int prefill_rows = std::min({cap_tokens_, kPrefillRows, c.max_step_tokens > 0 ? c.max_step_tokens : cap_tokens_});
  if (warm_gemms_ && L0 && prefill_rows > rows) {
    NS_CUDA(cudaMemsetAsync(xb_.ptr, 0, es * prefill_rows * c.hidden, stream_));
    NS_CUDA(cudaMemsetAsync(attn_.ptr, 0, es * prefill_rows * qd, stream_));
    NS_CUDA(cudaMemsetAsync(act_mlp_.ptr, 0, es * prefill_rows * c.intermediate, stream_));
    tune = false;
    for (int m = rows + 1; m <= prefill_rows; ++m) layer_gemms(m);
  }
  // The E4M3 GEMMs of a full prefill chunk (a server's --max-batch-tokens rows) are timed too,
  // rather than left to cuBLASLt's first heuristic choice (other prefill row counts keep it).
  const int chunk = c.max_step_tokens;
  if (L0 && wdt_ == DType::F8E4M3 && cfg_.fp8_activations && chunk > rows && chunk <= cap_tokens_) {
    NS_CUDA(cudaMemsetAsync(xb_.ptr, 0, es * chunk * c.hidden, stream_));
    NS_CUDA(cudaMemsetAsync(attn_.ptr, 0, es * chunk * qd, stream_));
    NS_CUDA(cudaMemsetAsync(act_mlp_.ptr, 0, es * chunk * c.intermediate, stream_));
    tune_fp8(qkv, weight(L0->qkv, L0->qkv_s, L0->in_s, 0), xb_.ptr, chunk, qkv_rows_, c.hidden, qkv_.ptr, Out::Act);
    tune_fp8(o, weight(L0->o, L0->o_s, L0->in_s, 1), attn_.ptr, chunk, c.hidden, qd, into, mode);
    tune_fp8(gate_up, weight(L0->gate_up, L0->gate_up_s, L0->in_s, 2), xb_.ptr, chunk, 2 * c.intermediate, c.hidden, gu_.ptr, Out::Act);
    tune_fp8(down, weight(L0->down, L0->down_s, L0->in_s, 3), act_mlp_.ptr, chunk, c.hidden, c.intermediate, into, mode);
  }

  NS_CUDA(cudaStreamSynchronize(stream_));
}

void CudaBackend::ensure_activations(int T, int R, int n_sample, int attn_ws_floats) {
  const auto& c = cfg_;
  const size_t es = dtype_size(act_), H = c.hidden;
  if (T > cap_tokens_) {
    ++epoch_;
    NS_CUDA(cudaStreamSynchronize(stream_));
    residual_.reserve(4 * T * H);
    tmp_.reserve(4 * T * H);
    xb_.reserve(es * T * H);
    qkv_.reserve(es * T * qkv_rows_);
    attn_.reserve(es * T * c.n_heads * c.head_dim);
    gu_.reserve(es * T * 2 * c.intermediate);
    act_mlp_.reserve(es * T * c.intermediate);
    if (wdt_ == DType::F8E4M3 || hdt_ == DType::F8E4M3) {  // E4M3 activations of the widest GEMM input (rows padded to 16), and their scales
      xq_.reserve((size_t)(T + 16) * std::max({(size_t)H, (size_t)c.n_heads * c.head_dim, (size_t)c.intermediate}));
      xs_.reserve((size_t)4 * T);
    }
    cap_tokens_ = T;
  }
  const size_t need_logits = (size_t)4 * R * c.vocab_size;
  const size_t need_ws = (size_t)4 * attn_ws_floats;
  // Sampled ids, then each sampled row's logprob words (kernels.h, kLogprobWords).
  const size_t need_ids = (size_t)4 * (1 + kLogprobWords) * std::max(n_sample, 1);
  if (need_logits > logits_.bytes || need_ws > attn_ws_.bytes || need_ids > ids_.bytes) {
    ++epoch_;
    NS_CUDA(cudaStreamSynchronize(stream_));
    if (c.has_head) {
      logits_.reserve(need_logits);
      if (c.tp_size > 1) {
        logits_local_.reserve((size_t)4 * R * vocab_stride_);
        logits_gather_.reserve((size_t)4 * R * vocab_stride_ * c.tp_size);
      }
    }
    attn_ws_.reserve(need_ws);
    if (attn_ws_.bytes > 0) NS_CUDA(cudaMemsetAsync(attn_ws_.ptr, 0, attn_ws_.bytes, stream_));  // the split counters start at 0
    ids_.reserve(need_ids);
    ids_host_.reserve(need_ids);
  }
}

Weight CudaBackend::weight(const DeviceBuffer& w, const DeviceBuffer& scale, const DeviceBuffer& in_scale, int which) const {
  Weight r{w.ptr, wdt_, scale.as<float>(), nullptr};
  if (cfg_.static_input_scales) r.in_scale = in_scale.as<float>() + which;
  return r;
}

Weight CudaBackend::head_weight() const {
  if (cfg_.tied_embeddings) return Weight{embed_.ptr, act_};
  return Weight{lm_head_.ptr, hdt_, lm_head_s_.as<float>(), nullptr};
}

void CudaBackend::matmul(const void* x, const Weight& wt, int M, int N, int K, void* y, Out mode, bool swiglu_in) {
  if (M == 0) return;
  // SwiGLU as its own pass: fusing it into the down GEMV measured slower (1.6 vs 2.3 TB/s on an
  // H100: every warp recomputes silu over its slice of the gate|up row).
  if (swiglu_in) {
    if (fp8_input_fused(wt, M) &&
        swiglu_quant(act_, x, M, K, wt.in_scale, cfg_.activation_scale_ub, xq_.ptr, xs_.as<float>(), stream_)) {
      xq_of_ = act_mlp_.ptr;  // matmul_fp8 takes the E4M3 rows of what swiglu would have written
    } else {
      swiglu(act_, x, M, K, act_mlp_.ptr, stream_);
    }
    x = act_mlp_.ptr;
  }
  if (wt.dt == DType::I8 || (wt.dt == DType::F8E4M3 && !cfg_.fp8_activations)) return matmul_weight_only(x, wt, M, N, K, y, mode);
  if (wt.dt == DType::F8E4M3) return matmul_fp8(x, wt, M, N, K, y, mode);
  const void* w = wt.w;
  const GemvOut out = gemv_mode(mode);
  if (use_gemv_ && M <= 4 && K % 8 == 0) {
    gemv(act_, w, x, M, N, K, y, out, stream_);
    return;
  }
  if (mode == Out::AddResidual && rounds(kRoundResidual)) {  // the projection in the activation dtype, then the rounded add
    matmul(x, wt, M, N, K, tmp_.ptr, Out::Act);
    residual_add(act_, static_cast<float*>(y), act_, tmp_.ptr, (size_t)M * N, stream_);
    return;
  }
  // Row-major y[M, N] = x[M, K] · w[N, K]^T is column-major y^T = w^T(op T) · x^T. AddResidual
  // (fp32 residual stream): accumulated into y by cuBLAS (beta 1).
  const float alpha = 1.f, beta = mode == Out::AddResidual ? 1.f : 0.f;
  const cudaDataType at = cuda_type(act_), ct = mode == Out::Act ? at : CUDA_R_32F;
  if (lt_ && lt_->run({M, N, K, at, ct, mode == Out::AddResidual}, w, x, y)) return;
  const cublasStatus_t st = api_->gemm_ex(blas_, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &alpha, w, at, K, x, at, K, &beta,
                                          y, ct, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (st != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error("cuda: cublasGemmEx failed with status " + std::to_string(st) + " (M=" +
                             std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K) + ")");
}

bool CudaBackend::matmul_fused(const void* x, const Weight& w, int M, int K, const GemvFusion& f) {
  if (M == 0 || !use_gemv_ || M > 4 || K % (w.dt == act_ ? 8 : 16) != 0) return false;
  if (f.kind == GemvFuse::RopeKv && (f.hd % 8 != 0 || f.hd > 256)) return false;
  xq_of_ = nullptr;  // as matmul_fp8's decode rows: no E4M3 input pending
  gemv_fused(act_, w.dt, w.w, w.scale, x, M, K, f, stream_);
  return true;
}

void CudaBackend::tune_gemm(const std::vector<const void*>& weights, const void* x, int M, int N, int K, void* y, Out mode) {
  const float alpha = 1.f, beta = mode == Out::AddResidual ? 1.f : 0.f;
  const cudaDataType at = cuda_type(act_), ct = mode == Out::Act ? at : CUDA_R_32F;
  lt_->tune({M, N, K, at, ct, mode == Out::AddResidual}, weights, x, y, [&](const void* w) {
    api_->gemm_ex(blas_, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &alpha, w, at, K, x, at, K, &beta, y, ct, N, CUBLAS_COMPUTE_32F,
                  CUBLAS_GEMM_DEFAULT);
  });
}

// o_proj / down_proj are row-parallel: each rank holds a slice of K, so partial products are
// summed over the TP group before joining the residual stream.
bool CudaBackend::row_parallel_into_residual(const void* x, const Weight& w, int T, int K, bool swiglu_in,
                                             const float* next_norm) {
  const size_t n = (size_t)T * cfg_.hidden;
  if (cfg_.tp_size == 1 || !comm_) {
    matmul(x, w, T, cfg_.hidden, K, residual_.ptr, Out::AddResidual, swiglu_in);
    return false;
  }
  matmul(x, w, T, cfg_.hidden, K, tmp_.ptr, Out::F32, swiglu_in);
  // One kernel sums the ranks' parts into the residual (and takes the next RMSNorm along) where
  // the comm can (P2P, small steps); the rounding knobs keep the separate kernels (they round
  // between the steps).
  float* res = residual_.as<float>();
  if (next_norm && !rounds(kRoundResidual | kRoundNorm) &&
      comm_->all_reduce_add_rmsnorm(tmp_.as<float>(), res, T, cfg_.hidden, next_norm, cfg_.rms_eps, act_, xb_.ptr, stream_))
    return true;
  if (!rounds(kRoundResidual) && comm_->all_reduce_add_f32(tmp_.as<float>(), res, n, stream_)) return false;
  comm_->all_reduce_sum(tmp_.ptr, n, DType::F32, stream_);
  residual_add(act_, res, DType::F32, tmp_.ptr, n, stream_);
  return false;
}

std::string CudaBackend::describe() const {
  std::ostringstream s;
  s << "cuda:" << cfg_.device_index << " (" << device_name_ << ") " << (act_ == DType::BF16 ? "bf16" : "fp16")
    << ", layers " << cfg_.layer_start << ".." << cfg_.layer_end - 1 << ", tp " << cfg_.tp_rank << "/" << cfg_.tp_size
    << ", kv " << kv_blocks_ << " blocks"
    << (cfg_.kv_window_group ? " (+ " + std::to_string(kv_window_blocks_) + " for the windowed layers)" : std::string())
    << " x " << cfg_.kv_block_size << " tokens, cuBLAS " << (api_ ? api_->path : "")
    << (wdt_ != act_ ? std::string(", ") + (wdt_ == DType::I8 ? "int8 W8A16" : (cfg_.fp8_activations ? "fp8 W8A8" : "fp8 W8A16")) + " weights" : std::string())
    << (hdt_ != wdt_ ? std::string(", LM head ") + dtype_name(hdt_) : std::string()) << (kv_fp8_ ? ", kv fp8" : "")
    << (family_ ? ", family forward" : "")
    << (wdt_ != act_ && cfg_.num_experts > 0 ? std::string(", experts ") + (wdt_ == DType::I8 ? "int8" : "fp8") + " W8A16" : std::string())
    << (cfg_.num_experts > 0 ? ", experts " + std::to_string(cfg_.expert_start) + ".." + std::to_string(cfg_.expert_end - 1) + " of " + std::to_string(cfg_.num_experts) + " (device routing)" : std::string())
    << (use_gemv_ ? ", gemv decode" : "") << (use_graphs_ ? ", graphs <= " + std::to_string(graph_max_) : std::string()) << (warm_gemms_ ? ", gemm warm-up" : "") << (lt_ ? ", " + lt_->summary() : std::string()) << (fp8_lt_ ? ", " + fp8_lt_->fp8_summary() : std::string()) << (use_flash_ ? ", flash prefill" : "") << (pdl_enabled() ? ", pdl" : "")
    << (round_mask() ? ", HF rounding mask " + std::to_string(round_mask()) : std::string());
  return s.str();
}

}  // namespace ns::cuda
