// Decode steps as CUDA graphs. At batch 1 a 7B step is ~330 small kernels, whose launch cost and
// gaps are a visible share of the ~5 ms a token takes; at batch 64 eager launching left the GPU idle
// ~0.57 ms of a ~9.5 ms step (ncu kernel sum 8.88 ms, H200, bench/results/serve-profile-h200-bbaa8c7.json). One graph per bucket is
// captured on first use; its kernels read tokens, positions, slots and block tables from the packed
// metadata buffer (fixed address, refreshed by one copy before each replay), and the attention split
// count depends only on the bucket, so replays stay valid as contexts grow. Reallocating any scratch
// buffer bumps epoch_ and forces a re-capture.
//
// Buckets: powers of two up to 64 (a decode GEMM of <= 64 rows costs its weight read whatever the
// rows, and padded sequences cost one key of attention each), then multiples of 32 up to graph_max_
// (past ~165 rows a bf16 GEMM on an H200 is compute-bound, and padding would cost real time).
#include <cstdio>
#include <string>
#include <vector>

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

bool CudaBackend::capture_graph(const StepPlan& p, const StepInput& in, std::string* why) {
  DecodeGraph& g = graphs_[p.bucket];
  if (g.exec) {
    cudaGraphExecDestroy(g.exec);
    g.exec = nullptr;
  }
  cudaGraph_t graph = nullptr;
  cudaError_t e = cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal);
  if (e == cudaSuccess) {
    try {
      enqueue_any_forward(p, in);
    } catch (const std::exception& ex) {
      *why = ex.what();
    }
    e = cudaStreamEndCapture(stream_, &graph);
    if (why->empty() && e == cudaSuccess) e = cudaGraphInstantiate(&g.exec, graph, 0);
    if (graph) cudaGraphDestroy(graph);
  }
  if (why->empty() && e != cudaSuccess) *why = cudaGetErrorString(e);
  if (!why->empty()) {
    cudaGetLastError();
    g.exec = nullptr;
    return false;
  }
  g.epoch = epoch_;
  return true;
}

void CudaBackend::run_graph(const StepPlan& p, const StepInput& in) {
  DecodeGraph& g = graphs_[p.bucket];
  if (family_ && !g.warmed) {  // the bucket's first step runs eagerly (see DecodeGraph)
    g.warmed = true;
    enqueue_family_forward(p, in);
    return;
  }
  if (!g.exec || g.epoch != epoch_) {
    std::string why;
    if (!capture_graph(p, in, &why)) {
      if (family_) {  // every family kernel is ours or cuBLAS's: run eagerly from now on, and say why
        std::fprintf(stderr, "nodespeed: decode graphs off (capturing %d failed: %s)\n", p.bucket, why.c_str());
        use_graphs_ = false;
        enqueue_family_forward(p, in);
        return;
      }
      // Up to 4 rows there is no cuBLAS call to blame: that is a real failure. Past it, a cuBLAS that
      // cannot be captured turns the larger graphs off and this step runs eagerly (same padded plan).
      if (p.bucket <= 4) throw std::runtime_error("cuda: capturing the decode graph of " + std::to_string(p.bucket) + " failed: " + why);
      std::fprintf(stderr, "nodespeed: decode graphs above 4 sequences off (capturing %d failed: %s)\n", p.bucket, why.c_str());
      graph_max_ = 4;
      enqueue_forward(p, in);
      return;
    }
  }
  NS_CUDA(cudaGraphLaunch(g.exec, stream_));
}

// Captures every bucket's graph from a plan of dummy decodes (token 0 at position 0 in block 0,
// never launched: a replay reads the real step's metadata). Largest bucket first, so the metadata
// and logits buffers grow before the smaller graphs are taken; a pass that still reallocated
// something (epoch_ moved) is repeated. A failure leaves the bucket to be captured on first use.
void CudaBackend::capture_decode_graphs() {
  const auto& c = cfg_;
  // tp > 1 graphs stay captured on first use: their collectives pair up with the peers' at run time.
  if (!use_graphs_ || !c.has_embedding || !c.has_head || max_blocks_per_seq_ == 0 || c.tp_size > 1) return;
  std::vector<int> buckets;
  for (int S = graph_max_; S >= 1; --S)
    if (graph_bucket(S) == S) buckets.push_back(S);
  static const int32_t zero = 0;
  for (int pass = 0; pass < 2; ++pass) {
    const uint64_t before = epoch_;
    for (int b : buckets) {
      StepInput in;
      in.seqs.resize(b);
      for (SeqInput& q : in.seqs) {
        q.tokens = &zero;
        q.n_tokens = 1;
        q.block_table = &zero;
        q.n_blocks = 1;
        if (c.kv_window_group) {
          q.window_block_table = &zero;
          q.n_window_blocks = 1;
        }
      }
      const StepPlan p = plan_step(in);
      if (p.bucket != b) continue;  // not graphable (GEMV off at <= 4, a TP comm without P2P, ...)
      ensure_activations(p.T, std::max(p.R, 1), p.NS, attention_ws_floats(p.splits, p.n_simt, c.n_heads, c.head_dim));
      pack(in, p);
      const DecodeGraph& g = graphs_[b];
      if (g.exec && g.epoch == epoch_) continue;
      std::string why;
      if (!capture_graph(p, in, &why)) {
        std::fprintf(stderr, "nodespeed: decode graph of %d not captured at load (%s)\n", b, why.c_str());
        if (b > 4) graph_max_ = std::min(graph_max_, 4);
        return;
      }
    }
    if (epoch_ == before) break;
  }
}

}  // namespace ns::cuda
