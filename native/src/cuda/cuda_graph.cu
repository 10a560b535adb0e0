// Decode steps of 1..4 sequences as CUDA graphs: at batch 1 a 7B step is ~330 small kernels,
// whose launch cost and gaps are a visible share of the ~5 ms a token takes. One graph per
// bucket (1, 2, 4 sequences) is captured on first use; its kernels read tokens, positions, slots
// and block tables from the packed metadata buffer (fixed address, refreshed by one copy before
// each replay), and the attention split count depends only on the bucket, so replays stay valid
// as contexts grow. Reallocating any scratch buffer bumps epoch_ and forces a re-capture.
#include "cuda/cuda_backend.h"
#include "cuda/cuda_common.h"

namespace ns::cuda {

void CudaBackend::run_graph(const StepPlan& p, const StepInput& in) {
  DecodeGraph& g = graphs_[p.bucket];
  if (g.exec && g.epoch != epoch_) {
    NS_CUDA(cudaGraphExecDestroy(g.exec));
    g.exec = nullptr;
  }
  if (!g.exec) {
    cudaGraph_t graph = nullptr;
    NS_CUDA(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    try {
      enqueue_forward(p, in);
    } catch (...) {
      cudaStreamEndCapture(stream_, &graph);
      if (graph) cudaGraphDestroy(graph);
      cudaGetLastError();
      throw;
    }
    NS_CUDA(cudaStreamEndCapture(stream_, &graph));
    const cudaError_t e = cudaGraphInstantiate(&g.exec, graph, 0);
    cudaGraphDestroy(graph);
    NS_CUDA(e);
    g.epoch = epoch_;
  }
  NS_CUDA(cudaGraphLaunch(g.exec, stream_));
}

}  // namespace ns::cuda
