// How close cuBLAS and cuBLASLt's algorithms get to the weight roofline for the batch-64 decode
// GEMMs (on an H200 the serving decode step's cublasGemmEx GEMMs read the 7B's weights at ~80% of copy
// bandwidth). For every projection of a Llama-2-7B layer and the LM head, at M = 8..128 rows, this
// times cublasGemmEx (CUBLAS_GEMM_DEFAULT, the same transposes, output types and beta as
// CudaBackend::matmul, the engine's path with NODESPEED_CUDA_LT=0) and every algorithm
// cublasLtMatmulAlgoGetHeuristic offers (up to 16), each on weights rotated through > 256 MB so
// no run finds them in L2, and reports GB/s of weight read and the per-step saving at M = 64.
// Compiled on the GPU host against its CUDA toolkit's cuBLAS headers (`bash bench/gpu/ab.sh gemmalgos`):
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a bench/gpu/gemm-algos.cu -lcublasLt -lcublas -o /tmp/gemm-algos
//   /tmp/gemm-algos > gemm-algos.json     (one JSON line; progress on stderr)
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { std::fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_)); std::exit(1); } } while (0)
#define BK(x) do { cublasStatus_t s_ = (x); if (s_ != CUBLAS_STATUS_SUCCESS) { std::fprintf(stderr, "%s: status %d\n", #x, (int)s_); std::exit(1); } } while (0)

namespace {

struct Shape { const char* name; int N, K; bool f32_out; float beta; int per_step; };
// per_step: launches in one decode step (32 layers; the LM head once).
const Shape kShapes[] = {
    {"qkv", 12288, 4096, false, 0.f, 32}, {"o_proj", 4096, 4096, true, 1.f, 32},
    {"gate_up", 22016, 4096, false, 0.f, 32}, {"down", 4096, 11008, true, 1.f, 32},
    {"lm_head", 32000, 4096, true, 0.f, 1},
};
const int kMs[] = {8, 16, 32, 48, 64, 96, 128};
constexpr size_t kWorkspace = 32u << 20;

struct Bufs { std::vector<void*> w; void* x; void* y; int next = 0; };

// Median of `reps` timed launches of `run(weights)`, rotating the weight copies.
template <typename F>
float median_us(Bufs& b, int reps, F run) {
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  std::vector<float> t;
  for (int i = 0; i < reps + 2; ++i) {
    void* w = b.w[b.next++ % b.w.size()];
    CK(cudaEventRecord(e0));
    if (!run(w)) { t.clear(); break; }
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    if (i >= 2) t.push_back(ms * 1000.f);  // two warm-ups
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  if (t.empty()) return -1.f;
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main() {
  cublasHandle_t blas;
  cublasLtHandle_t lt;
  BK(cublasCreate(&blas));
  BK(cublasLtCreate(&lt));
  void* ws = nullptr;
  CK(cudaMalloc(&ws, kWorkspace));
  BK(cublasSetWorkspace(blas, ws, kWorkspace));
  const int maxM = kMs[sizeof(kMs) / sizeof(kMs[0]) - 1];
  std::string json = "{\"shapes\":[";
  double step_default_us = 0, step_best_us = 0;  // at M = 64
  bool first = true;
  for (const Shape& s : kShapes) {
    const size_t wbytes = (size_t)s.N * s.K * 2;
    Bufs b;
    const size_t copies = std::max<size_t>(2, (256u << 20) / wbytes + 1);
    for (size_t i = 0; i < copies; ++i) {
      void* p = nullptr;
      CK(cudaMalloc(&p, wbytes));
      CK(cudaMemset(p, 0, wbytes));  // zeros: timing only
      b.w.push_back(p);
    }
    CK(cudaMalloc(&b.x, (size_t)maxM * s.K * 2));
    CK(cudaMemset(b.x, 0, (size_t)maxM * s.K * 2));
    CK(cudaMalloc(&b.y, (size_t)maxM * s.N * 4));
    CK(cudaMemset(b.y, 0, (size_t)maxM * s.N * 4));
    const cudaDataType ct = s.f32_out ? CUDA_R_32F : CUDA_R_16BF;
    for (int M : kMs) {
      const float alpha = 1.f, beta = s.beta;
      // Row-major y[M, N] = x[M, K] . W[N, K]^T is column-major y^T = W^T(op T) . x^T (CudaBackend::matmul).
      const float us_default = median_us(b, 20, [&](void* w) {
        return cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, s.N, M, s.K, &alpha, w, CUDA_R_16BF, s.K, b.x, CUDA_R_16BF, s.K,
                            &beta, b.y, ct, s.N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS;
      });
      cublasLtMatmulDesc_t op;
      BK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
      const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
      BK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
      BK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
      cublasLtMatrixLayout_t la, lb, lc;
      BK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, s.K, s.N, s.K));
      BK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, s.K, M, s.K));
      BK(cublasLtMatrixLayoutCreate(&lc, ct, s.N, M, s.N));
      cublasLtMatmulPreference_t pref;
      BK(cublasLtMatmulPreferenceCreate(&pref));
      const size_t wsb = kWorkspace;
      BK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof(wsb)));
      cublasLtMatmulHeuristicResult_t res[16];
      int n = 0;
      BK(cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 16, res, &n));
      float best = -1.f;
      int best_i = -1;
      std::string algos;
      for (int i = 0; i < n; ++i) {
        const float us = median_us(b, 20, [&](void* w) {
          return cublasLtMatmul(lt, op, &alpha, w, la, b.x, lb, &beta, b.y, lc, b.y, lc, &res[i].algo, ws, kWorkspace, 0) ==
                 CUBLAS_STATUS_SUCCESS;
        });
        char a[64];
        std::snprintf(a, sizeof a, "%s%.1f", i ? "," : "", us);
        algos += a;
        if (us > 0 && (best < 0 || us < best)) { best = us; best_i = i; }
      }
      cublasLtMatmulPreferenceDestroy(pref);
      cublasLtMatrixLayoutDestroy(la);
      cublasLtMatrixLayoutDestroy(lb);
      cublasLtMatrixLayoutDestroy(lc);
      cublasLtMatmulDescDestroy(op);
      const double gbs_default = wbytes / (us_default * 1e-6) / 1e9, gbs_best = best > 0 ? wbytes / (best * 1e-6) / 1e9 : 0;
      std::fprintf(stderr, "%-8s M=%-4d default %8.1f us (%5.0f GB/s)  best of %2d Lt algos %8.1f us (%5.0f GB/s, #%d)\n", s.name, M,
                   us_default, gbs_default, n, best, gbs_best, best_i);
      if (M == 64) {
        step_default_us += s.per_step * us_default;
        step_best_us += s.per_step * (best > 0 ? std::min(best, us_default) : us_default);
      }
      char line[512];
      std::snprintf(line, sizeof line, "%s{\"shape\":\"%s\",\"N\":%d,\"K\":%d,\"M\":%d,\"defaultUs\":%.2f,\"defaultGBs\":%.0f,"
                    "\"bestLtUs\":%.2f,\"bestLtGBs\":%.0f,\"bestLtIndex\":%d,\"ltAlgosUs\":[%s]}",
                    first ? "" : ",", s.name, s.N, s.K, M, us_default, gbs_default, best, gbs_best, best_i, algos.c_str());
      json += line;
      first = false;
    }
    for (void* p : b.w) cudaFree(p);
    cudaFree(b.x);
    cudaFree(b.y);
  }
  char tail[256];
  std::snprintf(tail, sizeof tail, "],\"decodeStepAtM64\":{\"defaultMs\":%.3f,\"bestMs\":%.3f,\"savingMs\":%.3f}}",
                step_default_us / 1000, step_best_us / 1000, (step_default_us - step_best_us) / 1000);
  json += tail;
  std::printf("%s\n", json.c_str());
  std::fprintf(stderr, "decode step GEMMs at M=64: default %.3f ms, best per shape %.3f ms\n", step_default_us / 1000, step_best_us / 1000);
  return 0;
}
