// cuda_sample_check (common/sample_check.h): the sampling kernel alone on given logits, with the
// rows packed as CudaBackend::pack packs a step's sampled rows.
#include <cmath>
#include <cstring>

#include "common/sample_check.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_common.h"
#include "cuda/kernels.h"

namespace ns {

std::vector<SampleCheckResult> cuda_sample_check(const std::vector<SampleCheckRow>& rows, int vocab, int device) {
  using namespace ns::cuda;
  NS_CUDA(cudaSetDevice(device));
  const int n = static_cast<int>(rows.size());
  std::vector<SampleCheckResult> out(n);
  if (n == 0) return out;
  std::vector<float> logits((size_t)n * vocab);
  std::vector<int32_t> row_ids(n), extras;
  std::vector<SampleRow> params(n);
  for (int i = 0; i < n; ++i) {
    const SampleCheckRow& r = rows[i];
    check_sampling(r.params, vocab, "sampleCheck rows[" + std::to_string(i) + "]");
    std::copy(r.logits.begin(), r.logits.end(), logits.begin() + (size_t)i * vocab);
    row_ids[i] = i;
    const std::vector<PenaltyToken> counts = r.params.penalized() ? sample_check_counts(r) : std::vector<PenaltyToken>{};
    params[i] = pack_sample_row(r.params, sampling_uniform(r.params.seed, r.position), r.params.penalized() ? &counts : nullptr, extras);
  }
  DeviceBuffer d_logits, d_rows, d_params, d_extras, d_extras_ptr, d_out;
  d_logits.reserve(4 * logits.size());
  d_rows.reserve(4 * n);
  d_params.reserve(sizeof(SampleRow) * n);
  d_extras.reserve(4 * std::max<size_t>(extras.size(), 1));
  d_extras_ptr.reserve(sizeof(void*));
  d_out.reserve((size_t)4 * n * (1 + kLogprobWords));
  NS_CUDA(cudaMemcpy(d_logits.ptr, logits.data(), 4 * logits.size(), cudaMemcpyHostToDevice));
  NS_CUDA(cudaMemcpy(d_rows.ptr, row_ids.data(), 4 * n, cudaMemcpyHostToDevice));
  NS_CUDA(cudaMemcpy(d_params.ptr, params.data(), sizeof(SampleRow) * n, cudaMemcpyHostToDevice));
  if (!extras.empty()) NS_CUDA(cudaMemcpy(d_extras.ptr, extras.data(), 4 * extras.size(), cudaMemcpyHostToDevice));
  const void* ex = d_extras.ptr;
  NS_CUDA(cudaMemcpy(d_extras_ptr.ptr, &ex, sizeof ex, cudaMemcpyHostToDevice));
  int32_t* ids = d_out.as<int32_t>();
  sample(d_logits.as<float>(), vocab, d_rows.as<int32_t>(), d_params.as<SampleRow>(), d_extras_ptr.as<const int32_t* const>(), n, ids,
         reinterpret_cast<float*>(ids + n), nullptr);
  NS_CUDA(cudaDeviceSynchronize());
  std::vector<int32_t> host((size_t)n * (1 + kLogprobWords));
  NS_CUDA(cudaMemcpy(host.data(), d_out.ptr, 4 * host.size(), cudaMemcpyDeviceToHost));
  NS_CUDA(cudaMemcpy(logits.data(), d_logits.ptr, 4 * logits.size(), cudaMemcpyDeviceToHost));
  for (int i = 0; i < n; ++i) {
    SampleCheckResult& r = out[i];
    r.penalized.assign(logits.begin() + (size_t)i * vocab, logits.begin() + (size_t)(i + 1) * vocab);
    r.sampled = host[i];
    const float* lp = reinterpret_cast<const float*>(host.data() + n + (size_t)i * kLogprobWords);
    const bool asked = rows[i].params.logprobs >= 0;
    r.sampled_logprob = asked ? lp[0] : NAN;
    r.top_ids.resize(kMaxLogprobs);
    r.top_logprobs.resize(kMaxLogprobs);
    for (int k = 0; k < kMaxLogprobs; ++k) {
      std::memcpy(&r.top_ids[k], &lp[1 + k], 4);
      r.top_logprobs[k] = lp[1 + kMaxLogprobs + k];
      if (!asked) r.top_ids[k] = -1;
    }
  }
  return out;
}

}  // namespace ns
