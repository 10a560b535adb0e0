// Module entry: addon.info(), addon.Engine, addon.sampleCheck (tests), and (when helper "comm"'s binding is present)
// addon.Comm / addon.ncclUniqueId.
#include <napi.h>

#include "addon/engine_binding.h"
#include "addon/info.h"
#include "addon/sample_check_binding.h"

#if __has_include("../comm/comm_binding.h")
#include "../comm/comm_binding.h"
#define NS_HAVE_COMM_BINDING 1
#endif

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("info", Napi::Function::New(env, ns::addon::Info, "info"));
  ns::addon::InitEngine(env, exports);
  exports.Set("sampleCheck", Napi::Function::New(env, ns::addon::SampleCheck, "sampleCheck"));
#ifdef NS_HAVE_COMM_BINDING
  ns::InitComm(env, exports);
#endif
  return exports;
}

}  // namespace

NODE_API_MODULE(nodespeed, Init)
