#pragma once
#include <napi.h>

namespace ns::addon {
// addon.info(): { cpu: { simd, threads }, cuda: { available, reason, devices[] } }
Napi::Value Info(const Napi::CallbackInfo& info);
}  // namespace ns::addon
