// Decode steps as CUDA graphs. At batch 1 a 7B step is ~330 small kernels, whose launch cost and
// gaps are a visible share of the ~5 ms a token takes; at batch 64 eager launching left the GPU idle
// ~0.57 ms of a ~9.5 ms step (ncu kernel sum 8.88 ms, H200, session 6). One graph per bucket is
// captured on first use; its kernels read tokens, positions, slots and block tables from the packed
// metadata buffer (fixed address, refreshed by one copy before each replay), and the attention split
// count depends only on the bucket, so replays stay valid as contexts grow. Reallocating any scratch
// buffer bumps epoch_ and forces a re-capture.
//
// Buckets: powers of two up to 64 (a decode GEMM of <= 64 rows costs its weight read whatever the
// rows, and padded sequences cost one key of attention each), then multiples of 32 up to graph_max_
// (past ~165 rows a bf16 GEMM on an H200 is compute-bound, and padding would cost real time).
#include <cstdio>

#include "cuda/cuda_backend.h"
#include "cuda/cuda_common.h"

namespace ns::cuda {

int CudaBackend::graph_bucket(int S) const {
  if (S < 1 || S > graph_max_) return 0;
  int b = 1;
  while (b < S && b < 64) b *= 2;
  if (b < S) b = (S + 31) / 32 * 32;
  return b < graph_max_ ? b : graph_max_;  // graph_max_ itself (any value) is the last bucket
}

void CudaBackend::run_graph(const StepPlan& p, const StepInput& in) {
  DecodeGraph& g = graphs_[p.bucket];
  if (g.exec && g.epoch != epoch_) {
    NS_CUDA(cudaGraphExecDestroy(g.exec));
    g.exec = nullptr;
  }
  if (!g.exec) {
    cudaGraph_t graph = nullptr;
    cudaError_t e = cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal);
    std::string why;
    if (e == cudaSuccess) {
      try {
        enqueue_forward(p, in);
      } catch (const std::exception& ex) {
        why = ex.what();
      }
      e = cudaStreamEndCapture(stream_, &graph);
      if (why.empty() && e == cudaSuccess) e = cudaGraphInstantiate(&g.exec, graph, 0);
      if (graph) cudaGraphDestroy(graph);
    }
    if (why.empty() && e != cudaSuccess) why = cudaGetErrorString(e);
    if (!why.empty()) {
      cudaGetLastError();
      g.exec = nullptr;
      // Up to 4 rows there is no cuBLAS call to blame: that is a real failure. Past it, a cuBLAS that
      // cannot be captured turns the larger graphs off and this step runs eagerly (same padded plan).
      if (p.bucket <= 4) throw std::runtime_error("cuda: capturing the decode graph of " + std::to_string(p.bucket) + " failed: " + why);
      std::fprintf(stderr, "nodespeed: decode graphs above 4 sequences off (capturing %d failed: %s)\n", p.bucket, why.c_str());
      graph_max_ = 4;
      enqueue_forward(p, in);
      return;
    }
    g.epoch = epoch_;
  }
  NS_CUDA(cudaGraphLaunch(g.exec, stream_));
}

}  // namespace ns::cuda
