// CudaBackend::step: one forward over every sequence's new tokens (prefill chunks and decodes
// mixed), then the LM head and sampling on the GPU. The host packs all per-token metadata into
// one pinned buffer copied with a single transfer; the only host wait is the final one for the
// sampled ids (and logits / hidden states when asked for). Small all-decode batches replay a
// captured CUDA graph (cuda_graph.cu) instead of launching ~10 kernels per layer.
#include <cuda_profiler_api.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "common/moe_route.h"
#include "common/settings.h"
#include "cpu/rope.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_common.h"
#include "cuda/family_kernels.h"
#include "cuda/kernels.h"

namespace ns::cuda {

namespace {

// The cuda_profile_step setting (NODESPEED_CUDA_PROFILE_STEP=N) brackets the N-th step (0-based,
// per process) with cudaProfilerStart/Stop, so `ncu --profile-from-start off` records exactly one step.
struct ProfileWindow {
  bool on = false;
  explicit ProfileWindow(long step) {
    static const long want = settings().cuda_profile_step;
    on = want >= 0 && step == want;
    if (on) cudaProfilerStart();
  }
  ~ProfileWindow() { if (on) cudaProfilerStop(); }
};

std::string seq_name(int s) { return "cuda: seqs[" + std::to_string(s) + "]"; }

}  // namespace

void CudaBackend::StepPlan::layout() {
  size_t o = 0;
  extras_ptr = o; o += 2;  // the extras buffer's device address (8-byte aligned: the buffer's start)
  tokens = o; o += T;
  pos = o; o += T;
  slot = o; o += T;
  tok_seq = o; o += T;
  seq_bt_off = o; o += S;
  rows = o; o += R;
  sample_rows = o; o += NS;
  params = o; o += (sizeof(SampleRow) / 4) * (size_t)NS;
  tiles = o; o += 2 * (size_t)n_tiles;
  simt_tokens = o; o += n_tiles > 0 ? n_simt : 0;
  // Last: the only array whose length a graph bucket does not fix (every offset above is the same
  // for all steps of a bucket, so a captured graph's pointers stay valid while contexts grow).
  block_tables = o; o += n_bt;
  total = o;
}

bool CudaBackend::flash_seq(const StepPlan& p, int n_tokens) const {
  return use_flash_ && (n_tokens >= kFlashMinTokens || p.flash_short);
}

// Flash-decoding split: enough (token, head, split) blocks to fill the GPU twice over, at most
// max_attn_splits_ (NODESPEED_CUDA_ATTN_SPLITS_MAX, default 16; 1: no split and no merge kernel).
int CudaBackend::attention_splits(int T) const {
  const int base = T * cfg_.n_heads;
  if (base >= 2 * sm_count_) return 1;
  return std::min(max_attn_splits_, (2 * sm_count_ + base - 1) / base);
}

CudaBackend::StepPlan CudaBackend::plan_step(const StepInput& in) const {
  const auto& c = cfg_;
  StepPlan p;
  p.S = static_cast<int>(in.seqs.size());
  bool all_decode = p.S > 0, any_all_logits = false, all_sample = true;
  int n_short = 0;  // sequences with fewer than kFlashMinTokens new tokens
  for (int s = 0; s < p.S; ++s) {
    const SeqInput& q = in.seqs[s];
    if (q.n_tokens <= 0) throw std::runtime_error(seq_name(s) + " has no tokens");
    if (q.pos < 0) throw std::runtime_error(seq_name(s) + ".pos is negative");
    const int end = q.pos + q.n_tokens;
    if (c.max_position > 0 && end > c.max_position)
      throw std::runtime_error(seq_name(s) + " reaches position " + std::to_string(end) + " > max_position " +
                               std::to_string(c.max_position));
    if ((int64_t)q.n_blocks * c.kv_block_size < end)
      throw std::runtime_error(seq_name(s) + " block table covers " + std::to_string(q.n_blocks * c.kv_block_size) +
                               " positions, needs " + std::to_string(end));
    if (c.has_embedding && !q.tokens) throw std::runtime_error(seq_name(s) + " has no token ids");
    if (c.has_head) check_sampling(q.sampling, c.vocab_size, seq_name(s));
    p.T += q.n_tokens;
    p.n_bt += q.n_blocks;
    n_short += q.n_tokens < kFlashMinTokens;
    if (c.has_head && (q.sample || in.want_logits || q.all_logits)) p.R += q.all_logits ? q.n_tokens : 1;
    if (c.has_head && q.sample) ++p.NS;
    if (c.has_head && q.sample) p.any_logprobs |= q.sampling.logprobs >= 0;
    all_decode &= q.n_tokens == 1 && q.n_blocks <= max_blocks_per_seq_;
    all_sample &= q.sample;
    any_all_logits |= q.all_logits;
  }
  p.copy_logits = in.want_logits || any_all_logits;
  const int bucket = graph_bucket(p.S);
  // Up to 4 rows a graph holds only our kernels (GEMV decode); larger ones capture cuBLAS's GEMMs.
  const bool graphable = use_graphs_ && bucket > 0 && (bucket > 4 || use_gemv_) && all_decode && all_sample &&
                         !any_all_logits && c.has_embedding && c.has_head && tp_graphable(bucket) &&
                         max_blocks_per_seq_ > 0 && c.hidden % 8 == 0 && c.intermediate % 8 == 0 &&
                         (c.n_heads * c.head_dim) % 8 == 0;
  if (graphable) {  // padded to the bucket: dummy seqs write no KV (slot -1) and are not returned
    p.bucket = bucket;
    p.T = p.S = p.R = p.NS = p.bucket;
    p.n_bt += 1;  // one zero entry that every dummy sequence's table points at
  }
  // Graph steps (decodes only) stay on the SIMT kernel: its flash-decoding splits fill the GPU.
  p.flash_short = use_flash_ && p.bucket == 0 && (int64_t)n_short * c.n_heads >= flash_decode_min_;
  for (const SeqInput& q : in.seqs)
    if (flash_seq(p, q.n_tokens)) p.n_tiles += (q.n_tokens + kFlashTileQ - 1) / kFlashTileQ;
  if (p.n_tiles == 0) p.n_simt = p.T;
  else for (const SeqInput& q : in.seqs) p.n_simt += flash_seq(p, q.n_tokens) ? 0 : q.n_tokens;
  p.splits = p.n_simt > 0 ? attention_splits(p.n_simt) : 1;
  p.layout();
  return p;
}

void CudaBackend::pack(const StepInput& in, const StepPlan& p) {
  const auto& c = cfg_;
  const int B = c.kv_block_size;
  const bool padded = p.bucket > 0;
  // A graph step reserves the device copy for its bucket's longest possible tables at once, so the
  // buffer (whose address the graphs hold) does not grow, and re-capture, as contexts lengthen.
  const size_t cap = padded ? p.block_tables + (size_t)p.bucket * max_blocks_per_seq_ + 1 : p.total;
  if (meta_.reserve(4 * cap)) ++epoch_;
  meta_host_.reserve(4 * p.total);
  int32_t* h = static_cast<int32_t*>(meta_host_.ptr);
  if (padded) std::memset(h, 0, 4 * p.total);
  SampleRow* rows = reinterpret_cast<SampleRow*>(h + p.params);
  extras_build_.clear();
  int t = 0, bt_off = 0, r = 0, ns = 0, n_tiles = 0, n_simt = 0;
  const int real = static_cast<int>(in.seqs.size());
  for (int s = 0; s < real; ++s) {
    const SeqInput& q = in.seqs[s];
    if (p.n_tiles > 0) {  // attention split: flash query tiles of this sequence, or SIMT tokens
      if (flash_seq(p, q.n_tokens)) {
        for (int i0 = 0; i0 < q.n_tokens; i0 += kFlashTileQ, ++n_tiles) {
          h[p.tiles + 2 * n_tiles] = t + i0;
          h[p.tiles + 2 * n_tiles + 1] = std::min(kFlashTileQ, q.n_tokens - i0);
        }
      } else {
        for (int i = 0; i < q.n_tokens; ++i) h[p.simt_tokens + n_simt++] = t + i;
      }
    }
    h[p.seq_bt_off + s] = bt_off;
    for (int b = 0; b < q.n_blocks; ++b) {
      const int blk = q.block_table[b];
      if (blk < 0 || blk >= kv_blocks_)
        throw std::runtime_error(seq_name(s) + ".block_table[" + std::to_string(b) + "] = " + std::to_string(blk) +
                                 " is outside [0, " + std::to_string(kv_blocks_) + ")");
      h[p.block_tables + bt_off + b] = blk;
    }
    bt_off += q.n_blocks;
    for (int i = 0; i < q.n_tokens; ++i, ++t) {
      const int pos = q.pos + i;
      const int32_t tok = c.has_embedding ? q.tokens[i] : 0;
      if (c.has_embedding && (tok < 0 || tok >= c.vocab_size))
        throw std::runtime_error(seq_name(s) + " token " + std::to_string(tok) + " is outside the vocabulary (" +
                                 std::to_string(c.vocab_size) + ")");
      h[p.tokens + t] = tok;
      h[p.pos + t] = pos;
      h[p.slot + t] = q.block_table[pos / B] * B + pos % B;
      h[p.tok_seq + t] = s;
      const bool last = i == q.n_tokens - 1;
      if (c.has_head && (q.all_logits || (last && (q.sample || in.want_logits)))) {
        if (last && q.sample) {
          h[p.sample_rows + ns] = r;
          // Drawn for the sampled token's absolute position (it will sit at pos + n_tokens).
          const SamplingParams& sp = q.sampling;
          rows[ns] = pack_sample_row(sp, sampling_uniform(sp.seed, q.pos + q.n_tokens),
                                     sp.penalized() ? &penalties_.tokens(q.block_table[0]) : nullptr, extras_build_);
          ++ns;
        }
        h[p.rows + r++] = t;
      }
    }
  }
  if (n_tiles != p.n_tiles || (p.n_tiles > 0 && n_simt != p.n_simt))
    throw std::runtime_error("cuda: attention tile plan mismatch");
  if (p.n_tiles > 1) {  // the tiles with the most keys first (they finish last otherwise)
    struct Tile { int32_t t0, n; };
    Tile* tiles = reinterpret_cast<Tile*>(h + p.tiles);
    const int32_t* pos = h + p.pos;
    std::stable_sort(tiles, tiles + p.n_tiles,
                     [pos](const Tile& x, const Tile& y) { return pos[x.t0] + x.n > pos[y.t0] + y.n; });
  }
  // The extras' address goes into the metadata; the lists themselves are copied by step().
  if (!extras_build_.empty()) {
    extras_host_.reserve(4 * extras_build_.size());
    std::memcpy(extras_host_.ptr, extras_build_.data(), 4 * extras_build_.size());
    extras_.reserve(4 * extras_build_.size());
  }
  extras_words_ = extras_build_.size();
  const void* ex = extras_.ptr;
  std::memcpy(h + p.extras_ptr, &ex, sizeof ex);
  for (int s = real; padded && s < p.bucket; ++s, ++t, ++r, ++ns) {  // dummies: block 0, no KV write
    h[p.seq_bt_off + s] = p.n_bt - 1;  // the zero entry (memset above)
    h[p.slot + t] = -1;
    h[p.tok_seq + t] = s;
    h[p.rows + r] = t;
    h[p.sample_rows + ns] = r;
  }
}

// Everything from the embedding to the sampled ids, enqueued on stream_ without a host wait.
void CudaBackend::enqueue_forward(const StepPlan& p, const StepInput& in) {
  const auto& c = cfg_;
  cudaStream_t st = stream_;
  const int32_t* d = meta_.as<int32_t>();
  float* res = residual_.as<float>();
  const int T = p.T;
  const size_t H = c.hidden;
  if (c.has_embedding) {
    embedding(act_, embed_.ptr, d + p.tokens, T, c.hidden, c.vocab_start, c.vocab_end, res, st);
    if (c.tp_size > 1) comm_->all_reduce_sum(res, (size_t)T * H, DType::F32, st);
  } else {
    if (!in.hidden_in) throw std::runtime_error("cuda: a later pipeline stage needs hidden_in");
    NS_CUDA(cudaMemcpyAsync(xb_.ptr, in.hidden_in, (size_t)T * H * dtype_size(act_), cudaMemcpyHostToDevice, st));
    convert(DType::F32, res, act_, xb_.ptr, (size_t)T * H, st);
  }
  const int qd = c.n_heads * c.head_dim;
  bool normed = false;  // xb_ already holds this layer's input norm (fused into the last all-reduce)
  for (int l = 0; l < n_layers_; ++l) {
    const LayerWeights& L = layers_[l];
    if (!normed) rmsnorm(act_, res, nullptr, T, c.hidden, L.in_norm.as<float>(), c.rms_eps, xb_.ptr, st);
    matmul(xb_.ptr, L.qkv.ptr, T, qkv_rows_, c.hidden, qkv_.ptr, Out::Act);
    rope_kv_write(act_, qkv_.ptr, c.qkv_bias ? L.qkv_bias.ptr : nullptr, T, c.n_heads, c.n_kv_heads, c.head_dim,
                  d + p.pos, d + p.slot, inv_freq_.as<float>(), kcache_[l], vcache_[l], c.kv_block_size, st);
    AttnArgs a{qkv_.ptr, T, c.n_heads, c.n_kv_heads, c.head_dim, d + p.pos, d + p.tok_seq, d + p.seq_bt_off,
               d + p.block_tables, c.kv_block_size, kcache_[l], vcache_[l], attn_.ptr, p.splits, attn_ws_.as<float>(),
               p.n_tiles > 0 ? d + p.simt_tokens : nullptr, p.n_simt, d + p.tiles, p.n_tiles, rounds(kRoundP)};
    attention(act_, a, st);
    if (!row_parallel_into_residual(attn_.ptr, L.o.ptr, T, qd, false, L.post_norm.as<float>()))
      rmsnorm(act_, res, nullptr, T, c.hidden, L.post_norm.as<float>(), c.rms_eps, xb_.ptr, st);
    matmul(xb_.ptr, L.gate_up.ptr, T, 2 * c.intermediate, c.hidden, gu_.ptr, Out::Act);
    const float* next_norm = l + 1 < n_layers_ ? layers_[l + 1].in_norm.as<float>() : nullptr;
    normed = row_parallel_into_residual(gu_.ptr, L.down.ptr, T, c.intermediate, /*swiglu_in=*/true, next_norm);
  }
  if (!c.has_head || p.R == 0) return;
  rmsnorm(act_, res, d + p.rows, p.R, c.hidden, final_norm_.as<float>(), c.rms_eps, xb_.ptr, st);
  const void* head = c.tied_embeddings ? embed_.ptr : lm_head_.ptr;
  float* logits = logits_.as<float>();
  if (c.tp_size == 1) {
    matmul(xb_.ptr, head, p.R, vocab_shard_, c.hidden, logits, Out::F32);
  } else {
    matmul(xb_.ptr, head, p.R, vocab_shard_, c.hidden, logits_local_.ptr, Out::F32);
    comm_->all_gather(logits_local_.ptr, logits_gather_.ptr, (size_t)p.R * vocab_stride_, DType::F32, st);
    unshard_logits(logits_gather_.as<float>(), logits, p.R, vocab_stride_, c.vocab_size, st);
  }
  sample(logits, c.vocab_size, d + p.sample_rows, reinterpret_cast<const SampleRow*>(d + p.params),
         reinterpret_cast<const int32_t* const*>(d + p.extras_ptr), p.NS, ids_.as<int32_t>(),
         reinterpret_cast<float*>(ids_.as<int32_t>() + p.NS), st);
}

// Scratch of the family forward for steps of up to T tokens (reserved at finalize for the largest
// step, before the KV cache takes the rest of the memory).
void CudaBackend::reserve_family(int T) {
  if (!family_ || T <= family_cap_) return;
  const auto& c = cfg_;
  const size_t es = dtype_size(act_), H = c.hidden, TK = (size_t)T * std::max(c.top_k, 1);
  const size_t half = rope_half_ + local_half_;
  rope_dev_.reserve(4 * 2 * half * T);
  rope_host_.reserve(4 * 2 * half * T);
  if (c.num_experts > 0) {
    const size_t I = c.moe_intermediate, Is = c.shared_intermediate;
    router_dev_.reserve(4 * (size_t)T * c.num_experts);
    router_host_.reserve(4 * (size_t)T * c.num_experts);
    route_dev_.reserve(8 * TK);
    route_host_.reserve(8 * TK);
    ex_in_.reserve(es * TK * H);
    ex_gu_.reserve(es * TK * 2 * I);
    ex_act_.reserve(es * TK * I);
    ex_out_.reserve(4 * TK * H);
    if (Is > 0) {
      sh_gu_.reserve(es * T * 2 * Is);
      sh_act_.reserve(es * T * Is);
      sh_out_.reserve(4 * (size_t)T * H);
      sh_z_.reserve(4 * (size_t)T);
    }
  }
  family_cap_ = T;
}

// Every token's cos/sin (times the attention factor) for the global layers' RoPE and, with Gemma
// 3's local RoPE, the sliding layers': computed on the host by the CPU backend's code (dynamic and
// longrope follow each sequence's length at this step), one copy to the device.
void CudaBackend::upload_rope_tables(const StepInput& in, int T) {
  float* h = static_cast<float*>(rope_host_.ptr);
  auto fill = [&](const RopeConfig& rope, const std::vector<float>& fixed, int half, float* cos, float* sin) {
    std::vector<float> inv;
    int t = 0;
    for (const SeqInput& q : in.seqs) {
      if (rope_depends_on_length(rope)) inv = ns::rope_inv_freq(rope, cfg_.head_dim, q.pos + q.n_tokens);
      const std::vector<float>& f = rope_depends_on_length(rope) ? inv : fixed;
      for (int j = 0; j < q.n_tokens; ++j, ++t)
        for (int i = 0; i < half; ++i) {
          const float angle = static_cast<float>(q.pos + j) * f[i];
          cos[(size_t)t * half + i] = static_cast<float>(std::cos(static_cast<double>(angle))) * rope.attention_factor;
          sin[(size_t)t * half + i] = static_cast<float>(std::sin(static_cast<double>(angle))) * rope.attention_factor;
        }
    }
  };
  fill(cfg_.rope, inv_fixed_, rope_half_, h, h + (size_t)T * rope_half_);
  if (cfg_.has_rope_local)
    fill(cfg_.rope_local, local_inv_fixed_, local_half_, h + (size_t)2 * T * rope_half_, h + (size_t)2 * T * rope_half_ + (size_t)T * local_half_);
  NS_CUDA(cudaMemcpyAsync(rope_dev_.ptr, h, 4 * (size_t)2 * T * (rope_half_ + local_half_), cudaMemcpyHostToDevice, stream_));
}

// Routed experts: router logits to the host (one wait per layer), top-k there (common/moe_route.h,
// as the CPU backend), then per expert of this rank: gather its rows, gate|up GEMM, activation,
// down GEMM, weighted scatter-add into tmp_; plus the shared expert behind its sigmoid gate.
void CudaBackend::moe_layer(const LayerWeights& L, int T) {
  const auto& c = cfg_;
  cudaStream_t st = stream_;
  const int E = c.num_experts, K = c.top_k, H = c.hidden, I = c.moe_intermediate;
  const size_t es = dtype_size(act_);
  matmul(xb_.ptr, L.router.ptr, T, E, H, router_dev_.ptr, Out::F32);
  NS_CUDA(cudaMemcpyAsync(router_host_.ptr, router_dev_.ptr, 4 * (size_t)T * E, cudaMemcpyDeviceToHost, st));
  NS_CUDA(cudaStreamSynchronize(st));
  float* logits = static_cast<float*>(router_host_.ptr);
  std::vector<float> w((size_t)T * K);
  std::vector<int> id((size_t)T * K);
  for (int t = 0; t < T; ++t) route_topk(logits + (size_t)t * E, E, K, c.norm_topk, &w[(size_t)t * K], &id[(size_t)t * K]);
  // This rank's experts' rows, expert by expert: token ids then weights in one buffer.
  int32_t* rows = static_cast<int32_t*>(route_host_.ptr);
  float* wts = reinterpret_cast<float*>(rows + (size_t)T * K);
  std::vector<int> start(c.expert_end - c.expert_start + 1, 0);
  int n = 0;
  for (int e = c.expert_start; e < c.expert_end; ++e) {
    start[e - c.expert_start] = n;
    for (int i = 0; i < T * K; ++i)
      if (id[i] == e) { rows[n] = i / K; wts[n] = w[i]; ++n; }
  }
  start.back() = n;
  float* acc = tmp_.as<float>();
  NS_CUDA(cudaMemsetAsync(acc, 0, 4 * (size_t)T * H, st));
  const int32_t* d_rows = route_dev_.as<int32_t>();
  const float* d_w = reinterpret_cast<const float*>(d_rows + (size_t)T * K);
  if (n > 0) {
    NS_CUDA(cudaMemcpyAsync(route_dev_.ptr, rows, 4 * (size_t)n, cudaMemcpyHostToDevice, st));
    NS_CUDA(cudaMemcpyAsync(const_cast<float*>(d_w), wts, 4 * (size_t)n, cudaMemcpyHostToDevice, st));
  }
  for (int e = 0; e < c.expert_end - c.expert_start; ++e) {
    const int m = start[e + 1] - start[e];
    if (m == 0) continue;
    gather_rows(act_, xb_.ptr, d_rows + start[e], m, H, ex_in_.ptr, st);
    matmul(ex_in_.ptr, static_cast<const char*>(L.ex_gate_up.ptr) + es * e * 2 * I * H, m, 2 * I, H, ex_gu_.ptr, Out::Act);
    gated_act(act_, ex_gu_.ptr, nullptr, m, I, c.act == Activation::GeluTanh, ex_act_.ptr, st);
    matmul(ex_act_.ptr, static_cast<const char*>(L.ex_down.ptr) + es * e * H * I, m, H, I, ex_out_.ptr, Out::F32);
    scatter_add(acc, d_rows + start[e], d_w + start[e], ex_out_.as<float>(), m, H, st);
  }
  if (c.shared_intermediate > 0) {
    const int Is = c.shared_intermediate;
    matmul(xb_.ptr, L.sh_gate_up.ptr, T, 2 * Is, H, sh_gu_.ptr, Out::Act);
    gated_act(act_, sh_gu_.ptr, nullptr, T, Is, c.act == Activation::GeluTanh, sh_act_.ptr, st);
    matmul(sh_act_.ptr, L.sh_down.ptr, T, H, Is, sh_out_.ptr, Out::F32);
    matmul(xb_.ptr, L.sh_gate.ptr, T, 1, H, sh_z_.ptr, Out::F32);
    sigmoid_gate_add(acc, sh_z_.as<float>(), sh_out_.as<float>(), T, H, st);
  }
}

// The families' forward, read top to bottom like the CPU one: every switch of ShardConfig, plain
// kernels, row-parallel partial sums in tmp_ (f32) all-reduced before they join the residual.
void CudaBackend::enqueue_family_forward(const StepPlan& p, const StepInput& in) {
  const auto& c = cfg_;
  cudaStream_t st = stream_;
  const int32_t* d = meta_.as<int32_t>();
  float* res = residual_.as<float>();
  float* part = tmp_.as<float>();
  const int T = p.T, H = c.hidden, qd = c.n_heads * c.head_dim;
  const size_t n = (size_t)T * H;
  reserve_family(T);
  upload_rope_tables(in, T);
  if (c.has_embedding) {
    embedding(act_, embed_.ptr, d + p.tokens, T, H, c.vocab_start, c.vocab_end, res, st);
    if (c.tp_size > 1) comm_->all_reduce_sum(res, n, DType::F32, st);
    if (c.embed_scale != 1.f) scale_f32(res, n, c.embed_scale, st);
  } else {
    if (!in.hidden_in) throw std::runtime_error("cuda: a later pipeline stage needs hidden_in");
    NS_CUDA(cudaMemcpyAsync(xb_.ptr, in.hidden_in, n * dtype_size(act_), cudaMemcpyHostToDevice, st));
    convert(DType::F32, res, act_, xb_.ptr, n, st);
  }
  const float* tabs = rope_dev_.as<float>();
  const float scale = c.attn_scale > 0 ? c.attn_scale : 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  const bool rank0 = c.tp_rank == 0;
  for (int l = 0; l < n_layers_; ++l) {
    const LayerWeights& L = layers_[l];
    rmsnorm(act_, res, nullptr, T, H, L.in_norm.as<float>(), c.rms_eps, xb_.ptr, st);
    matmul(xb_.ptr, L.qkv.ptr, T, qkv_rows_, H, qkv_.ptr, Out::Act);
    const bool local = L.sliding && c.has_rope_local;
    const int half = local ? local_half_ : rope_half_;
    const float* cos = local ? tabs + (size_t)2 * T * rope_half_ : tabs;
    family_qkv(act_, qkv_.ptr, c.qkv_bias ? L.qkv_bias.ptr : nullptr, L.q_norm.as<float>(), L.k_norm.as<float>(),
               c.rms_eps, T, c.n_heads, c.n_kv_heads, c.head_dim, half, cos, cos + (size_t)T * half, d + p.slot,
               kcache_[l], vcache_[l], c.kv_block_size, st);
    FamilyAttnArgs a{qkv_.ptr, T, c.n_heads, c.n_kv_heads, c.head_dim, d + p.pos, d + p.tok_seq, d + p.seq_bt_off,
                     d + p.block_tables, c.kv_block_size, kcache_[l], vcache_[l], attn_.ptr, scale, c.attn_softcap,
                     L.sliding ? c.sliding_window : 0};
    family_attention(act_, a, st);
    matmul(attn_.ptr, L.o.ptr, T, H, qd, part, Out::F32);
    if (c.o_bias && rank0) add_bias_f32(part, L.o_bias.as<float>(), T, H, st);
    if (c.tp_size > 1) comm_->all_reduce_sum(part, n, DType::F32, st);
    add_normed(res, part, c.sandwich_norms ? L.post_norm.as<float>() : nullptr, c.rms_eps, T, H, st);
    rmsnorm(act_, res, nullptr, T, H, (c.sandwich_norms ? L.pre_ff_norm : L.post_norm).as<float>(), c.rms_eps, xb_.ptr, st);
    if (L.sparse) {
      moe_layer(L, T);
    } else {
      matmul(xb_.ptr, L.gate_up.ptr, T, 2 * c.intermediate, H, gu_.ptr, Out::Act);
      gated_act(act_, gu_.ptr, L.gu_bias.as<float>(), T, c.intermediate, c.act == Activation::GeluTanh, act_mlp_.ptr, st);
      matmul(act_mlp_.ptr, L.down.ptr, T, H, c.intermediate, part, Out::F32);
      if (c.mlp_bias && rank0) add_bias_f32(part, L.down_bias.as<float>(), T, H, st);
    }
    if (c.tp_size > 1) comm_->all_reduce_sum(part, n, DType::F32, st);
    add_normed(res, part, c.sandwich_norms ? L.post_ff_norm.as<float>() : nullptr, c.rms_eps, T, H, st);
  }
  if (!c.has_head || p.R == 0) return;
  rmsnorm(act_, res, d + p.rows, p.R, H, final_norm_.as<float>(), c.rms_eps, xb_.ptr, st);
  const void* head = c.tied_embeddings ? embed_.ptr : lm_head_.ptr;
  float* logits = logits_.as<float>();
  if (c.tp_size == 1) {
    matmul(xb_.ptr, head, p.R, vocab_shard_, H, logits, Out::F32);
    if (c.final_softcap > 0) softcap_f32(logits, (size_t)p.R * vocab_shard_, c.final_softcap, st);
  } else {
    matmul(xb_.ptr, head, p.R, vocab_shard_, H, logits_local_.ptr, Out::F32);
    if (c.final_softcap > 0) softcap_f32(logits_local_.as<float>(), (size_t)p.R * vocab_shard_, c.final_softcap, st);
    comm_->all_gather(logits_local_.ptr, logits_gather_.ptr, (size_t)p.R * vocab_stride_, DType::F32, st);
    unshard_logits(logits_gather_.as<float>(), logits, p.R, vocab_stride_, c.vocab_size, st);
  }
  sample(logits, c.vocab_size, d + p.sample_rows, reinterpret_cast<const SampleRow*>(d + p.params),
         reinterpret_cast<const int32_t* const*>(d + p.extras_ptr), p.NS, ids_.as<int32_t>(),
         reinterpret_cast<float*>(ids_.as<int32_t>() + p.NS), st);
}

void CudaBackend::step(const StepInput& in, StepOutput& out) {
  static long step_counter = 0;
  ProfileWindow profile(step_counter++);
  if (!finalized_) throw std::runtime_error("cuda: step before finalize");
  if (cfg_.tp_size > 1 && !comm_) throw std::runtime_error("cuda: tp_size > 1 needs set_tp_comm before step");
  NS_CUDA(cudaSetDevice(cfg_.device_index));
  const auto& c = cfg_;
  out.sampled.clear();
  out.logits.clear();
  out.hidden_out.clear();
  out.sampled_logprob.clear();
  out.top_ids.clear();
  out.top_logprobs.clear();
  const StepPlan p = plan_step(in);
  if (p.T == 0) return;
  if (c.has_head) feed_penalties(penalties_, in);
  ensure_activations(p.T, std::max(p.R, 1), p.NS, p.splits > 1 ? p.splits * p.n_simt * c.n_heads * (c.head_dim + 2) : 0);
  pack(in, p);
  cudaStream_t st = stream_;
  NS_CUDA(cudaMemcpyAsync(meta_.ptr, meta_host_.ptr, 4 * p.total, cudaMemcpyHostToDevice, st));
  if (extras_words_ > 0) NS_CUDA(cudaMemcpyAsync(extras_.ptr, extras_host_.ptr, 4 * extras_words_, cudaMemcpyHostToDevice, st));
  if (p.bucket > 0) run_graph(p, in);
  else if (family_) enqueue_family_forward(p, in);
  else enqueue_forward(p, in);

  if (!c.has_head) {
    const size_t n = (size_t)p.T * c.hidden;
    convert(act_, xb_.ptr, DType::F32, residual_.ptr, n, st);
    out.hidden_out.resize(n * dtype_size(act_));
    NS_CUDA(cudaMemcpyAsync(out.hidden_out.data(), xb_.ptr, out.hidden_out.size(), cudaMemcpyDeviceToHost, st));
    NS_CUDA(cudaStreamSynchronize(st));
    if (c.tp_size > 1) comm_->check_healthy();
    return;
  }
  // A padded (graph) step returns only the real sequences' ids and logits.
  const int real_rows = p.bucket > 0 ? static_cast<int>(in.seqs.size()) : p.R;
  const int real_ns = p.bucket > 0 ? static_cast<int>(in.seqs.size()) : p.NS;
  if (real_ns > 0) NS_CUDA(cudaMemcpyAsync(ids_host_.ptr, ids_.ptr, 4 * real_ns, cudaMemcpyDeviceToHost, st));
  const size_t lp_words = p.any_logprobs ? (size_t)real_ns * kLogprobWords : 0;
  if (lp_words > 0)  // after the NS ids (p.NS: the bucket's count on a padded step)
    NS_CUDA(cudaMemcpyAsync(static_cast<int32_t*>(ids_host_.ptr) + p.NS, ids_.as<int32_t>() + p.NS, 4 * lp_words,
                            cudaMemcpyDeviceToHost, st));
  if (p.copy_logits && real_rows > 0) {
    out.logits.resize((size_t)real_rows * c.vocab_size);
    NS_CUDA(cudaMemcpyAsync(out.logits.data(), logits_.ptr, 4 * out.logits.size(), cudaMemcpyDeviceToHost, st));
  }
  NS_CUDA(cudaStreamSynchronize(st));
  if (c.tp_size > 1) comm_->check_healthy();
  const int32_t* ids = static_cast<const int32_t*>(ids_host_.ptr);
  out.sampled.assign(ids, ids + real_ns);
  if (lp_words > 0) {
    const float* lp = reinterpret_cast<const float*>(ids + p.NS);
    out.sampled_logprob.resize(real_ns);
    out.top_ids.resize((size_t)real_ns * kMaxLogprobs);
    out.top_logprobs.resize((size_t)real_ns * kMaxLogprobs);
    int j = 0;
    for (const SeqInput& q : in.seqs) {
      if (!q.sample) continue;
      const float* row = lp + (size_t)j * kLogprobWords;
      const bool asked = q.sampling.logprobs >= 0;
      out.sampled_logprob[j] = asked ? row[0] : NAN;
      for (int k = 0; k < kMaxLogprobs; ++k) {
        int32_t id;
        std::memcpy(&id, &row[1 + k], 4);
        out.top_ids[(size_t)j * kMaxLogprobs + k] = asked ? id : -1;
        out.top_logprobs[(size_t)j * kMaxLogprobs + k] = asked ? row[1 + kMaxLogprobs + k] : NAN;
      }
      ++j;
    }
  }
}

}  // namespace ns::cuda
