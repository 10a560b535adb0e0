// Decode-sized GEMMs (5..256 rows) through cuBLASLt with an algorithm measured on this GPU, the
// default (NODESPEED_CUDA_LT=0: cublasGemmEx for all; 64 streams 4,934 -> 4,984 tok/s on an H200,
// bench/results/serve-lt-ab-h200x2-739c5a1.json). cublasGemmEx's default choice reads a 7B's weights at
// ~65% of copy bandwidth in a batch-64 decode step (H200, bench/results/gemm-algos-h200.json: 4.94 ms
// of GEMMs a step); the best of cuBLASLt's heuristic candidates per shape measured 4.70 ms.
// At load, for every decode GEMM shape and row count, each candidate (and cublasGemmEx itself) is
// timed on weights rotated through several layers (past L2); the fastest Lt algorithm is kept only
// where it beats cublasGemmEx. libcublasLt is dlopen'ed like libcublas (NODESPEED_CUBLASLT).
#pragma once

#include <cuda_runtime.h>
#include <library_types.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

namespace ns::cuda {

class LtGemm {
 public:
  // y[M, N] = x[M, K] · w[N, K]^T (+ y when accumulate), inputs of type `ab`, y of type `c`.
  struct Shape {
    int M, N, K;
    cudaDataType ab, c;
    bool accumulate;
  };
  // nullptr, with `why`, when libcublasLt cannot be loaded or set up.
  static std::unique_ptr<LtGemm> create(cudaStream_t stream, std::string* why);
  ~LtGemm();

  // Times every heuristic candidate for `s` on `weights` (copies of the same-shaped matrix, used
  // in turn) against `baseline` (runs today's cublasGemmEx on the weights given); keeps the
  // fastest candidate when it beats the baseline. x and y are scratch of the right size.
  void tune(const Shape& s, const std::vector<const void*>& weights, const void* x, void* y,
            const std::function<void(const void* w)>& baseline);
  // Enqueues the tuned algorithm for `s`; false (nothing enqueued) when there is none.
  bool run(const Shape& s, const void* w, const void* x, void* y);
  // "Lt for k of n tuned shapes" (describe()).
  std::string summary() const;
  // "E4M3 GEMMs scaled by cuBLASLt for k of n shapes, f32 + epilogue for j (s split over K)": the
  // shapes fp8_scaled planned, how many run scaled, and how many take the f32 form because tune_fp8
  // timed it faster (of those, how many in K slices).
  std::string fp8_summary() const;

  // The W8A8 GEMM: y[M, N] = (x[M, K] · w[N, K]^T) * xscale[m] * wscale[n] (+ y when accumulate),
  // E4M3 x and w, f32 accumulation, y of type c, the scales applied inside cuBLASLt's kernel
  // (outer-vector scaling: cuBLASLt 12.9+ on sm_90+), so the result is written once, in its type.
  struct Fp8 {
    int M, N, K;
    cudaDataType c;
    bool accumulate;
  };
  // Enqueues it with the algorithm tune_fp8 measured for the shape, else cuBLASLt's first heuristic
  // choice (planned on first use: host calls only, so a CUDA graph capture may plan). false, nothing
  // enqueued and `why` untouched, when this cuBLASLt / GPU has no such GEMM for the shape or
  // tune_fp8 timed the f32 form faster; false with `why` when cublasLtMatmul failed.
  bool fp8_scaled(const Fp8& s, const void* w, const float* wscale, const void* x, const float* xscale, void* y, std::string* why);
  // The two forms of the W8A8 GEMM of a shape not planned yet, timed on `weights` (same-shaped
  // copies with the scales `wscale`): every heuristic candidate of the scaled GEMM, and of the f32
  // GEMM (fp8, on `f32.rows` rows, the caller's padding) followed by `f32.epilogue(parts)` (the
  // caller's scaling of acc into y, summing `parts` partial products rows x N floats apart); the
  // f32 GEMM is timed whole and split over K into 2 and 4 slices (one strided-batched cuBLASLt call:
  // a 4096-row matrix in 128-row tiles is 32 CTAs on 132 SMs otherwise) where acc holds the
  // partials. The faster form is kept for the shape (fp8_scaled declines it when the f32 form won,
  // and fp8 then runs what was measured here, fp8_parts its slices). x, xscale, y: scratch of the
  // right size; f32.acc: acc_floats floats. No f32.epilogue: the scaled form alone.
  struct F32Form {
    int rows;
    float* acc;
    size_t acc_floats;
    std::function<void(int parts)> epilogue;
  };
  void tune_fp8(const Fp8& s, const std::vector<const void*>& weights, const float* wscale, const void* x, const float* xscale,
                void* y, const F32Form& f32);

  // y[M, N] (f32) = x[M, K] · w[N, K]^T with E4M3 inputs and f32 accumulation, the scales applied
  // afterwards by the caller: the W8A8 GEMM where fp8_scaled has no algorithm or was timed slower.
  // The algorithm tune_fp8 measured for the shape, else cuBLASLt's first heuristic choice, planned
  // on first use. With fp8_parts(M, N, K) = p > 1, y holds p partial products (K slices), M * N
  // floats apart, for the caller to sum. false, with `why`, when there is none.
  bool fp8(int M, int N, int K, const void* w, const void* x, float* y, std::string* why);
  int fp8_parts(int M, int N, int K) const;

  struct Api;
  struct Plan;
  struct Heuristic;
  struct Algo;

 private:
  struct Scales {
    const float* w;
    const float* x;
  };
  // scaled: outer-vector scaling with these scale vectors (fp8_scaled's plans).
  // parts > 1: K split into that many slices of one strided-batched GEMM, partial products M * N apart.
  std::unique_ptr<Plan> plan(int M, int N, int K, cudaDataType ab, cudaDataType c, const Scales* scaled, Heuristic* res, int* n,
                             int requested, int parts = 1) const;
  bool set_scales(const Plan& p, const Scales& s) const;
  float time_us(const std::vector<const void*>& weights, const std::function<bool(const void*)>& run);
  float pick(Plan& p, const Heuristic* res, int n, float best, const std::vector<const void*>& weights,
            const std::function<bool(const void* w, const Algo& algo)>& run);
  Plan* scaled_plan(const Fp8& s, const Scales& sc, const std::vector<const void*>* tune_on, const void* x, void* y, float* best_us);
  Plan* f32_plan(int M, int N, int K);
  LtGemm() = default;
  using Key = std::tuple<int, int, int, int, int, bool>;
  static Key key(const Shape& s) { return {s.M, s.N, s.K, static_cast<int>(s.ab), static_cast<int>(s.c), s.accumulate}; }
  const Api* api_ = nullptr;
  void* handle_ = nullptr;
  void* workspace_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t e0_ = nullptr, e1_ = nullptr;
  std::map<Key, std::unique_ptr<Plan>> plans_;  // tuned shapes; a plan without an algorithm: cublasGemmEx won
  std::map<std::tuple<int, int, int>, std::unique_ptr<Plan>> fp8_plans_;
  std::map<std::tuple<int, int, int, int, bool>, std::unique_ptr<Plan>> scaled_plans_;
};

}  // namespace ns::cuda
