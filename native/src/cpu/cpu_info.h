// What the CPU backend will use on this machine: SIMD level and default thread count.
#pragma once

namespace ns::cpu {

// "avx2" when the CPU has AVX2 + FMA + F16C (kernels chosen at run time), else "generic".
const char* simd_name();
bool has_avx2();
// Threads a backend uses when ShardConfig.threads is 0: the threads setting (NODESPEED_THREADS), else the cores in
// this process's affinity mask (taskset / cgroups cpusets), else hardware_concurrency.
int default_threads();

}  // namespace ns::cpu
