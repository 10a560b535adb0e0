#include "addon/info.h"

#include <string>

#include "cpu/cpu_info.h"
#include "engine.h"

#ifdef NS_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace ns::addon {

namespace {

Napi::Array CudaDevices(Napi::Env env) {
  Napi::Array devices = Napi::Array::New(env);
#ifdef NS_WITH_CUDA
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) return devices;
  int previous = 0;
  cudaGetDevice(&previous);
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    size_t free_bytes = 0, total_bytes = prop.totalGlobalMem;
    // Free memory needs the device's primary context (created once per process, reused later).
    if (cudaSetDevice(i) == cudaSuccess) cudaMemGetInfo(&free_bytes, &total_bytes);
    Napi::Object d = Napi::Object::New(env);
    d.Set("name", prop.name);
    d.Set("totalMemory", static_cast<double>(total_bytes));
    d.Set("freeMemory", static_cast<double>(free_bytes));
    // "8.9" and up have FP8 tensor cores (--quantize fp8, --kv-cache-dtype fp8).
    d.Set("computeCapability", std::to_string(prop.major) + "." + std::to_string(prop.minor));
    devices.Set(devices.Length(), d);
  }
  cudaSetDevice(previous);
#endif
  return devices;
}

}  // namespace

Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  Napi::Object cpu = Napi::Object::New(env);
  cpu.Set("simd", cpu::simd_name());
  cpu.Set("threads", cpu::default_threads());
  out.Set("cpu", cpu);

  Napi::Object cuda = Napi::Object::New(env);
  std::string reason;
  try {
    reason = cuda_unavailable_reason();
  } catch (const std::exception& e) {
    reason = e.what();
  }
  cuda.Set("available", reason.empty());
  cuda.Set("reason", reason);
  cuda.Set("devices", reason.empty() ? CudaDevices(env) : Napi::Array::New(env));
  out.Set("cuda", cuda);
  return out;
}

}  // namespace ns::addon
