#include "cpu/cpu_info.h"

#include <sched.h>

#include <thread>

#include "common/settings.h"

namespace ns::cpu {

bool has_avx2() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                         __builtin_cpu_supports("f16c") && !settings().no_avx2;
  return ok;
#else
  return false;
#endif
}

const char* simd_name() { return has_avx2() ? "avx2" : "generic"; }

int default_threads() {
  if (const int n = settings().threads; n > 0) return n;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? static_cast<int>(n) : 1;
}

}  // namespace ns::cpu
