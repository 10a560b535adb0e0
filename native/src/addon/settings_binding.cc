#include "addon/settings_binding.h"

#include <cmath>
#include <string>
#include <variant>

#include "common/settings.h"

namespace ns::addon {

namespace {

using Member = std::variant<int Settings::*, long Settings::*, bool Settings::*, double Settings::*, std::string Settings::*>;

struct Field {
  const char* js;
  Member member;
};

const Field kFields[] = {
    {"threads", &Settings::threads},
    {"computeNice", &Settings::compute_nice},
    {"noAvx2", &Settings::no_avx2},
    {"ncclPath", &Settings::nccl_path},
    {"cublasPath", &Settings::cublas_path},
    {"cublasLtPath", &Settings::cublaslt_path},
    {"p2p", &Settings::p2p},
    {"p2pNorm", &Settings::p2p_norm},
    {"p2pTimeoutS", &Settings::p2p_timeout_s},
    {"cudaRound", &Settings::cuda_round},
    {"cudaGemv", &Settings::cuda_gemv},
    {"cudaGraphs", &Settings::cuda_graphs},
    {"cudaGraphMax", &Settings::cuda_graph_max},
    {"cudaFlash", &Settings::cuda_flash},
    {"cudaFlashDecodeMin", &Settings::cuda_flash_decode_min},
    {"cudaAttnSplitsMax", &Settings::cuda_attn_splits_max},
    {"cudaWarmup", &Settings::cuda_warmup},
    {"cudaLt", &Settings::cuda_lt},
    {"cudaProfileStep", &Settings::cuda_profile_step},
};

void Read(const Napi::Object& o, const Field& f, Settings& s) {
  Napi::Env env = o.Env();
  const std::string what = std::string("configure(settings): settings.") + f.js;
  Napi::Value v = o.Get(f.js);
  if (v.IsUndefined()) throw Napi::TypeError::New(env, what + " is missing");
  if (auto m = std::get_if<bool Settings::*>(&f.member)) {
    if (!v.IsBoolean()) throw Napi::TypeError::New(env, what + " must be a boolean");
    s.*(*m) = v.As<Napi::Boolean>().Value();
  } else if (auto m = std::get_if<std::string Settings::*>(&f.member)) {
    if (!v.IsString()) throw Napi::TypeError::New(env, what + " must be a string");
    s.*(*m) = v.As<Napi::String>().Utf8Value();
  } else {
    if (!v.IsNumber()) throw Napi::TypeError::New(env, what + " must be a number");
    const double d = v.As<Napi::Number>().DoubleValue();
    if (auto m = std::get_if<double Settings::*>(&f.member)) {
      if (!std::isfinite(d)) throw Napi::TypeError::New(env, what + " must be finite");
      s.*(*m) = d;
      return;
    }
    if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 2147483647.0)
      throw Napi::TypeError::New(env, what + " must be an integer");
    if (auto m = std::get_if<int Settings::*>(&f.member)) s.*(*m) = static_cast<int>(d);
    else s.*std::get<long Settings::*>(f.member) = static_cast<long>(d);
  }
}

Napi::Value Write(Napi::Env env, const Field& f, const Settings& s) {
  return std::visit([&](auto m) -> Napi::Value {
    using T = std::decay_t<decltype(s.*m)>;
    if constexpr (std::is_same_v<T, bool>) return Napi::Boolean::New(env, s.*m);
    else if constexpr (std::is_same_v<T, std::string>) return Napi::String::New(env, s.*m);
    else return Napi::Number::New(env, static_cast<double>(s.*m));
  }, f.member);
}

void Configure(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) throw Napi::TypeError::New(env, "configure(settings): settings must be an object");
  Napi::Object o = info[0].As<Napi::Object>();
  Settings s;
  for (const Field& f : kFields) Read(o, f, s);
  Napi::Array keys = o.GetPropertyNames();
  for (uint32_t i = 0; i < keys.Length(); ++i) {
    const std::string k = keys.Get(i).As<Napi::String>().Utf8Value();
    bool known = false;
    for (const Field& f : kFields) known = known || k == f.js;
    if (!known) throw Napi::TypeError::New(env, "configure(settings): settings." + k + " is not a native setting");
  }
  set_settings(s);
}

Napi::Value Get(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Settings s = settings();
  Napi::Object o = Napi::Object::New(env);
  for (const Field& f : kFields) o.Set(f.js, Write(env, f, s));
  return o;
}

}  // namespace

void InitSettings(Napi::Env env, Napi::Object exports) {
  exports.Set("configure", Napi::Function::New(env, Configure, "configure"));
  exports.Set("settings", Napi::Function::New(env, Get, "settings"));
}

}  // namespace ns::addon
