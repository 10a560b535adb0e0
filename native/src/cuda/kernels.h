// Launchers of the CUDA backend's kernels. `act` is the activation/weight dtype (bf16 or fp16);
// pointers are device memory; everything is enqueued on `s` and returns at once.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/penalties.h"
#include "engine.h"

namespace ns::cuda {

// Elementwise dtype conversion (f32/bf16/fp16 in any direction), e.g. f32 checkpoints to bf16.
void convert(DType dst_dt, void* dst, DType src_dt, const void* src, size_t n, cudaStream_t s);

// residual[t, :] = emb[tokens[t] - vstart] for ids in [vstart, vend), else 0 (vocab-parallel:
// the other ranks' rows are added by the all-reduce).
void embedding(DType act, const void* emb, const int32_t* tokens, int T, int H, int vstart, int vend,
               float* residual, cudaStream_t s);

// out[r, :] = act(act(x[row] * rsqrt(mean(x[row]^2) + eps)) * w) with row = rows ? rows[r] : r.
void rmsnorm(DType act, const float* x, const int32_t* rows, int R, int H, const float* w, float eps,
             void* out, cudaStream_t s);

// One layer's paged K and V: elements in the activation dtype, or E4M3 (fp8) holding k / k_scale
// and v / v_scale (per-layer scales, as vLLM's fp8 KV cache keeps them; 1.0 unless the checkpoint
// has them).
struct KvCache {
  void* k; void* v;
  bool fp8 = false;
  float k_scale = 1.f, v_scale = 1.f;
};

// Per token: adds the optional q/k/v bias, rotates q and k (HF rotate_half) with cos/sin of
// pos * inv_freq, and writes k and v into the paged cache at slot[t] (block * B + offset; the
// cache's element layout: kv_layout.h).
void rope_kv_write(DType act, void* qkv, const void* bias, int T, int nh, int nkv, int hd,
                   const int32_t* pos, const int32_t* slot, const float* inv_freq, const KvCache& kv,
                   int block_size, cudaStream_t s);

// Causal GQA attention of every token over its sequence's cached keys [0, pos] (the SIMT kernel:
// or the last `window` of them), on two disjoint token sets:
//  - n_tiles query tiles {first token, n tokens} (`tiles`, 2 ints each; n <= kFlashTileQ
//    consecutive tokens of one sequence) through the tensor-core flash kernel
//    (attention_prefill.cu; head_dim 64 or 128);
//  - n_simt tokens (`simt_tokens`, or tokens 0..T-1 when it is null and n_simt == T) through the
//    SIMT kernel (attention.cu): each token's keys are split evenly over n_splits blocks
//    (flash-decoding) and merged by the last of them when n_splits > 1 (the split count depends
//    only on the token count, so a captured CUDA graph stays valid as contexts grow); `ws` holds
//    attention_ws_floats() words, zeroed once before its first use.
struct AttnArgs {
  const void* qkv; int T, nh, nkv, hd;
  const int32_t* tok_pos; const int32_t* tok_seq; const int32_t* seq_bt_off; const int32_t* block_tables;
  int block_size; const void* kcache; const void* vcache; void* out;
  int n_splits; float* ws;
  const int32_t* simt_tokens; int n_simt;
  const int32_t* tiles; int n_tiles;
  bool round_p = true;  // the SIMT kernel rounds P before P.V (kRoundP)
  bool kv_fp8 = false;  // K/V stored as E4M3 of k / k_scale, v / v_scale (KvCache)
  float k_scale = 1.f, v_scale = 1.f;
  // The model families' variants (SIMT kernel only; the flash tiles take none of them):
  float scale = 0.f;    // scores = scale * q.k (0: 1 / sqrt(hd))
  float softcap = 0.f;  // scores = softcap * tanh(scores / softcap) (0: off)
  int window = 0;       // keys (pos - window, pos] of each token (0: [0, pos])
};
void attention(DType act, const AttnArgs& a, cudaStream_t s);
// The SIMT kernel's workspace with n_splits > 1: kAttnSplitCounters ints, one per (listed token,
// head) pair, counting its finished splits (zero before a launch; the kernel leaves them zero),
// then the splits' partial (max, sum, acc[hd]) rows. Its size in 4-byte words (0: no split).
constexpr int kAttnSplitCounters = 1024;
inline size_t attention_ws_floats(int n_splits, int n_simt, int nh, int hd) {
  return n_splits > 1 ? kAttnSplitCounters + (size_t)n_splits * n_simt * nh * (hd + 2) : 0;
}
__host__ __device__ inline int* attn_split_counters(float* ws) { return reinterpret_cast<int*>(ws); }
__host__ __device__ inline float* attn_partials(float* ws) { return ws + kAttnSplitCounters; }

// The flash prefill kernel: query tiles of kFlashTileQ tokens; the host sends sequences with at
// least kFlashMinTokens new tokens in a step through it (fewer: the SIMT kernel).
constexpr int kFlashTileQ = 64;
constexpr int kFlashMinTokens = 16;
bool flash_attention_supported(int head_dim);
void attention_flash(DType act, const AttnArgs& a, cudaStream_t s);  // the tiles only

// out[t, i] = act(act(silu(gu[t, i])) * gu[t, I + i])  (gate and up fused in one [T, 2I] GEMM output).
void swiglu(DType act, const void* gu, int T, int I, void* out, cudaStream_t s);

// The residual stream lives in f32 buffers but holds activation-dtype values, as in HF:
// residual = act(residual + act(x)), x in the activation dtype or f32 (an all-reduced partial sum).
void residual_add(DType act, float* residual, DType x_dt, const void* x, size_t n, cudaStream_t s);


// Batch-few matrix-vector product for decode: y[r, n] = sum_k x[r, k] * W[n, k], r < R <= 4.
// AddResidual: y (f32 residual) = act(y + act(x · W)), the residual_add rounding.
enum class GemvOut { Act, F32, AddResidual };
void gemv(DType act, const void* W, const void* x, int R, int N, int K, void* y, GemvOut mode, cudaStream_t s);
// y[M, N] = x[M, K] · W[N, K]^T on tensor cores for 1 <= M <= 64 (skinny_gemm.cu); false, with
// nothing enqueued, when the shape does not fit (N % 128, K % 64, alignment, `ws` too small for the
// split-K partials).
bool skinny_gemm(DType act, const void* x, const void* w, int M, int N, int K, void* y, GemvOut mode, float* ws,
                 size_t ws_bytes, int sm_count, cudaStream_t s);

// Quantized weights (quant_gemm.cu; docs/QUANTIZATION.md). A quantized matrix W [N, K] is int8 or
// E4M3 bytes with one f32 scale per row, wscale [N].
// gemv_quant: y[r, n] = wscale[n] * sum_k x[r, k] * W[n, k] for R <= 4 rows, wt I8 or F8E4M3, x in
// the activation dtype (weight-only, W8A16). K % 16 == 0.
struct QuantGemv {
  const void* w; const float* wscale; const void* x; int R, N, K; void* y;
};
void gemv_quant(DType act, DType wt, const QuantGemv& g, GemvOut mode, cudaStream_t s);

// Decode GEMVs (1..4 rows) that do the next kernel's work in their epilogue, bit-identical to the
// GEMV (GemvOut::Act) followed by that kernel, one launch instead of two:
//  SwiGlu: W = gate|up [2 I, K]: out [R, I] = swiglu() of the product's two halves;
//  RopeKv: W = q|k|v [(nh + 2 nkv) hd, K]: out = qkv [R, (nh + 2 nkv) hd] receives the rotated q heads
//          (its k and v columns are not written) and k, v go into the cache, as rope_kv_write()
//          does; hd % 8 == 0 and hd <= 256.
// A block's 8 warps take 4 output pairs (gate row i and up row I + i; or rotary pair j, j + hd/2),
// one warp a weight row. wt: the activation dtype (gemv.cu), or I8 / F8E4M3 with one f32 scale a row
// (quant_gemm.cu, W8A16).
enum class GemvFuse { SwiGlu, RopeKv };
struct GemvFusion {
  GemvFuse kind;
  void* out;
  int I = 0;                         // SwiGlu
  const void* bias = nullptr;        // RopeKv from here on: optional q|k|v bias (activation dtype)
  int nh = 0, nkv = 0, hd = 0;
  const int32_t* pos = nullptr;
  const int32_t* slot = nullptr;     // < 0: a padding row, no cache write
  const float* inv_freq = nullptr;
  // The family forward's RoPE instead (cos set): per-row cos / sin tables [R, hd/2] from the host,
  // the bias added in f32 and the pair rotated by table_rotate (act_math.h), as family.cu's qkv
  // kernel does; pos, inv_freq and the rounding knob are then unused.
  const float* cos = nullptr;
  const float* sin = nullptr;
  KvCache kv{};
  int block_size = 0;
  bool rnd = false;                  // set by the launcher: kRoundSilu / kRoundRope
};
void gemv_fused(DType act, DType wt, const void* W, const float* wscale, const void* x, int R, int K, const GemvFusion& f,
                cudaStream_t s);
void gemv_quant_fused(DType act, DType wt, const QuantGemv& g, const GemvFusion& f, cudaStream_t s);  // gemv_fused's 8-bit half
// gemm_quant: the weight-only products for more rows than a GEMV's, on tensor cores (quant_mma.cu;
// blocks of 64 rows x 128 weight rows, split over K to fill the GPU): y[m, n] = wscale[n] *
// sum_k x[m, k] * W[n, k], x in the activation dtype, int8 / E4M3 weights widened to it in
// registers. The products accumulate in f32 into ws (f32 [splits, M, N]); a second kernel sums the
// splits in a fixed order (deterministic) and applies the scales and `mode`. false, nothing
// enqueued, when K % 64 != 0, an operand is not 16-byte aligned or ws cannot hold M * N floats.
struct QuantGemm {
  const void* w; const float* wscale; const void* x; int M, N, K; void* y;
};
bool gemm_quant(DType act, DType wt, const QuantGemm& g, GemvOut mode, float* ws, size_t ws_bytes, int sm_count, cudaStream_t s);
// Rows of x [M, K] (activation dtype) to E4M3 q [M, K] and scale [M]: per row s = max(amax, capped at
// amax_ub when > 0) / 448 (at least 1 / (448 * 512)), or s = *static_scale; q = e4m3(x / s). K % 8 == 0.
void quantize_act(DType act, const void* x, int M, int K, const float* static_scale, float amax_ub, void* q, float* scale,
                  cudaStream_t s);
// The activation rows of the W8A8 GEMMs made straight into E4M3 (quant_act.cu): q and scale as
// quantize_act would make them from rmsnorm's output (R rows of the f32 x [R, H], weight w) or from
// swiglu's (T rows of gate|up [T, 2 I]), bit-identical, without writing the activation-dtype rows.
// false, nothing launched, when a row does not fit one block (then rmsnorm / swiglu + quantize_act).
bool rmsnorm_quant(DType act, const float* x, int R, int H, const float* w, float eps, const float* static_scale, float amax_ub, void* q,
                   float* scale, cudaStream_t s);
bool swiglu_quant(DType act, const void* gu, int T, int I, const float* static_scale, float amax_ub, void* q, float* scale,
                  cudaStream_t s);
// y[m, n] = acc[m, n] * xscale[m] * wscale[n] (acc: f32 [M, N], an E4M3 GEMM's output), written as
// `mode` says. N % 4 == 0. parts > 1: acc holds that many partial products (K slices), part_stride
// floats apart (a multiple of 4), summed in order first.
void fp8_epilogue(DType act, const float* acc, const float* xscale, const float* wscale, int M, int N, void* y, GemvOut mode,
                  cudaStream_t s, int parts = 1, size_t part_stride = 0);
// out [N, K] (activation dtype) = q [N, K] (int8 or E4M3, wt) * scale[n]. K % 16 == 0.
void dequantize(DType act, DType wt, const void* q, const float* scale, int N, int K, void* out, cudaStream_t s);

// All-gathered vocab shards -> [R, V]. Rank r contributed R * stride floats of which the first
// R * Vs_r are its compact logits, Vs_r = min(V, (r + 1) * stride) - r * stride.
void unshard_logits(const float* in, float* out, int R, int stride, int V, cudaStream_t s);

// One sampled row's parameters in the packed step metadata (16 words; all zero = greedy, nothing else).
struct SampleRow {
  float temperature;
  int32_t top_k;
  float top_p;
  float uniform;  // the draw, ns::sampling_uniform(seed, position)
  float min_p;
  float repetition_penalty;  // 0 (padding) reads as off, like 1
  float presence_penalty;
  float frequency_penalty;
  int32_t bias_off, bias_n;  // {token, bias bits} pairs at extras[bias_off ..]
  int32_t pen_off, pen_n;    // {token, output count, in prompt} triples at extras[pen_off ..]
  int32_t logprobs;          // top logprobs asked for + 1; 0 = none
  int32_t pad[3];
};
static_assert(sizeof(SampleRow) == 64, "SampleRow is 16 words of the metadata buffer");
// A sampled row's SampleRow for `p` (draw `uniform`); its logit-bias list and its penalty
// `counts` (nullptr: none) are appended to `extras`, which the row's offsets then point into.
SampleRow pack_sample_row(const SamplingParams& p, float uniform, const std::vector<PenaltyToken>* counts,
                          std::vector<int32_t>& extras);
// Words per sampled row of the logprob output: the sampled token's logprob, kMaxLogprobs ids, kMaxLogprobs logprobs.
constexpr int kLogprobWords = 1 + 2 * kMaxLogprobs;

// Samples rows[i] of `logits` [*, V] for each of the n rows with params[i]; biases and penalizes
// those rows in place first. `extras` is the device address where the extras buffer's address is
// stored (so a captured graph follows it when it moves). out[i]: the id; lp_out[i * kLogprobWords]:
// the logprobs of the rows that ask for them.
void sample(float* logits, int V, const int32_t* rows, const SampleRow* params, const int32_t* const* extras, int n,
            int32_t* out, float* lp_out, cudaStream_t s);

}  // namespace ns::cuda
