// Module entry: addon.configure / addon.settings, addon.info(), addon.quantize(), addon.Engine, addon.sampleCheck (tests),
// addon.Comm and addon.ncclUniqueId (docs/ENGINE.md "Addon JS API").
#include <napi.h>

#include "addon/comm_binding.h"
#include "addon/engine_binding.h"
#include "addon/info.h"
#include "addon/quant_binding.h"
#include "addon/sample_check_binding.h"
#include "addon/settings_binding.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  ns::addon::InitSettings(env, exports);
  exports.Set("info", Napi::Function::New(env, ns::addon::Info, "info"));
  exports.Set("quantize", Napi::Function::New(env, ns::addon::Quantize, "quantize"));
  ns::addon::InitEngine(env, exports);
  exports.Set("sampleCheck", Napi::Function::New(env, ns::addon::SampleCheck, "sampleCheck"));
  ns::InitComm(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(nodespeed, Init)
