#pragma once
#include <napi.h>

namespace ns::addon {
// addon.quantize(data, dtype, rows, cols, format, c0?, c1?) -> Promise<{ data: Uint8Array, scales: Float32Array }>
// (common/quant.h on a libuv worker thread).
Napi::Value Quantize(const Napi::CallbackInfo& info);
}  // namespace ns::addon
