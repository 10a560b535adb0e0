#include "addon/js_config.h"

#include "common/moe_route.h"

#include <algorithm>
#include <cmath>

namespace ns::addon {

namespace {

[[noreturn]] void Bad(Napi::Env env, const std::string& msg) { throw Napi::TypeError::New(env, msg); }

int Int(const Napi::Object& o, const char* key, int def, const std::string& prefix = "") {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return def;
  if (!v.IsNumber()) Bad(o.Env(), prefix + key + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 2147483647.0)
    Bad(o.Env(), prefix + key + " must be an integer (got " + std::to_string(d) + ")");
  return static_cast<int>(d);
}

float Float(const Napi::Object& o, const char* key, float def, const std::string& prefix = "") {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return def;
  if (!v.IsNumber()) Bad(o.Env(), prefix + key + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d)) Bad(o.Env(), prefix + key + " must be finite");
  return static_cast<float>(d);
}

bool Bool(const Napi::Object& o, const char* key, bool def) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return def;
  if (!v.IsBoolean()) Bad(o.Env(), std::string(key) + " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

std::vector<float> Floats(const Napi::Object& o, const char* key, const std::string& prefix) {
  Napi::Value v = o.Get(key);
  std::vector<float> out;
  if (v.IsUndefined() || v.IsNull()) return out;
  if (!v.IsArray()) Bad(o.Env(), prefix + key + " must be an array of numbers");
  Napi::Array a = v.As<Napi::Array>();
  for (uint32_t i = 0; i < a.Length(); ++i) {
    Napi::Value x = a.Get(i);
    if (!x.IsNumber() || !std::isfinite(x.As<Napi::Number>().DoubleValue()))
      Bad(o.Env(), prefix + key + "[" + std::to_string(i) + "] must be a finite number");
    out.push_back(x.As<Napi::Number>().FloatValue());
  }
  return out;
}

// One 0/1 per layer of the shard.
std::vector<uint8_t> LayerFlags(const Napi::Object& o, const char* key, int n_layers) {
  std::vector<float> v = Floats(o, key, "");
  if (v.empty()) return std::vector<uint8_t>(static_cast<size_t>(std::max(0, n_layers)), 0);
  if (static_cast<int>(v.size()) != n_layers)
    Bad(o.Env(), std::string(key) + " must have one entry per layer of the shard (" + std::to_string(n_layers) + ")");
  std::vector<uint8_t> out;
  for (float x : v) out.push_back(x != 0.f ? 1 : 0);
  return out;
}

RopeConfig ParseRope(const Napi::Object& r, const std::string& prefix) {
  RopeConfig c;
  Napi::Env env = r.Env();
  Napi::Value type = r.Get("type");
  std::string t = type.IsString() ? type.As<Napi::String>().Utf8Value() : type.IsUndefined() ? "default" : "?";
  if (type.IsNumber()) t = std::to_string(type.As<Napi::Number>().Int32Value());
  if (t == "default" || t == "0") c.type = RopeType::Default;
  else if (t == "linear" || t == "1") c.type = RopeType::Linear;
  else if (t == "llama3" || t == "2") c.type = RopeType::Llama3;
  else if (t == "dynamic" || t == "3") c.type = RopeType::Dynamic;
  else if (t == "yarn" || t == "4") c.type = RopeType::Yarn;
  else if (t == "longrope" || t == "5") c.type = RopeType::LongRope;
  else Bad(env, prefix + "type must be 'default', 'linear', 'llama3', 'dynamic', 'yarn' or 'longrope'");
  c.theta = Float(r, "theta", c.theta, prefix);
  c.factor = Float(r, "factor", c.factor, prefix);
  c.low_freq_factor = Float(r, "lowFreqFactor", c.low_freq_factor, prefix);
  c.high_freq_factor = Float(r, "highFreqFactor", c.high_freq_factor, prefix);
  c.original_max_pos = Int(r, "originalMaxPos", c.original_max_pos, prefix);
  c.attention_factor = Float(r, "attentionFactor", c.attention_factor, prefix);
  c.beta_fast = Float(r, "betaFast", c.beta_fast, prefix);
  c.beta_slow = Float(r, "betaSlow", c.beta_slow, prefix);
  c.truncate = Bool(r, "truncate", c.truncate);
  c.short_factor = Floats(r, "shortFactor", prefix);
  c.long_factor = Floats(r, "longFactor", prefix);
  c.rotary_dim = Int(r, "rotaryDim", 0, prefix);
  if (c.type == RopeType::LongRope && (c.short_factor.empty() || c.short_factor.size() != c.long_factor.size()))
    Bad(env, prefix + "shortFactor and longFactor must be lists of the same length (longrope)");
  return c;
}

}  // namespace

const char* DTypeName(DType d) { return dtype_name(d); }

DType ParseDType(const Napi::Value& v, const std::string& field, bool quantized) {
  if (v.IsString()) {
    std::string s = v.As<Napi::String>().Utf8Value();
    if (s == "f32" || s == "float32") return DType::F32;
    if (s == "bf16" || s == "bfloat16") return DType::BF16;
    if (s == "f16" || s == "float16") return DType::F16;
    if (quantized && s == "i8") return DType::I8;
    if (quantized && s == "f8e4m3") return DType::F8E4M3;
  }
  throw Napi::TypeError::New(v.Env(), field + (quantized ? " must be 'f32', 'bf16', 'f16', 'i8' or 'f8e4m3'" : " must be 'f32', 'bf16' or 'f16'"));
}

WeightFormat ParseWeightFormat(const Napi::Value& v, const std::string& field) {
  if (v.IsUndefined() || v.IsNull()) return WeightFormat::Native;
  if (v.IsString()) {
    std::string s = v.As<Napi::String>().Utf8Value();
    if (s == "native") return WeightFormat::Native;
    if (s == "int8") return WeightFormat::Int8;
    if (s == "fp8") return WeightFormat::Fp8;
  }
  throw Napi::TypeError::New(v.Env(), field + " must be 'native', 'int8' or 'fp8'");
}

uint64_t ParseSeed(const Napi::Value& v, const std::string& field) {
  if (v.IsBigInt()) {
    bool lossless = true;
    uint64_t s = v.As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) throw Napi::RangeError::New(v.Env(), field + " must fit in an unsigned 64-bit integer");
    return s;
  }
  if (v.IsNumber()) {
    double d = v.As<Napi::Number>().DoubleValue();
    if (!(d >= 0) || d != std::floor(d) || d > 9007199254740991.0)
      throw Napi::RangeError::New(v.Env(), field + " must be a non-negative safe integer or a bigint");
    return static_cast<uint64_t>(d);
  }
  throw Napi::TypeError::New(v.Env(), field + " must be a number or a bigint");
}

void ParseSamplingExtras(const Napi::Value& v, SamplingParams* p, std::vector<LogitBias>* bias, const std::string& field) {
  if (v.IsUndefined() || v.IsNull()) return;
  Napi::Env env = v.Env();
  if (!v.IsObject()) Bad(env, field + " must be an object");
  Napi::Object o = v.As<Napi::Object>();
  const std::string pre = field + ".";
  p->min_p = Float(o, "minP", p->min_p, pre);
  p->repetition_penalty = Float(o, "repetitionPenalty", p->repetition_penalty, pre);
  p->presence_penalty = Float(o, "presencePenalty", p->presence_penalty, pre);
  p->frequency_penalty = Float(o, "frequencyPenalty", p->frequency_penalty, pre);
  p->prompt_len = Int(o, "promptLen", p->prompt_len, pre);
  p->logprobs = Int(o, "logprobs", p->logprobs, pre);
  Napi::Value ids = o.Get("logitBiasIds"), vals = o.Get("logitBiasValues");
  if (ids.IsUndefined() && vals.IsUndefined()) return;
  if (!ids.IsTypedArray() || ids.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    Bad(env, pre + "logitBiasIds must be an Int32Array");
  if (!vals.IsTypedArray() || vals.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    Bad(env, pre + "logitBiasValues must be a Float32Array");
  Napi::Int32Array a = ids.As<Napi::Int32Array>();
  Napi::Float32Array b = vals.As<Napi::Float32Array>();
  if (a.ElementLength() != b.ElementLength()) Bad(env, pre + "logitBiasIds and logitBiasValues differ in length");
  bias->resize(a.ElementLength());
  for (size_t i = 0; i < a.ElementLength(); ++i) (*bias)[i] = {a[i], b[i]};
  p->logit_bias = bias->data();
  p->n_logit_bias = static_cast<int>(bias->size());
}

Napi::Value LogprobsToJs(Napi::Env env, const StepOutput& out) {
  if (out.sampled_logprob.empty()) return env.Undefined();
  Napi::Object o = Napi::Object::New(env);
  Napi::Float32Array sampled = Napi::Float32Array::New(env, out.sampled_logprob.size());
  std::copy(out.sampled_logprob.begin(), out.sampled_logprob.end(), sampled.Data());
  Napi::Int32Array ids = Napi::Int32Array::New(env, out.top_ids.size());
  std::copy(out.top_ids.begin(), out.top_ids.end(), ids.Data());
  Napi::Float32Array top = Napi::Float32Array::New(env, out.top_logprobs.size());
  std::copy(out.top_logprobs.begin(), out.top_logprobs.end(), top.Data());
  o.Set("sampled", sampled);
  o.Set("topIds", ids);
  o.Set("top", top);
  return o;
}

ShardConfig ParseShardConfig(const Napi::Object& o, std::string* device) {
  ShardConfig c;
  Napi::Env env = o.Env();
  Napi::Value dev = o.Get("device");
  *device = dev.IsString() ? dev.As<Napi::String>().Utf8Value() : dev.IsUndefined() ? "cpu" : "";
  if (*device != "cpu" && *device != "cuda") Bad(env, "device must be 'cpu' or 'cuda'");
  c.hidden = Int(o, "hidden", 0);
  c.intermediate = Int(o, "intermediate", 0);
  c.n_heads = Int(o, "nHeads", 0);
  c.n_kv_heads = Int(o, "nKvHeads", 0);
  c.head_dim = Int(o, "headDim", 0);
  c.vocab_size = Int(o, "vocabSize", 0);
  c.vocab_start = Int(o, "vocabStart", 0);
  c.vocab_end = Int(o, "vocabEnd", c.vocab_size);
  c.layer_start = Int(o, "layerStart", 0);
  c.layer_end = Int(o, "layerEnd", 0);
  c.max_position = Int(o, "maxPosition", 0);
  c.rms_eps = Float(o, "rmsEps", c.rms_eps);
  c.qkv_bias = Bool(o, "qkvBias", false);
  c.tied_embeddings = Bool(o, "tiedEmbeddings", false);
  c.has_embedding = Bool(o, "hasEmbedding", false);
  c.has_head = Bool(o, "hasHead", false);
  c.tp_rank = Int(o, "tpRank", 0);
  c.tp_size = Int(o, "tpSize", 1);
  Napi::Value rope = o.Get("rope");
  if (!rope.IsUndefined() && !rope.IsNull()) {
    if (!rope.IsObject()) Bad(env, "rope must be an object");
    c.rope = ParseRope(rope.As<Napi::Object>(), "rope.");
  }
  Napi::Value local = o.Get("ropeLocal");
  if (!local.IsUndefined() && !local.IsNull()) {
    if (!local.IsObject()) Bad(env, "ropeLocal must be an object");
    c.rope_local = ParseRope(local.As<Napi::Object>(), "ropeLocal.");
    c.has_rope_local = true;
  }
  for (const RopeConfig* r : {&c.rope, &c.rope_local}) {
    const int half = (r->rotary_dim > 0 ? r->rotary_dim : c.head_dim) / 2;
    if (r->type == RopeType::LongRope && static_cast<int>(r->short_factor.size()) != half)
      Bad(env, "rope shortFactor/longFactor must have rotaryDim / 2 = " + std::to_string(half) + " entries");
  }
  c.o_bias = Bool(o, "oBias", false);
  c.mlp_bias = Bool(o, "mlpBias", false);
  c.qk_norm = Bool(o, "qkNorm", false);
  c.norm_plus_one = Bool(o, "normPlusOne", false);
  c.sandwich_norms = Bool(o, "sandwichNorms", false);
  Napi::Value act = o.Get("activation");
  const std::string a = act.IsString() ? act.As<Napi::String>().Utf8Value() : act.IsUndefined() ? "silu" : "?";
  if (a == "silu") c.act = Activation::Silu;
  else if (a == "gelu_tanh") c.act = Activation::GeluTanh;
  else Bad(env, "activation must be 'silu' or 'gelu_tanh'");
  c.embed_scale = Float(o, "embedScale", 1.f);
  c.attn_scale = Float(o, "attnScale", 0.f);
  c.attn_softcap = Float(o, "attnSoftcap", 0.f);
  c.final_softcap = Float(o, "finalSoftcap", 0.f);
  if (c.attn_scale < 0 || c.attn_softcap < 0 || c.final_softcap < 0) Bad(env, "attnScale, attnSoftcap and finalSoftcap must be >= 0");
  c.sliding_window = Int(o, "slidingWindow", 0);
  if (c.sliding_window < 0) Bad(env, "slidingWindow must be >= 0");
  const int n_layers = c.layer_end - c.layer_start;
  c.sliding_layers = LayerFlags(o, "slidingLayers", n_layers);
  c.kv_window_group = Bool(o, "kvWindowGroup", false);
  if (c.kv_window_group && c.sliding_window == 0) Bad(env, "kvWindowGroup needs a slidingWindow");
  c.num_experts = Int(o, "numExperts", 0);
  c.expert_start = Int(o, "expertStart", 0);
  c.expert_end = Int(o, "expertEnd", 0);
  c.top_k = Int(o, "topK", 0);
  c.moe_intermediate = Int(o, "moeIntermediate", 0);
  c.norm_topk = Bool(o, "normTopK", false);
  c.shared_intermediate = Int(o, "sharedIntermediate", 0);
  c.sparse_layers = LayerFlags(o, "sparseLayers", n_layers);
  if (c.num_experts < 0 || c.expert_start < 0 || c.expert_end < c.expert_start || c.expert_end > c.num_experts ||
      (c.num_experts > 0 && (c.top_k < 1 || c.top_k > c.num_experts || c.moe_intermediate < 1)) || c.shared_intermediate < 0)
    Bad(env, "numExperts/expertStart/expertEnd/topK/moeIntermediate/sharedIntermediate are inconsistent");
  if (c.num_experts > moe::kMaxExperts || c.top_k > moe::kMaxTopK)
    Bad(env, "numExperts " + std::to_string(c.num_experts) + " / topK " + std::to_string(c.top_k) + ": the router takes at most " +
                 std::to_string(moe::kMaxExperts) + " experts and top " + std::to_string(moe::kMaxTopK));
  Napi::Value compute = o.Get("compute");
  c.compute = compute.IsUndefined() ? (*device == "cpu" ? DType::F32 : DType::BF16) : ParseDType(compute, "compute");
  c.kv_block_size = Int(o, "kvBlockSize", c.kv_block_size);
  c.kv_blocks = Int(o, "kvBlocks", 0);
  c.gpu_memory_fraction = Float(o, "gpuMemoryFraction", c.gpu_memory_fraction);
  c.max_step_tokens = Int(o, "maxStepTokens", 0);
  if (c.max_step_tokens < 0) Bad(o.Env(), "maxStepTokens must be >= 0 (got " + std::to_string(c.max_step_tokens) + ")");
  c.device_index = Int(o, "deviceIndex", 0);
  c.threads = Int(o, "threads", 0);
  c.weights = ParseWeightFormat(o.Get("weights"), "weights");
  c.head_weights = ParseWeightFormat(o.Get("headWeights"), "headWeights");
  c.static_input_scales = Bool(o, "staticInputScales", false);
  c.fp8_activations = Bool(o, "fp8Activations", true);
  c.activation_scale_ub = Float(o, "activationScaleUb", 0.f);
  if (c.activation_scale_ub < 0) Bad(env, "activationScaleUb must be >= 0");
  Napi::Value kv = o.Get("kvCacheDtype");
  if (!kv.IsUndefined() && !kv.IsNull()) {
    const std::string k = kv.IsString() ? kv.As<Napi::String>().Utf8Value() : "";
    if (k != "auto" && k != "fp8") Bad(env, "kvCacheDtype must be 'auto' or 'fp8'");
    c.kv_fp8 = k == "fp8";
  }
  return c;
}

}  // namespace ns::addon
