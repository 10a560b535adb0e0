// addon.sampleCheck(device, vocab, rows): the sampler alone on given logits (common/sample_check.h).
// rows[i]: {logits: Float32Array, temperature, topK, topP, seed, sampling (as StepSeq.sampling),
// promptIds: Int32Array, outputIds: Int32Array, position}. Returns per row {penalized, sampled,
// sampledLogprob, topIds, topLogprobs, kept?: {ids, probs}} (kept on the CPU only).
#include "addon/sample_check_binding.h"

#include "addon/js_config.h"
#include "common/sample_check.h"

namespace ns::addon {

namespace {

std::vector<int32_t> Ints(const Napi::Value& v, const std::string& field) {
  if (v.IsUndefined()) return {};
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    throw Napi::TypeError::New(v.Env(), field + " must be an Int32Array");
  Napi::Int32Array a = v.As<Napi::Int32Array>();
  return std::vector<int32_t>(a.Data(), a.Data() + a.ElementLength());
}

double Num(const Napi::Object& o, const char* key, double def, const std::string& field) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return def;
  if (!v.IsNumber()) throw Napi::TypeError::New(o.Env(), field + "." + key + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

}  // namespace

Napi::Value SampleCheck(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsString() || !info[1].IsNumber() || !info[2].IsArray())
    throw Napi::TypeError::New(env, "sampleCheck(device, vocab, rows)");
  const std::string device = info[0].As<Napi::String>().Utf8Value();
  const int vocab = info[1].As<Napi::Number>().Int32Value();
  Napi::Array arr = info[2].As<Napi::Array>();
  std::vector<SampleCheckRow> rows(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    const std::string field = "rows[" + std::to_string(i) + "]";
    if (!arr.Get(i).IsObject()) throw Napi::TypeError::New(env, field + " must be an object");
    Napi::Object o = arr.Get(i).As<Napi::Object>();
    SampleCheckRow& r = rows[i];
    Napi::Value lv = o.Get("logits");
    if (!lv.IsTypedArray() || lv.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
      throw Napi::TypeError::New(env, field + ".logits must be a Float32Array");
    Napi::Float32Array l = lv.As<Napi::Float32Array>();
    if (static_cast<int>(l.ElementLength()) != vocab) throw Napi::RangeError::New(env, field + ".logits must hold vocab values");
    r.logits.assign(l.Data(), l.Data() + vocab);
    r.params.temperature = static_cast<float>(Num(o, "temperature", 0, field));
    r.params.top_k = static_cast<int>(Num(o, "topK", 0, field));
    r.params.top_p = static_cast<float>(Num(o, "topP", 1, field));
    Napi::Value seed = o.Get("seed");
    r.params.seed = seed.IsUndefined() ? 0 : ParseSeed(seed, field + ".seed");
    r.position = static_cast<int64_t>(Num(o, "position", 0, field));
    r.prompt = Ints(o.Get("promptIds"), field + ".promptIds");
    r.output = Ints(o.Get("outputIds"), field + ".outputIds");
    ParseSamplingExtras(o.Get("sampling"), &r.params, &r.bias, field + ".sampling");
    r.params.prompt_len = static_cast<int>(r.prompt.size());
  }
  std::vector<SampleCheckResult> res;
  try {
    res = device == "cuda" ? cuda_sample_check(rows, vocab, 0) : cpu_sample_check(rows, vocab);
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, e.what());
  }
  Napi::Array out = Napi::Array::New(env, res.size());
  for (size_t i = 0; i < res.size(); ++i) {
    const SampleCheckResult& r = res[i];
    Napi::Object o = Napi::Object::New(env);
    Napi::Float32Array pen = Napi::Float32Array::New(env, r.penalized.size());
    std::copy(r.penalized.begin(), r.penalized.end(), pen.Data());
    o.Set("penalized", pen);
    o.Set("sampled", r.sampled);
    o.Set("sampledLogprob", r.sampled_logprob);
    Napi::Int32Array ids = Napi::Int32Array::New(env, r.top_ids.size());
    std::copy(r.top_ids.begin(), r.top_ids.end(), ids.Data());
    Napi::Float32Array lps = Napi::Float32Array::New(env, r.top_logprobs.size());
    std::copy(r.top_logprobs.begin(), r.top_logprobs.end(), lps.Data());
    o.Set("topIds", ids);
    o.Set("topLogprobs", lps);
    if (!r.kept.empty()) {
      Napi::Int32Array kid = Napi::Int32Array::New(env, r.kept.size());
      Napi::Float64Array kp = Napi::Float64Array::New(env, r.kept.size());
      for (size_t j = 0; j < r.kept.size(); ++j) {
        kid[j] = r.kept[j].first;
        kp[j] = r.kept[j].second;
      }
      Napi::Object k = Napi::Object::New(env);
      k.Set("ids", kid);
      k.Set("probs", kp);
      o.Set("kept", k);
    }
    out.Set(i, o);
  }
  return out;
}

}  // namespace ns::addon
