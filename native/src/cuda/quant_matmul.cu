// CudaBackend::matmul for quantized weights (docs/QUANTIZATION.md).
//   weight-only (int8, or E4M3 of an FP8 weight-only checkpoint; W8A16): decode rows (<= 4) read the
//     quantized weights in the GEMV (gemv_quant); batched decode (<= kMmaRows rows) reads them once
//     into our tensor-core kernel (gemm_quant: 1 byte a weight, where a dequantized copy for cuBLAS
//     moves 5); prefill-sized products dequantize the weights slice by slice into the activation
//     dtype and run cublasGemmEx on them (bound by the tensor cores, where the weights' bytes matter
//     little and cuBLAS's tiles beat ours).
//   fp8 (W8A8): decode rows (<= 4) take the E4M3 GEMV against the rows as they are (weight-only:
//     bound by the weights' bytes, where quantizing the rows only costs); more rows are quantized to
//     E4M3 (per-token or static scales, by the kernel that made them or by quantize_act) for
//     cuBLASLt's E4M3 GEMM with the row and column scales applied in its kernel (outer-vector
//     scaling), y written in its own type or accumulated into the f32 residual stream. Where this
//     cuBLASLt has no such GEMM (before 12.9), or where the load-time timing of a decode shape
//     (tune_fp8) found it slower, the GEMM writes f32 and an epilogue kernel applies the scales, a
//     chunk of rows at a time (acc_ holds one chunk).
#include <algorithm>
#include <string>

#include "cuda/cuda_backend.h"
#include "cuda/cuda_common.h"
#include "cuda/kernels.h"

namespace ns::cuda {

// Rows up to which weight-only products take gemm_quant: it reads the weights once per 64 rows, so
// past 128 rows its weight traffic nears a dequantized copy's 5 bytes a weight, while cuBLAS's
// larger tiles win on the tensor cores.
constexpr int kMmaRows = 128;

void CudaBackend::matmul_weight_only(const void* x, const Weight& w, int M, int N, int K, void* y, Out mode) {
  const GemvOut out = gemv_mode(mode);
  if (use_gemv_ && M <= 4) {
    gemv_quant(act_, w.dt, QuantGemv{w.w, w.scale, x, M, N, K, y}, out, stream_);
    return;
  }
  if (M <= kMmaRows &&
      gemm_quant(act_, w.dt, QuantGemm{w.w, w.scale, x, M, N, K, y}, out, deq_.as<float>(), deq_.bytes, sm_count_, stream_))
    return;
  if (mode == Out::AddResidual && rounds(kRoundResidual)) {  // as the float path: the product rounded, then the rounded add
    matmul_weight_only(x, w, M, N, K, tmp_.ptr, Out::Act);
    residual_add(act_, static_cast<float*>(y), act_, tmp_.ptr, (size_t)M * N, stream_);
    return;
  }
  const size_t es = dtype_size(act_);
  const int chunk = static_cast<int>(std::min<size_t>(N, deq_.bytes / (es * K)));
  if (chunk < 1) throw std::runtime_error("cuda: no dequantization scratch for a matrix of " + std::to_string(K) + " columns");
  const cudaDataType at = cuda_type(act_), ct = mode == Out::Act ? at : CUDA_R_32F;
  const size_t ys = mode == Out::Act ? es : 4;
  const float alpha = 1.f, beta = mode == Out::AddResidual ? 1.f : 0.f;
  for (int n0 = 0; n0 < N; n0 += chunk) {
    const int nc = std::min(chunk, N - n0);
    dequantize(act_, w.dt, static_cast<const uint8_t*>(w.w) + (size_t)n0 * K, w.scale + n0, nc, K, deq_.ptr, stream_);
    // Rows n0.. of W are columns n0.. of y (row-major [M, N], leading dimension N).
    const cublasStatus_t st = api_->gemm_ex(blas_, CUBLAS_OP_T, CUBLAS_OP_N, nc, M, K, &alpha, deq_.ptr, at, K, x, at, K, &beta,
                                            static_cast<char*>(y) + (size_t)n0 * ys, ct, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS)
      throw std::runtime_error("cuda: cublasGemmEx (quantized weights dequantized) failed with status " + std::to_string(st) + " (M=" +
                               std::to_string(M) + " N=" + std::to_string(nc) + " K=" + std::to_string(K) + ")");
  }
}

bool CudaBackend::fp8_input_fused(const Weight& w, int M) const {
  return w.dt == DType::F8E4M3 && cfg_.fp8_activations && !(use_gemv_ && M <= 4);
}

void CudaBackend::norm_into_input(const float* res, int T, const float* norm_w, const Weight& next) {
  const auto& c = cfg_;
  if (fp8_input_fused(next, T) &&
      rmsnorm_quant(act_, res, T, c.hidden, norm_w, c.rms_eps, next.in_scale, c.activation_scale_ub, xq_.ptr, xs_.as<float>(), stream_)) {
    xq_of_ = xb_.ptr;
    return;
  }
  rmsnorm(act_, res, nullptr, T, c.hidden, norm_w, c.rms_eps, xb_.ptr, stream_);
}

void CudaBackend::matmul_fp8(const void* x, const Weight& w, int M, int N, int K, void* y, Out mode) {
  const GemvOut out = gemv_mode(mode);
  if (use_gemv_ && M <= 4) {  // decode rows: the E4M3 weights against the rows as they are (W8A16)
    xq_of_ = nullptr;
    gemv_quant(act_, DType::F8E4M3, QuantGemv{w.w, w.scale, x, M, N, K, y}, out, stream_);
    return;
  }
  const bool quantized = x == xq_of_;  // by the kernel that made x (fp8_input_fused)
  xq_of_ = nullptr;
  if (!quantized) quantize_act(act_, x, M, K, w.in_scale, cfg_.activation_scale_ub, xq_.ptr, xs_.as<float>(), stream_);
  if (mode == Out::AddResidual && rounds(kRoundResidual)) {
    xq_of_ = x;  // quantized above
    matmul_fp8(x, w, M, N, K, tmp_.ptr, Out::Act);
    residual_add(act_, static_cast<float*>(y), act_, tmp_.ptr, (size_t)M * N, stream_);
    return;
  }
  const cudaDataType ct = mode == Out::Act ? cuda_type(act_) : CUDA_R_32F;
  std::string why;
  if (fp8_lt_->fp8_scaled({M, N, K, ct, mode == Out::AddResidual}, w.w, w.scale, xq_.ptr, xs_.as<float>(), y, &why))
    return;
  if (!why.empty()) throw std::runtime_error("cuda: " + why);
  // The GEMM runs on rows padded to a multiple of 16 (xq_ has room; the extra rows' results are never
  // read): E4M3 GEMMs are documented for such shapes on every cuBLASLt release. A shape that
  // tune_fp8 split over K (its partials fit acc_ whole) runs as one chunk.
  const int mpad = (M + 15) / 16 * 16, parts = fp8_lt_->fp8_parts(mpad, N, K);
  const int chunk = parts > 1 ? mpad : static_cast<int>(std::min<size_t>(mpad, acc_.bytes / (4 * (size_t)N) / 16 * 16));
  if (chunk < 16) throw std::runtime_error("cuda: no scratch for an fp8 GEMM of " + std::to_string(N) + " columns");
  const size_t ys = mode == Out::Act ? dtype_size(act_) : 4;
  for (int m0 = 0; m0 < M; m0 += chunk) {
    const int mc = std::min(chunk, M - m0), mp = (mc + 15) / 16 * 16;
    if (!fp8_lt_->fp8(mp, N, K, w.w, static_cast<const uint8_t*>(xq_.ptr) + (size_t)m0 * K, acc_.as<float>(), &why))
      throw std::runtime_error("cuda: " + why);
    fp8_epilogue(act_, acc_.as<float>(), xs_.as<float>() + m0, w.scale, mc, N, static_cast<char*>(y) + (size_t)m0 * N * ys, out, stream_,
                 parts, (size_t)mp * N);
  }
}

void CudaBackend::tune_fp8(const std::vector<const void*>& weights, const Weight& w, const void* x, int M, int N, int K, void* y,
                           Out mode) {
  if (use_gemv_ && M <= 4) return;
  if (mode == Out::AddResidual && rounds(kRoundResidual)) {  // matmul_fp8 runs the product into tmp_
    mode = Out::Act;
    y = tmp_.ptr;
  }
  quantize_act(act_, x, M, K, w.in_scale, cfg_.activation_scale_ub, xq_.ptr, xs_.as<float>(), stream_);
  const cudaDataType ct = mode == Out::Act ? cuda_type(act_) : CUDA_R_32F;
  // The f32 form is timed as matmul_fp8 would run it: one chunk of padded rows, then the epilogue.
  const int mp = (M + 15) / 16 * 16;
  LtGemm::F32Form f32{mp, acc_.as<float>(), acc_.bytes / 4, nullptr};
  if ((size_t)4 * mp * N <= acc_.bytes)
    f32.epilogue = [&](int parts) {
      fp8_epilogue(act_, acc_.as<float>(), xs_.as<float>(), w.scale, M, N, y, gemv_mode(mode), stream_, parts, (size_t)mp * N);
    };
  fp8_lt_->tune_fp8({M, N, K, ct, mode == Out::AddResidual}, weights, w.scale, xq_.ptr, xs_.as<float>(), y, f32);
}

}  // namespace ns::cuda
