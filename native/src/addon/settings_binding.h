#pragma once
#include <napi.h>

namespace ns::addon {
// addon.configure(settings) and addon.settings(): ns::Settings (common/settings.h) from and to the
// camelCase object of src/settings/index.ts nativeSettings(). configure() requires every field, so the
// two sides cannot drift apart unnoticed.
void InitSettings(Napi::Env env, Napi::Object exports);
}  // namespace ns::addon
