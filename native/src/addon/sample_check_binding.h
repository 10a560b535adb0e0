#pragma once

#include <napi.h>

namespace ns::addon {

Napi::Value SampleCheck(const Napi::CallbackInfo& info);

}  // namespace ns::addon
