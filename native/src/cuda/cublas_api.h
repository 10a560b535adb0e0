// The few cuBLAS declarations we use, written out so that the build needs no cuBLAS headers or
// libraries: libcublas is dlopen'ed at run time (cublas_loader.cu). Values are those of
// cublas_api.h in cuBLAS 12/13 (stable ABI: cublasCreate_v2, cublasGemmEx, ...).
#pragma once

#include <cuda_runtime.h>
#include <library_types.h>  // cudaDataType (CUDA_R_16BF = 14, CUDA_R_16F = 2, CUDA_R_32F = 0)

#include <string>

namespace ns::cuda {

typedef struct cublasContext* cublasHandle_t;
typedef int cublasStatus_t;             // CUBLAS_STATUS_SUCCESS = 0
typedef int cublasOperation_t;          // CUBLAS_OP_N = 0, CUBLAS_OP_T = 1
typedef int cublasComputeType_t;        // CUBLAS_COMPUTE_32F = 68
typedef int cublasGemmAlgo_t;           // CUBLAS_GEMM_DEFAULT = -1
constexpr cublasStatus_t CUBLAS_STATUS_SUCCESS = 0;
constexpr cublasOperation_t CUBLAS_OP_N = 0;
constexpr cublasOperation_t CUBLAS_OP_T = 1;
constexpr cublasComputeType_t CUBLAS_COMPUTE_32F = 68;
constexpr cublasGemmAlgo_t CUBLAS_GEMM_DEFAULT = -1;

struct CublasApi {
  cublasStatus_t (*create)(cublasHandle_t*) = nullptr;                     // cublasCreate_v2
  cublasStatus_t (*destroy)(cublasHandle_t) = nullptr;                     // cublasDestroy_v2
  cublasStatus_t (*set_stream)(cublasHandle_t, cudaStream_t) = nullptr;    // cublasSetStream_v2
  cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int m, int n, int k,
                            const void* alpha, const void* A, cudaDataType Atype, int lda, const void* B,
                            cudaDataType Btype, int ldb, const void* beta, void* C, cudaDataType Ctype,
                            int ldc, cublasComputeType_t compute, cublasGemmAlgo_t algo) = nullptr;
  // cublasSetWorkspace_v2; optional (nullptr when the library lacks it). A workspace of our own keeps
  // cuBLAS from allocating one while a stream is being captured into a CUDA graph.
  cublasStatus_t (*set_workspace)(cublasHandle_t, void* workspace, size_t bytes) = nullptr;
  std::string path;  // the library that was loaded
};

// Loads libcublas once (thread-safe). Returns nullptr and sets `why` (naming every place it
// looked) when it cannot be found or lacks a symbol.
const CublasApi* cublas_api(std::string* why);

}  // namespace ns::cuda
