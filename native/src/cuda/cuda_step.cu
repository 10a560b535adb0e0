// CudaBackend::step: one forward over every sequence's new tokens (prefill chunks and decodes
// mixed), then the LM head and sampling on the GPU. The host packs all per-token metadata into
// one pinned buffer copied with a single transfer; the only host wait is the final one for the
// sampled ids (and logits / hidden states when asked for). Small all-decode batches replay a
// captured CUDA graph (cuda_graph.cu) instead of launching ~10 kernels per layer.
#include <cuda_profiler_api.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "common/settings.h"
#include "cpu/rope.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_common.h"
#include "cuda/family_kernels.h"
#include "cuda/kernels.h"
#include "cuda/moe.h"

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
  wslot = o; o += n_w;
  tok_seq = o; o += T;
  seq_bt_off = o; o += S;
  seq_wbt_off = o; o += n_ws;
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
// max_attn_splits_ (NODESPEED_CUDA_ATTN_SPLITS_MAX, default 16; 1: no split), within the (token,
// head) pairs whose splits the workspace can count (kernels.h).
int CudaBackend::attention_splits(int T) const {
  const int base = T * cfg_.n_heads;
  if (base >= 2 * sm_count_ || base > kAttnSplitCounters) return 1;
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
    // In 64 bits: pos near INT_MAX plus the tokens must not wrap around into a small number.
    const int64_t end64 = int64_t(q.pos) + q.n_tokens;
    if (c.max_position > 0 && end64 > c.max_position)
      throw std::runtime_error(seq_name(s) + " reaches position " + std::to_string(end64) + " > max_position " +
                               std::to_string(c.max_position));
    const int end = int(end64);
    if ((int64_t)q.n_blocks * c.kv_block_size < end)
      throw std::runtime_error(seq_name(s) + " block table covers " + std::to_string(q.n_blocks * c.kv_block_size) +
                               " positions, needs " + std::to_string(end));
    if (c.kv_window_group && (!q.window_block_table || (int64_t)q.n_window_blocks * c.kv_block_size < end))
      throw std::runtime_error(seq_name(s) + " window block table covers " +
                               std::to_string((q.window_block_table ? q.n_window_blocks : 0) * c.kv_block_size) +
                               " positions, needs " + std::to_string(end) + " (the windowed layers keep their own KV blocks)");
    if (c.has_embedding && !q.tokens) throw std::runtime_error(seq_name(s) + " has no token ids");
    if (c.has_head) check_sampling(q.sampling, c.vocab_size, seq_name(s));
    p.T += q.n_tokens;
    p.n_bt += q.n_blocks + (c.kv_window_group ? q.n_window_blocks : 0);
    n_short += q.n_tokens < kFlashMinTokens;
    if (c.has_head && (q.sample || in.want_logits || q.all_logits)) p.R += q.all_logits ? q.n_tokens : 1;
    if (c.has_head && q.sample) ++p.NS;
    if (c.has_head && q.sample) p.any_logprobs |= q.sampling.logprobs >= 0;
    all_decode &= q.n_tokens == 1 && q.n_blocks <= max_blocks_per_seq_ && (!c.kv_window_group || q.n_window_blocks <= max_blocks_per_seq_);
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
  if (c.kv_window_group) {
    p.n_w = p.T;
    p.n_ws = p.S;
  }
  p.layout();
  return p;
}

void CudaBackend::pack(const StepInput& in, const StepPlan& p) {
  const auto& c = cfg_;
  const int B = c.kv_block_size;
  const bool padded = p.bucket > 0;
  // A graph step reserves the device copy for its bucket's longest possible tables at once, so the
  // buffer (whose address the graphs hold) does not grow, and re-capture, as contexts lengthen.
  const size_t tables = c.kv_window_group ? 2 : 1;
  const size_t cap = padded ? p.block_tables + (size_t)p.bucket * max_blocks_per_seq_ * tables + 1 : p.total;
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
    // The sequence's table (and the windowed layers' one) into the packed tables, its offset at `at`.
    auto put_table = [&](const char* name, const int32_t* table, int n, int pool, size_t at) {
      h[at + s] = bt_off;
      for (int b = 0; b < n; ++b) {
        const int blk = table[b];
        if (blk < 0 || blk >= pool)
          throw std::runtime_error(seq_name(s) + "." + name + "[" + std::to_string(b) + "] = " + std::to_string(blk) +
                                   " is outside [0, " + std::to_string(pool) + ")");
        h[p.block_tables + bt_off + b] = blk;
      }
      bt_off += n;
    };
    put_table("block_table", q.block_table, q.n_blocks, kv_blocks_, p.seq_bt_off);
    if (c.kv_window_group) put_table("window_block_table", q.window_block_table, q.n_window_blocks, kv_window_blocks_, p.seq_wbt_off);
    for (int i = 0; i < q.n_tokens; ++i, ++t) {
      const int pos = q.pos + i;
      const int32_t tok = c.has_embedding ? q.tokens[i] : 0;
      if (c.has_embedding && (tok < 0 || tok >= c.vocab_size))
        throw std::runtime_error(seq_name(s) + " token " + std::to_string(tok) + " is outside the vocabulary (" +
                                 std::to_string(c.vocab_size) + ")");
      h[p.tokens + t] = tok;
      h[p.pos + t] = pos;
      h[p.slot + t] = q.block_table[pos / B] * B + pos % B;
      if (c.kv_window_group) h[p.wslot + t] = q.window_block_table[pos / B] * B + pos % B;
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
    if (c.kv_window_group) {
      h[p.seq_wbt_off + s] = p.n_bt - 1;
      h[p.wslot + t] = -1;
    }
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
    const Weight qkv = weight(L.qkv, L.qkv_s, L.in_s, 0);
    if (!normed) norm_into_input(res, T, L.in_norm.as<float>(), qkv);
    const KvCache kv{kcache_[l], vcache_[l], kv_fp8_, k_scale_[l], v_scale_[l]};
    GemvFusion rope{GemvFuse::RopeKv, qkv_.ptr};
    rope.bias = c.qkv_bias ? L.qkv_bias.ptr : nullptr;
    rope.nh = c.n_heads; rope.nkv = c.n_kv_heads; rope.hd = c.head_dim;
    rope.pos = d + p.pos; rope.slot = d + p.slot; rope.inv_freq = inv_freq_.as<float>();
    rope.kv = kv; rope.block_size = c.kv_block_size;
    // Decode rows: RoPE and the KV write in the qkv GEMV's epilogue (one launch fewer a layer).
    if (!matmul_fused(xb_.ptr, qkv, T, c.hidden, rope)) {
      matmul(xb_.ptr, qkv, T, qkv_rows_, c.hidden, qkv_.ptr, Out::Act);
      rope_kv_write(act_, qkv_.ptr, rope.bias, T, c.n_heads, c.n_kv_heads, c.head_dim, rope.pos, rope.slot, rope.inv_freq, kv,
                    c.kv_block_size, st);
    }
    AttnArgs a{qkv_.ptr, T, c.n_heads, c.n_kv_heads, c.head_dim, d + p.pos, d + p.tok_seq, d + p.seq_bt_off,
               d + p.block_tables, c.kv_block_size, kcache_[l], vcache_[l], attn_.ptr, p.splits, attn_ws_.as<float>(),
               p.n_tiles > 0 ? d + p.simt_tokens : nullptr, p.n_simt, d + p.tiles, p.n_tiles, rounds(kRoundP),
               kv_fp8_, k_scale_[l], v_scale_[l]};
    attention(act_, a, st);
    const Weight gate_up = weight(L.gate_up, L.gate_up_s, L.in_s, 2);
    if (!row_parallel_into_residual(attn_.ptr, weight(L.o, L.o_s, L.in_s, 1), T, qd, false, L.post_norm.as<float>()))
      norm_into_input(res, T, L.post_norm.as<float>(), gate_up);
    const float* next_norm = l + 1 < n_layers_ ? layers_[l + 1].in_norm.as<float>() : nullptr;
    GemvFusion swiglu{GemvFuse::SwiGlu, act_mlp_.ptr};
    swiglu.I = c.intermediate;
    // Decode rows: SwiGLU in the gate|up GEMV's epilogue, straight into the down product's input.
    if (matmul_fused(xb_.ptr, gate_up, T, c.hidden, swiglu)) {
      normed = row_parallel_into_residual(act_mlp_.ptr, weight(L.down, L.down_s, L.in_s, 3), T, c.intermediate, /*swiglu_in=*/false, next_norm);
      continue;
    }
    matmul(xb_.ptr, gate_up, T, 2 * c.intermediate, c.hidden, gu_.ptr, Out::Act);
    normed = row_parallel_into_residual(gu_.ptr, weight(L.down, L.down_s, L.in_s, 3), T, c.intermediate, /*swiglu_in=*/true, next_norm);
  }
  if (!c.has_head || p.R == 0) return;
  rmsnorm(act_, res, d + p.rows, p.R, c.hidden, final_norm_.as<float>(), c.rms_eps, xb_.ptr, st);
  const Weight head = head_weight();
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
// step, before the KV cache takes the rest of the memory). Growing it moves buffers the captured
// graphs point at, so it re-captures them.
void CudaBackend::reserve_family(int T) {
  if (!family_ || T <= family_cap_) return;
  ++epoch_;
  NS_CUDA(cudaStreamSynchronize(stream_));
  const auto& c = cfg_;
  const size_t es = dtype_size(act_), H = c.hidden;
  const size_t half = rope_half_ + local_half_;
  rope_dev_.reserve(4 * 2 * half * T);
  rope_host_.reserve(4 * 2 * half * T);
  if (c.num_experts > 0) {
    const size_t K = c.top_k, I = c.moe_intermediate, Is = c.shared_intermediate, rows = (size_t)T * K;
    const int local = c.expert_end - c.expert_start;
    route_layout_ = moe::layout(T, c.top_k, local);
    router_dev_.reserve(4 * (size_t)T * (c.num_experts + (Is > 0)));
    route_dev_.reserve(4 * (size_t)route_layout_.words);
    // The down GEMV reads the active experts before its wait, as a prefetch hint: zeros until a
    // routing is written (no active expert), never words of freed memory.
    NS_CUDA(cudaMemsetAsync(route_dev_.ptr, 0, 4 * (size_t)route_layout_.words, stream_));
    if (local > 0) {
      // The tensor-core path writes gate|up rows before the activation; the GEMV path only the latter.
      if (!moe::use_gemv(T, c.top_k, c.num_experts)) {
        ex_gu_.reserve(es * rows * 2 * I);
        if (wdt_ != act_) {
          // Quantized experts: up to kDequantBytes of active slots' gate|up (or down) matrices at a
          // time, at least one.
          constexpr size_t kDequantBytes = 64u << 20;
          const size_t per = es * 2 * I * H;
          ex_deq_slots_ = static_cast<int>(std::max<size_t>(1, std::min<size_t>(moe::max_active(T, c.top_k, local), kDequantBytes / per)));
          ex_deq_.reserve(per * ex_deq_slots_);
        }
      }
      ex_act_.reserve(es * rows * I);
      ex_out_.reserve(4 * rows * H);
    }
    if (Is > 0) {
      sh_gu_.reserve(es * T * 2 * Is);
      sh_act_.reserve(es * T * Is);
      sh_out_.reserve(4 * (size_t)T * H);
    }
  }
  family_cap_ = T;
}

// Every token's cos/sin (times the attention factor) for the global layers' RoPE and, with Gemma
// 3's local RoPE, the sliding layers': computed on the host by the CPU backend's code (dynamic and
// longrope follow each sequence's length at this step), one copy to the device before the forward
// (outside a CUDA graph: the graph reads the fixed buffer). A padded graph step's dummy tokens get
// zeros.
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
    std::fill(cos + (size_t)t * half, cos + (size_t)T * half, 0.f);
    std::fill(sin + (size_t)t * half, sin + (size_t)T * half, 0.f);
  };
  fill(cfg_.rope, inv_fixed_, rope_half_, h, h + (size_t)T * rope_half_);
  if (cfg_.has_rope_local)
    fill(cfg_.rope_local, local_inv_fixed_, local_half_, h + (size_t)2 * T * rope_half_, h + (size_t)2 * T * rope_half_ + (size_t)T * local_half_);
  NS_CUDA(cudaMemcpyAsync(rope_dev_.ptr, h, 4 * (size_t)2 * T * (rope_half_ + local_half_), cudaMemcpyHostToDevice, stream_));
}

void CudaBackend::shared_expert_matmul(const void* x, const DeviceBuffer& w, const DeviceBuffer& scale, int M, int N, int K, void* y,
                                       Out mode) {
  if (wdt_ == act_) matmul(x, w.ptr, M, N, K, y, mode);
  else matmul_weight_only(x, Weight{w.ptr, wdt_, scale.as<float>(), nullptr}, M, N, K, y, mode);
}

// The routed experts (moe.cu, plan in moe_plan.h) and the shared expert of T tokens of xb_, with
// no host wait: router logits (the shared expert's gate logit as one more column), device-side
// top-k and permutation, the grouped expert products over this rank's active experts, then per
// token the weighted sum. At tp 1 that sum joins the residual stream with the next norm (true
// returned); else it is left in tmp_ for the MLP's all-reduce.
bool CudaBackend::moe_layer(const LayerWeights& L, int T, const int32_t* slot, const float* post_w, const float* next_w) {
  const auto& c = cfg_;
  cudaStream_t st = stream_;
  const int E = c.num_experts, K = c.top_k, H = c.hidden, I = c.moe_intermediate, Is = c.shared_intermediate;
  const int local = c.expert_end - c.expert_start, ld = E + (Is > 0);
  const bool gelu = c.act == Activation::GeluTanh;
  const moe::Layout& Ly = route_layout_;
  int32_t* meta = route_dev_.as<int32_t>();
  float* logits = router_dev_.as<float>();
  const bool gemv = moe::use_gemv(T, K, E);
  matmul(xb_.ptr, L.router.ptr, T, ld, H, logits, Out::F32);
  const MoeRouteArgs route{logits, ld, T, E, K, c.norm_topk, c.expert_start, local, slot, meta, Ly};
  // Decode steps route inside the gate|up GEMV launch (moe_plan.h kRouteWords): one launch fewer.
  const bool route_in_gemv = moe::route_in_gemv(T, K, E, local);
  if (!route_in_gemv) moe_route(route, st);
  const bool shared_in_gemv = Is > 0 && gemv && T <= moe::kSharedInGemvTokens;
  if (Is > 0 && !shared_in_gemv) {
    shared_expert_matmul(xb_.ptr, L.sh_gate_up, L.sh_gate_up_s, T, 2 * Is, H, sh_gu_.ptr, Out::Act);
    gated_act(act_, sh_gu_.ptr, nullptr, T, Is, gelu, sh_act_.ptr, st);
    shared_expert_matmul(sh_act_.ptr, L.sh_down, L.sh_down_s, T, H, Is, sh_out_.ptr, Out::F32);
  }
  const bool quantized = wdt_ != act_;
  const int groups = moe::max_active(T, K, local);
  const bool fuse_combine = c.tp_size == 1;
  const MoeCombineArgs combine{ex_out_.as<float>(), Is > 0 ? sh_out_.as<float>() : nullptr, logits, ld, E, T, H, K, meta, Ly,
                               tmp_.as<float>(), fuse_combine ? residual_.as<float>() : nullptr, post_w, next_w, c.rms_eps, xb_.ptr};
  if (gemv) {
    const int mt = moe::gemv_tokens(T);
    MoeGemvArgs gu{L.ex_gate_up.ptr, (size_t)2 * I * H, I, H, xb_.ptr, ex_act_.ptr, groups, nullptr, 0, 0, nullptr, nullptr, 0,
                   meta, Ly, gelu};
    MoeGemvArgs dn{L.ex_down.ptr, (size_t)H * I, H, I, ex_act_.ptr, ex_out_.ptr, groups, nullptr, 0, 0, nullptr, nullptr, 0,
                   meta, Ly, gelu};
    if (shared_in_gemv) {
      gu.sw = L.sh_gate_up.ptr; gu.sn = Is; gu.sk = H; gu.sx = xb_.ptr; gu.sy = sh_act_.ptr; gu.s_rows = T;
      dn.sw = L.sh_down.ptr; dn.sn = H; dn.sk = Is; dn.sx = sh_act_.ptr; dn.sy = sh_out_.ptr; dn.s_rows = T;
    }
    gu.route_in = route_in_gemv;
    gu.route = route;
    if (quantized) {
      gu.scale = L.ex_gate_up_s.as<float>(); gu.s_scale = L.sh_gate_up_s.as<float>();
      dn.scale = L.ex_down_s.as<float>(); dn.s_scale = L.sh_down_s.as<float>();
    }
    moe_gemv(act_, wdt_, gu, /*gated=*/true, mt, st);
    moe_gemv(act_, wdt_, dn, /*gated=*/false, mt, st);
  } else if (local > 0 && !quantized) {
    const int tiles = moe::max_tiles(T, K, local);
    moe_mma(act_, {xb_.ptr, /*gather=*/true, L.ex_gate_up.ptr, (size_t)2 * I * H, 2 * I, H, ex_gu_.ptr, false, tiles, meta, Ly}, st);
    moe_gated_act(act_, ex_gu_.ptr, meta, Ly, T * K, I, gelu, ex_act_.ptr, st);
    moe_mma(act_, {ex_act_.ptr, false, L.ex_down.ptr, (size_t)H * I, H, I, ex_out_.ptr, true, tiles, meta, Ly}, st);
  } else if (local > 0) {
    // Quantized experts: a few active slots at a time dequantized into ex_deq_ (slot order), then
    // the tiles of those slots (the step's active count is on the device: every possible slot).
    const int tiles = moe::max_tiles(T, K, local), step = ex_deq_slots_;
    if (step < 1) throw std::runtime_error("cuda: no dequantization scratch for the quantized experts");
    for (int g0 = 0; g0 < groups; g0 += step) {
      const int g1 = std::min(groups, g0 + step);
      moe_dequant_active(act_, wdt_, L.ex_gate_up.ptr, L.ex_gate_up_s.as<float>(), (size_t)2 * I * H, 2 * I, H, meta, Ly, g0, g1, ex_deq_.ptr, st);
      MoeMmaArgs a{xb_.ptr, /*gather=*/true, ex_deq_.ptr, (size_t)2 * I * H, 2 * I, H, ex_gu_.ptr, false, tiles, meta, Ly};
      a.by_slot = true; a.g0 = g0; a.g1 = g1;
      moe_mma(act_, a, st);
    }
    moe_gated_act(act_, ex_gu_.ptr, meta, Ly, T * K, I, gelu, ex_act_.ptr, st);
    for (int g0 = 0; g0 < groups; g0 += step) {
      const int g1 = std::min(groups, g0 + step);
      moe_dequant_active(act_, wdt_, L.ex_down.ptr, L.ex_down_s.as<float>(), (size_t)H * I, H, I, meta, Ly, g0, g1, ex_deq_.ptr, st);
      MoeMmaArgs a{ex_act_.ptr, false, ex_deq_.ptr, (size_t)H * I, H, I, ex_out_.ptr, true, tiles, meta, Ly};
      a.by_slot = true; a.g0 = g0; a.g1 = g1;
      moe_mma(act_, a, st);
    }
  }
  moe_combine(act_, combine, st);
  return fuse_combine;
}

// The families' forward, read top to bottom like the CPU one: every switch of ShardConfig, plain
// kernels, row-parallel partial sums in tmp_ (f32) all-reduced before they join the residual. Each
// sublayer ends in one kernel that adds its output to the residual stream and takes the next
// sublayer's input norm (add_norm, or the MoE combine at tp 1). No host wait: decode steps run as
// CUDA graphs (the RoPE tables are uploaded by step() before). Quantized attention, dense-MLP and
// head matrices and the fp8 KV cache run as on the Llama path (matmul(), KvCache); an MoE's experts
// and shared expert stay quantized too, run weight-only (moe.cu's grouped GEMV, moe_quant.cu).
void CudaBackend::enqueue_family_forward(const StepPlan& p, const StepInput& in) {
  const auto& c = cfg_;
  cudaStream_t st = stream_;
  const int32_t* d = meta_.as<int32_t>();
  float* res = residual_.as<float>();
  float* part = tmp_.as<float>();
  const int T = p.T, H = c.hidden, qd = c.n_heads * c.head_dim;
  const size_t n = (size_t)T * H;
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
  const bool gelu = c.act == Activation::GeluTanh;
  if (n_layers_ > 0) rmsnorm(act_, res, nullptr, T, H, layers_[0].in_norm.as<float>(), c.rms_eps, xb_.ptr, st);
  for (int l = 0; l < n_layers_; ++l) {
    const LayerWeights& L = layers_[l];
    const Weight qkv = weight(L.qkv, L.qkv_s, L.in_s, 0);
    const bool local = L.sliding && c.has_rope_local;
    const int half = local ? local_half_ : rope_half_;
    const float* cos = local ? tabs + (size_t)2 * T * rope_half_ : tabs;
    // Windowed layers of a kv_window_group model: their own pool, through the window tables.
    const int32_t* slot = d + (L.window_pool ? p.wslot : p.slot);
    const int32_t* bt_off = d + (L.window_pool ? p.seq_wbt_off : p.seq_bt_off);
    const KvCache kv{kcache_[l], vcache_[l], kv_fp8_, k_scale_[l], v_scale_[l]};
    // Decode rows without q/k norms, fully rotated heads: bias + RoPE + the KV write in the q|k|v
    // GEMV's epilogue (gemv_fused from the RoPE tables; one launch fewer a layer).
    GemvFusion rope{GemvFuse::RopeKv, qkv_.ptr};
    rope.bias = c.qkv_bias ? L.qkv_bias.ptr : nullptr;
    rope.nh = c.n_heads; rope.nkv = c.n_kv_heads; rope.hd = c.head_dim;
    rope.pos = d + p.pos; rope.slot = slot; rope.cos = cos; rope.sin = cos + (size_t)T * half;
    rope.kv = kv; rope.block_size = c.kv_block_size;
    if (c.qk_norm || 2 * half != c.head_dim || !matmul_fused(xb_.ptr, qkv, T, H, rope)) {
      matmul(xb_.ptr, qkv, T, qkv_rows_, H, qkv_.ptr, Out::Act);
      family_qkv(act_, qkv_.ptr, c.qkv_bias ? L.qkv_bias.ptr : nullptr, L.q_norm.as<float>(), L.k_norm.as<float>(),
                 c.rms_eps, T, c.n_heads, c.n_kv_heads, c.head_dim, half, cos, cos + (size_t)T * half, slot, kv,
                 c.kv_block_size, st);
    }
    // The Llama path's SIMT kernels (flash-decoding splits, 16-byte K/V loads, the fp8 KV cache; no
    // flash tiles here: p.n_simt == T), P kept in f32 as the CPU backend keeps it.
    AttnArgs a{qkv_.ptr, T, c.n_heads, c.n_kv_heads, c.head_dim, d + p.pos, d + p.tok_seq, bt_off,
               d + p.block_tables, c.kv_block_size, kcache_[l], vcache_[l], attn_.ptr, p.splits, attn_ws_.as<float>(),
               nullptr, T, nullptr, 0, /*round_p=*/false, kv_fp8_, k_scale_[l], v_scale_[l]};
    a.scale = scale;
    a.softcap = c.attn_softcap;
    a.window = L.sliding ? c.sliding_window : 0;
    attention(act_, a, st);
    matmul(attn_.ptr, weight(L.o, L.o_s, L.in_s, 1), T, H, qd, part, Out::F32);
    if (c.tp_size > 1) comm_->all_reduce_sum(part, n, DType::F32, st);
    // Row-parallel biases join the all-reduced sum once.
    add_norm(act_, res, part, c.o_bias ? L.o_bias.as<float>() : nullptr, c.sandwich_norms ? L.post_norm.as<float>() : nullptr,
             (c.sandwich_norms ? L.pre_ff_norm : L.post_norm).as<float>(), c.rms_eps, T, H, xb_.ptr, st);
    const float* post_ff = c.sandwich_norms ? L.post_ff_norm.as<float>() : nullptr;
    const float* next = l + 1 < n_layers_ ? layers_[l + 1].in_norm.as<float>() : nullptr;
    if (L.sparse && moe_layer(L, T, d + p.slot, post_ff, next)) continue;
    if (!L.sparse) {
      matmul(xb_.ptr, weight(L.gate_up, L.gate_up_s, L.in_s, 2), T, 2 * c.intermediate, H, gu_.ptr, Out::Act);
      gated_act(act_, gu_.ptr, L.gu_bias.as<float>(), T, c.intermediate, gelu, act_mlp_.ptr, st);
      matmul(act_mlp_.ptr, weight(L.down, L.down_s, L.in_s, 3), T, H, c.intermediate, part, Out::F32);
    }
    if (c.tp_size > 1) comm_->all_reduce_sum(part, n, DType::F32, st);
    add_norm(act_, res, part, c.mlp_bias && !L.sparse ? L.down_bias.as<float>() : nullptr, post_ff, next, c.rms_eps, T, H,
             xb_.ptr, st);
  }
  if (!c.has_head || p.R == 0) return;
  rmsnorm(act_, res, d + p.rows, p.R, H, final_norm_.as<float>(), c.rms_eps, xb_.ptr, st);
  const Weight head = head_weight();
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
  ensure_activations(p.T, std::max(p.R, 1), p.NS, attention_ws_floats(p.splits, p.n_simt, c.n_heads, c.head_dim));
  if (family_) reserve_family(p.T);
  pack(in, p);
  cudaStream_t st = stream_;
  NS_CUDA(cudaMemcpyAsync(meta_.ptr, meta_host_.ptr, 4 * p.total, cudaMemcpyHostToDevice, st));
  if (extras_words_ > 0) NS_CUDA(cudaMemcpyAsync(extras_.ptr, extras_host_.ptr, 4 * extras_words_, cudaMemcpyHostToDevice, st));
  if (family_) upload_rope_tables(in, p.T);
  if (p.bucket > 0) run_graph(p, in);
  else enqueue_any_forward(p, in);

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
