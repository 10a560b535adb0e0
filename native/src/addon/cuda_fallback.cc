// Without the CUDA backend linked in (no nvcc at build time, or NODESPEED_NO_CUDA), the factory
// and the availability probe of engine.h still exist and say why CUDA cannot be used.
#ifndef NS_WITH_CUDA
#include <stdexcept>

#include "common/sample_check.h"
#include "engine.h"

namespace ns {

std::unique_ptr<Backend> make_cuda_backend(const ShardConfig&) {
  throw std::runtime_error("cuda: unavailable (not built with CUDA)");
}

std::string cuda_unavailable_reason() { return "not built with CUDA"; }

std::vector<SampleCheckResult> cuda_sample_check(const std::vector<SampleCheckRow>&, int, int) {
  throw std::runtime_error("cuda: unavailable (not built with CUDA)");
}

}  // namespace ns
#endif
