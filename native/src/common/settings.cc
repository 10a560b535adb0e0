#include "common/settings.h"

#include <mutex>

namespace ns {
namespace {
std::mutex mu;
Settings current;
}  // namespace

Settings settings() {
  std::lock_guard<std::mutex> lock(mu);
  return current;
}

void set_settings(const Settings& s) {
  std::lock_guard<std::mutex> lock(mu);
  current = s;
}

}  // namespace ns
