#pragma once
#include <napi.h>

namespace ns::addon {
// Registers addon.Engine (docs/ENGINE.md "Addon JS API").
void InitEngine(Napi::Env env, Napi::Object exports);
}  // namespace ns::addon
