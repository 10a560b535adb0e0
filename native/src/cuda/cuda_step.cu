// CudaBackend::step: one forward over every sequence's new tokens (prefill chunks and decodes
// mixed), then the LM head and sampling on the GPU. The host packs all per-token metadata into
// one pinned buffer copied with a single transfer; the only host wait is the final one for the
// sampled ids (and logits / hidden states when asked for).
#include <cuda_profiler_api.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "cuda/cuda_backend.h"
#include "cuda/cuda_common.h"
#include "cuda/kernels.h"

namespace ns::cuda {

namespace {

// Offsets (in int32 words) of each array inside the packed metadata buffer.
struct MetaLayout {
  size_t tokens, pos, slot, tok_seq, seq_bt_off, block_tables, rows, sample_rows, params, total;
};

}  // namespace

// NODESPEED_CUDA_PROFILE_STEP=N brackets the N-th step (0-based, per process) with
// cudaProfilerStart/Stop, so `ncu --profile-from-start off` records exactly one step.
struct ProfileWindow {
  bool on = false;
  explicit ProfileWindow(long step) {
    static const long want = [] { const char* e = std::getenv("NODESPEED_CUDA_PROFILE_STEP"); return e ? std::atol(e) : -1L; }();
    on = want >= 0 && step == want;
    if (on) cudaProfilerStart();
  }
  ~ProfileWindow() { if (on) cudaProfilerStop(); }
};

void CudaBackend::step(const StepInput& in, StepOutput& out) {
  static long step_counter = 0;
  ProfileWindow profile(step_counter++);
  if (!finalized_) throw std::runtime_error("cuda: step before finalize");
  if (cfg_.tp_size > 1 && !comm_) throw std::runtime_error("cuda: tp_size > 1 needs set_tp_comm before step");
  NS_CUDA(cudaSetDevice(cfg_.device_index));
  const auto& c = cfg_;
  const int S = static_cast<int>(in.seqs.size());
  const int B = c.kv_block_size;
  int T = 0, n_bt = 0, R = 0, NS = 0, max_ctx = 0;
  bool any_all_logits = false;
  for (int s = 0; s < S; ++s) {
    const SeqInput& q = in.seqs[s];
    if (q.n_tokens <= 0) throw std::runtime_error("cuda: seqs[" + std::to_string(s) + "] has no tokens");
    if (q.pos < 0) throw std::runtime_error("cuda: seqs[" + std::to_string(s) + "].pos is negative");
    const int end = q.pos + q.n_tokens;
    if (c.max_position > 0 && end > c.max_position)
      throw std::runtime_error("cuda: seqs[" + std::to_string(s) + "] reaches position " + std::to_string(end) +
                               " > max_position " + std::to_string(c.max_position));
    if ((int64_t)q.n_blocks * B < end)
      throw std::runtime_error("cuda: seqs[" + std::to_string(s) + "] block table covers " +
                               std::to_string(q.n_blocks * B) + " positions, needs " + std::to_string(end));
    if (c.has_embedding && !q.tokens) throw std::runtime_error("cuda: seqs[" + std::to_string(s) + "] has no tokens");
    T += q.n_tokens;
    n_bt += q.n_blocks;
    max_ctx = std::max(max_ctx, end);
    if (c.has_head && (q.sample || in.want_logits || q.all_logits)) R += q.all_logits ? q.n_tokens : 1;
    if (c.has_head && q.sample) ++NS;
    any_all_logits |= q.all_logits;
  }
  out.sampled.clear();
  out.logits.clear();
  out.hidden_out.clear();
  if (T == 0) return;

  MetaLayout m{};
  size_t o = 0;
  m.tokens = o; o += T;
  m.pos = o; o += T;
  m.slot = o; o += T;
  m.tok_seq = o; o += T;
  m.seq_bt_off = o; o += S;
  m.block_tables = o; o += n_bt;
  m.rows = o; o += R;
  m.sample_rows = o; o += NS;
  m.params = o; o += 4 * (size_t)NS;
  m.total = o;
  meta_host_.reserve(4 * m.total);
  meta_.reserve(4 * m.total);
  int32_t* h = static_cast<int32_t*>(meta_host_.ptr);
  float* hp = reinterpret_cast<float*>(h + m.params);
  int t = 0, bt_off = 0, r = 0, ns = 0;
  for (int s = 0; s < S; ++s) {
    const SeqInput& q = in.seqs[s];
    h[m.seq_bt_off + s] = bt_off;
    for (int b = 0; b < q.n_blocks; ++b) {
      const int blk = q.block_table[b];
      if (blk < 0 || blk >= kv_blocks_)
        throw std::runtime_error("cuda: seqs[" + std::to_string(s) + "].block_table[" + std::to_string(b) + "] = " +
                                 std::to_string(blk) + " is outside [0, " + std::to_string(kv_blocks_) + ")");
      h[m.block_tables + bt_off + b] = blk;
    }
    bt_off += q.n_blocks;
    for (int i = 0; i < q.n_tokens; ++i, ++t) {
      const int p = q.pos + i;
      const int32_t tok = c.has_embedding ? q.tokens[i] : 0;
      if (c.has_embedding && (tok < 0 || tok >= c.vocab_size))
        throw std::runtime_error("cuda: seqs[" + std::to_string(s) + "] token " + std::to_string(tok) +
                                 " is outside the vocabulary (" + std::to_string(c.vocab_size) + ")");
      h[m.tokens + t] = tok;
      h[m.pos + t] = p;
      h[m.slot + t] = q.block_table[p / B] * B + p % B;
      h[m.tok_seq + t] = s;
      const bool last = i == q.n_tokens - 1;
      if (c.has_head && (q.all_logits || (last && (q.sample || in.want_logits)))) {
        if (last && q.sample) {
          h[m.sample_rows + ns] = r;
          const SamplingParams& sp = q.sampling;
          hp[4 * ns] = sp.temperature;
          hp[4 * ns + 1] = static_cast<float>(sp.top_k);
          hp[4 * ns + 2] = sp.top_p;
          // The sampled token's absolute position (it will sit at pos + n_tokens).
          hp[4 * ns + 3] = sampling_uniform(sp.seed, q.pos + q.n_tokens);
          ++ns;
        }
        h[m.rows + r++] = t;
      }
    }
  }

  // Flash-decoding split: enough (token, head, split) blocks to fill the GPU twice over.
  const int base_blocks = T * c.n_heads;
  int splits = 1;
  if (base_blocks < 2 * sm_count_) splits = std::min((max_ctx + 63) / 64, (2 * sm_count_ + base_blocks - 1) / base_blocks);
  splits = std::max(splits, 1);
  const int chunk = (max_ctx + splits - 1) / splits;
  splits = (max_ctx + chunk - 1) / chunk;
  ensure_activations(T, std::max(R, 1), NS, splits > 1 ? splits * T * c.n_heads * (c.head_dim + 2) : 0);

  cudaStream_t st = stream_;
  NS_CUDA(cudaMemcpyAsync(meta_.ptr, meta_host_.ptr, 4 * m.total, cudaMemcpyHostToDevice, st));
  const int32_t* d = meta_.as<int32_t>();
  float* res = residual_.as<float>();
  const size_t H = c.hidden;

  if (c.has_embedding) {
    embedding(act_, embed_.ptr, d + m.tokens, T, c.hidden, c.vocab_start, c.vocab_end, res, st);
    if (c.tp_size > 1) comm_->all_reduce_sum(res, (size_t)T * H, DType::F32, st);
  } else {
    if (!in.hidden_in) throw std::runtime_error("cuda: a later pipeline stage needs hidden_in");
    NS_CUDA(cudaMemcpyAsync(xb_.ptr, in.hidden_in, (size_t)T * H * dtype_size(act_), cudaMemcpyHostToDevice, st));
    convert(DType::F32, res, act_, xb_.ptr, (size_t)T * H, st);
  }

  const int qd = c.n_heads * c.head_dim;
  for (int l = 0; l < n_layers_; ++l) {
    const LayerWeights& L = layers_[l];
    rmsnorm(act_, res, nullptr, T, c.hidden, L.in_norm.as<float>(), c.rms_eps, xb_.ptr, st);
    matmul(xb_.ptr, L.qkv.ptr, T, qkv_rows_, c.hidden, qkv_.ptr, Out::Act);
    rope_kv_write(act_, qkv_.ptr, c.qkv_bias ? L.qkv_bias.ptr : nullptr, T, c.n_heads, c.n_kv_heads, c.head_dim,
                  d + m.pos, d + m.slot, inv_freq_.as<float>(), kcache_[l], vcache_[l], st);
    AttnArgs a{qkv_.ptr, T, c.n_heads, c.n_kv_heads, c.head_dim, d + m.pos, d + m.tok_seq, d + m.seq_bt_off,
               d + m.block_tables, B, kcache_[l], vcache_[l], attn_.ptr, splits, chunk, attn_ws_.as<float>()};
    attention(act_, a, st);
    row_parallel_into_residual(attn_.ptr, L.o.ptr, T, qd);
    rmsnorm(act_, res, nullptr, T, c.hidden, L.post_norm.as<float>(), c.rms_eps, xb_.ptr, st);
    matmul(xb_.ptr, L.gate_up.ptr, T, 2 * c.intermediate, c.hidden, gu_.ptr, Out::Act);
    swiglu(act_, gu_.ptr, T, c.intermediate, act_mlp_.ptr, st);
    row_parallel_into_residual(act_mlp_.ptr, L.down.ptr, T, c.intermediate);
  }

  if (!c.has_head) {
    convert(act_, xb_.ptr, DType::F32, res, (size_t)T * H, st);
    out.hidden_out.resize((size_t)T * H * dtype_size(act_));
    NS_CUDA(cudaMemcpyAsync(out.hidden_out.data(), xb_.ptr, out.hidden_out.size(), cudaMemcpyDeviceToHost, st));
    NS_CUDA(cudaStreamSynchronize(st));
    return;
  }
  if (R == 0) {
    NS_CUDA(cudaStreamSynchronize(st));
    return;
  }
  rmsnorm(act_, res, d + m.rows, R, c.hidden, final_norm_.as<float>(), c.rms_eps, xb_.ptr, st);
  const void* head = c.tied_embeddings ? embed_.ptr : lm_head_.ptr;
  float* logits = logits_.as<float>();
  if (c.tp_size == 1) {
    matmul(xb_.ptr, head, R, vocab_shard_, c.hidden, logits, Out::F32);
  } else {
    matmul(xb_.ptr, head, R, vocab_shard_, c.hidden, logits_local_.ptr, Out::F32);
    comm_->all_gather(logits_local_.ptr, logits_gather_.ptr, (size_t)R * vocab_shard_, DType::F32, st);
    unshard_logits(logits_gather_.as<float>(), logits, c.tp_size, R, vocab_shard_, st);
  }
  sample(logits, c.vocab_size, d + m.sample_rows, reinterpret_cast<const float*>(d + m.params), NS,
         ids_.as<int32_t>(), st);
  if (NS > 0) NS_CUDA(cudaMemcpyAsync(ids_host_.ptr, ids_.ptr, 4 * NS, cudaMemcpyDeviceToHost, st));
  if (in.want_logits || any_all_logits) {
    out.logits.resize((size_t)R * c.vocab_size);
    NS_CUDA(cudaMemcpyAsync(out.logits.data(), logits, 4 * out.logits.size(), cudaMemcpyDeviceToHost, st));
  }
  NS_CUDA(cudaStreamSynchronize(st));
  const int32_t* ids = static_cast<const int32_t*>(ids_host_.ptr);
  out.sampled.assign(ids, ids + NS);
}

}  // namespace ns::cuda
