// Module entry: addon.info(), addon.quantize(), addon.Engine, and (when helper "comm"'s binding is present)
// addon.Comm / addon.ncclUniqueId.
#include <napi.h>

#include "addon/engine_binding.h"
#include "addon/info.h"
#include "addon/quant_binding.h"

#if __has_include("../comm/comm_binding.h")
#include "../comm/comm_binding.h"
#define NS_HAVE_COMM_BINDING 1
#endif

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("info", Napi::Function::New(env, ns::addon::Info, "info"));
  exports.Set("quantize", Napi::Function::New(env, ns::addon::Quantize, "quantize"));
  ns::addon::InitEngine(env, exports);
#ifdef NS_HAVE_COMM_BINDING
  ns::InitComm(env, exports);
#endif
  return exports;
}

}  // namespace

NODE_API_MODULE(nodespeed, Init)
