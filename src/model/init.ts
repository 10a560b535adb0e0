// `nodespeed model init`: a random-weight Hugging Face Llama checkpoint (config.json, sharded
// safetensors + index, generation_config.json, tokenizer) for tests and benchmarks. Tensors are
// generated chunk by chunk while being written, so memory stays flat even for 70B.
import { copyFileSync, existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import type { DType } from './config.js';
import { loadModelConfig, parseModelConfig } from './config.js';
import { byteLevelBpe } from './init-tokenizer.js';
import { normalFiller } from './random.js';
import { tensorBytes, writeSafetensors } from './safetensors-writer.js';
import type { TensorSpec } from './safetensors-writer.js';
import { planShard } from './weights.js';

export interface LlamaShape {
  hidden: number;
  intermediate: number;
  heads: number;
  kvHeads: number;
  layers: number;
  vocab: number;
  maxPosition: number;
  tied: boolean;
  rmsEps: number;
}

/**
 * tiny: the fixtures' shape (vocab 512 → the tok512 tokenizer). 100m: a ~100M model for CPU
 * benchmarks (tied, GQA 12/4). 1b: Llama-3.2-1B-like body (tied, GQA 32/8) with a 32000 vocab.
 * 7b/13b/70b: Llama 2 (70b: GQA with 8 KV heads).
 */
export const PRESETS: Record<string, LlamaShape> = {
  tiny: { hidden: 64, intermediate: 176, heads: 4, kvHeads: 2, layers: 4, vocab: 512, maxPosition: 256, tied: false, rmsEps: 1e-5 },
  '100m': { hidden: 768, intermediate: 2048, heads: 12, kvHeads: 4, layers: 12, vocab: 32000, maxPosition: 2048, tied: true, rmsEps: 1e-5 },
  '1b': { hidden: 2048, intermediate: 8192, heads: 32, kvHeads: 8, layers: 16, vocab: 32000, maxPosition: 2048, tied: true, rmsEps: 1e-5 },
  '7b': { hidden: 4096, intermediate: 11008, heads: 32, kvHeads: 32, layers: 32, vocab: 32000, maxPosition: 4096, tied: false, rmsEps: 1e-5 },
  '13b': { hidden: 5120, intermediate: 13824, heads: 40, kvHeads: 40, layers: 40, vocab: 32000, maxPosition: 4096, tied: false, rmsEps: 1e-5 },
  '70b': { hidden: 8192, intermediate: 28672, heads: 64, kvHeads: 8, layers: 80, vocab: 32000, maxPosition: 4096, tied: false, rmsEps: 1e-5 },
};

const TORCH_DTYPE: Record<DType, string> = { f32: 'float32', bf16: 'bfloat16', f16: 'float16' };

/** Mixture-of-experts shapes: a Llama body whose MLPs are routed experts (model_type `arch`). */
export interface MoeShape extends LlamaShape {
  arch: 'mixtral' | 'qwen3_moe' | 'qwen2_moe';
  experts: number;
  topK: number;
  /** Each expert's intermediate size (mixtral: intermediate_size). */
  expertIntermediate: number;
  shared: number;
  headDim: number;
  normTopK: boolean;
}

/**
 * tiny: the fixtures' size (vocab 512, tok512) with 4 or 8 experts, top-2. 8x7b: Mixtral-8x7B.
 * 30b-a3b: Qwen3-30B-A3B (128 experts, top-8). a2.7b: Qwen1.5-MoE-A2.7B (60 experts of 1408,
 * top-4 without renormalisation, a shared expert of 5632; 14.3B parameters, 28.6 GB in bf16).
 */
export const MOE_PRESETS: Record<MoeShape['arch'], Record<string, MoeShape>> = {
  mixtral: {
    tiny: { arch: 'mixtral', hidden: 64, intermediate: 96, heads: 4, kvHeads: 2, headDim: 16, layers: 4, vocab: 512, maxPosition: 256, tied: false,
      rmsEps: 1e-5, experts: 4, topK: 2, expertIntermediate: 96, shared: 0, normTopK: true },
    '8x7b': { arch: 'mixtral', hidden: 4096, intermediate: 14336, heads: 32, kvHeads: 8, headDim: 128, layers: 32, vocab: 32000, maxPosition: 32768,
      tied: false, rmsEps: 1e-5, experts: 8, topK: 2, expertIntermediate: 14336, shared: 0, normTopK: true },
  },
  qwen3_moe: {
    tiny: { arch: 'qwen3_moe', hidden: 64, intermediate: 128, heads: 4, kvHeads: 2, headDim: 16, layers: 4, vocab: 512, maxPosition: 256, tied: false,
      rmsEps: 1e-6, experts: 8, topK: 2, expertIntermediate: 32, shared: 0, normTopK: true },
    '30b-a3b': { arch: 'qwen3_moe', hidden: 2048, intermediate: 6144, heads: 32, kvHeads: 4, headDim: 128, layers: 48, vocab: 151936, maxPosition: 40960,
      tied: false, rmsEps: 1e-6, experts: 128, topK: 8, expertIntermediate: 768, shared: 0, normTopK: true },
  },
  qwen2_moe: {
    tiny: { arch: 'qwen2_moe', hidden: 64, intermediate: 128, heads: 4, kvHeads: 2, headDim: 16, layers: 4, vocab: 512, maxPosition: 256, tied: false,
      rmsEps: 1e-6, experts: 8, topK: 2, expertIntermediate: 32, shared: 64, normTopK: false },
    'a2.7b': { arch: 'qwen2_moe', hidden: 2048, intermediate: 5632, heads: 16, kvHeads: 16, headDim: 128, layers: 24, vocab: 151936, maxPosition: 8192,
      tied: false, rmsEps: 1e-6, experts: 60, topK: 4, expertIntermediate: 1408, shared: 5632, normTopK: false },
  },
};

export function moeConfigJson(s: MoeShape, dtype: DType, bos: number, eos: number): Record<string, unknown> {
  const base = llamaConfigJson(s, dtype, bos, eos);
  delete base.mlp_bias;
  delete base.pretraining_tp;
  const common = { ...base, model_type: s.arch, head_dim: s.headDim, num_experts_per_tok: s.topK, router_aux_loss_coef: 0.001,
    output_router_logits: false, rope_theta: 1000000.0, rope_parameters: { rope_type: 'default', rope_theta: 1000000.0 } };
  if (s.arch === 'mixtral') {
    return { ...common, architectures: ['MixtralForCausalLM'], num_local_experts: s.experts, sliding_window: null, router_jitter_noise: 0.0 };
  }
  return { ...common, architectures: [s.arch === 'qwen3_moe' ? 'Qwen3MoeForCausalLM' : 'Qwen2MoeForCausalLM'], num_experts: s.experts,
    moe_intermediate_size: s.expertIntermediate, norm_topk_prob: s.normTopK, decoder_sparse_step: 1, mlp_only_layers: [],
    use_sliding_window: false, sliding_window: null, max_window_layers: s.layers,
    ...(s.shared ? { shared_expert_intermediate_size: s.shared, qkv_bias: true } : {}) };
}

/** The presets `--arch` offers. */
export function presetsFor(arch: string): string[] {
  if (arch === 'llama') return Object.keys(PRESETS);
  const moe = MOE_PRESETS[arch as MoeShape['arch']];
  if (!moe) throw new RangeError(`--arch ${arch}: expected llama, ${Object.keys(MOE_PRESETS).join(', ')}`);
  return Object.keys(moe);
}

export interface InitOptions {
  arch: string;
  preset: string;
  dtype: DType;
  seed: bigint;
  out: string;
  /** Largest safetensors file (bytes); more data goes to further shards listed in the index. */
  maxShardBytes?: number;
  onProgress?: (done: number, total: number) => void;
}

export function llamaConfigJson(s: LlamaShape, dtype: DType, bos: number, eos: number): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_act: 'silu',
    hidden_size: s.hidden, intermediate_size: s.intermediate, num_attention_heads: s.heads, num_key_value_heads: s.kvHeads,
    head_dim: s.hidden / s.heads, num_hidden_layers: s.layers, vocab_size: s.vocab, max_position_embeddings: s.maxPosition,
    rms_norm_eps: s.rmsEps, tie_word_embeddings: s.tied, attention_bias: false, attention_dropout: 0.0, mlp_bias: false,
    initializer_range: 0.02, pretraining_tp: 1, use_cache: true, bos_token_id: bos, eos_token_id: eos, pad_token_id: null,
    // Both spellings, so transformers 4 (rope_theta, torch_dtype) and 5 (rope_parameters, dtype) read it.
    rope_theta: 10000.0, rope_scaling: null, rope_parameters: { rope_type: 'default', rope_theta: 10000.0 },
    dtype: TORCH_DTYPE[dtype], torch_dtype: TORCH_DTYPE[dtype],
  };
}

/** HF's initializer_range (config.json's too): the std of every matrix except the residual outputs. */
export const INIT_STD = 0.02;

/**
 * Norms ~1 (± 0.02); matrices N(0, 0.02) as HF's initializer_range, except the two projections
 * that write into the residual stream (o_proj, down_proj): N(0, 0.02 / sqrt(2 × layers)), the
 * scaled init of GPT-2 and Megatron-LM. Why: each of the 2 × layers residual writes otherwise adds
 * an update about as large as the stream itself, so a deep random model's stream is chaotic and
 * its logits flat, and bf16 rounding alone changes its top-1 token at many positions (bf16 vs
 * f32 HF at the 7b shape: top-1 79%) — such a checkpoint cannot tell an engine bug from noise.
 */
export function initDistribution(name: string, layers: number): { mean: number; std: number } {
  if (name.endsWith('norm.weight')) return { mean: 1, std: INIT_STD };
  if (name.endsWith('.o_proj.weight') || name.endsWith('.down_proj.weight')) return { mean: 0, std: INIT_STD / Math.sqrt(2 * layers) };
  return { mean: 0, std: INIT_STD };
}

/** Consecutive tensors grouped into files of at most maxBytes (a larger tensor gets a file alone). */
export function groupShards(tensors: TensorSpec[], maxBytes: number): TensorSpec[][] {
  const groups: TensorSpec[][] = [];
  let cur: TensorSpec[] = [], size = 0;
  for (const t of tensors) {
    const n = tensorBytes(t);
    if (cur.length && size + n > maxBytes) {
      groups.push(cur);
      cur = [];
      size = 0;
    }
    cur.push(t);
    size += n;
  }
  if (cur.length) groups.push(cur);
  return groups;
}

function packageRoot(): string {
  // src/model/init.ts and dist/model/init.js are both two levels below the package root.
  return resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
}

function writeTokenizer(out: string, vocab: number, maxPosition: number): { bos: number; eos: number; kind: string } {
  const tok512 = join(packageRoot(), 'test', 'fixtures', 'hf-reference', 'tok512.json');
  if (vocab === 512 && existsSync(tok512)) {
    copyFileSync(tok512, join(out, 'tokenizer.json'));
    writeFileSync(join(out, 'tokenizer_config.json'), JSON.stringify({ bos_token: '<|bos|>', eos_token: '<|eos|>',
      tokenizer_class: 'PreTrainedTokenizerFast', model_max_length: maxPosition }, null, 2) + '\n');
    return { bos: 0, eos: 1, kind: 'tok512 (trained byte-level BPE, copied from the fixtures)' };
  }
  const t = byteLevelBpe(vocab, maxPosition);
  writeFileSync(join(out, 'tokenizer.json'), JSON.stringify(t.tokenizerJson));
  writeFileSync(join(out, 'tokenizer_config.json'), JSON.stringify(t.tokenizerConfig, null, 2) + '\n');
  return { bos: t.bosTokenId, eos: t.eosTokenId, kind: `synthetic byte-level BPE of ${vocab} ids` };
}

export interface InitResult {
  files: string[];
  bytes: number;
  tokenizer: string;
}

export async function initModel(o: InitOptions): Promise<InitResult> {
  const presets = presetsFor(o.arch);
  const shape: LlamaShape | undefined = o.arch === 'llama' ? PRESETS[o.preset] : MOE_PRESETS[o.arch as MoeShape['arch']][o.preset];
  if (!shape) throw new RangeError(`--preset ${o.preset}: expected one of ${presets.join(', ')} for --arch ${o.arch}`);
  if (!['f32', 'bf16', 'f16'].includes(o.dtype)) throw new RangeError(`--dtype ${o.dtype}: expected bf16, fp16 or f32`);
  if (existsSync(o.out) && readdirSync(o.out).length > 0) throw new Error(`${o.out}: exists and is not empty (refusing to overwrite)`);
  mkdirSync(o.out, { recursive: true });

  const tok = writeTokenizer(o.out, shape.vocab, shape.maxPosition);
  const configJson = o.arch === 'llama' ? llamaConfigJson(shape, o.dtype, tok.bos, tok.eos) : moeConfigJson(shape as MoeShape, o.dtype, tok.bos, tok.eos);
  writeFileSync(join(o.out, 'config.json'), JSON.stringify(configJson, null, 2) + '\n');
  writeFileSync(join(o.out, 'generation_config.json'), JSON.stringify({
    _from_model_config: true, bos_token_id: tok.bos, eos_token_id: tok.eos, do_sample: false,
  }, null, 2) + '\n');

  // The tensor list is exactly what the loader will ask for (tp 1, all layers).
  const cfg = parseModelConfig(configJson, join(o.out, 'config.json'), o.out);
  const plan = planShard(cfg, { tpRank: 0, tpSize: 1, layerStart: 0, layerEnd: cfg.numLayers });
  // Checkpoint names (mixtral's block_sparse_moe.*), each once.
  const byName = new Map(plan.tensors.map((t) => [t.source ?? t.name, t.fullShape]));
  const specs: TensorSpec[] = [...byName].map(([name, shape]) => ({ name, dtype: o.dtype, shape }));
  const groups = groupShards(specs, o.maxShardBytes ?? 2e9);
  const total = specs.reduce((s, t) => s + tensorBytes(t), 0);
  const names = groups.length === 1 ? ['model.safetensors']
    : groups.map((_, i) => `model-${String(i + 1).padStart(5, '0')}-of-${String(groups.length).padStart(5, '0')}.safetensors`);
  let done = 0;
  for (let i = 0; i < groups.length; i++) {
    await writeSafetensors(join(o.out, names[i]!), groups[i]!, (t) => {
      const { mean, std } = initDistribution(t.name, shape.layers);
      return normalFiller(o.seed, t.name, t.dtype as DType, mean, std);
    }, (n) => { done += n; o.onProgress?.(done, total); });
  }
  if (groups.length > 1) {
    const weightMap: Record<string, string> = {};
    groups.forEach((g, i) => g.forEach((t) => { weightMap[t.name] = names[i]!; }));
    writeFileSync(join(o.out, 'model.safetensors.index.json'),
      JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2) + '\n');
  }
  loadModelConfig(o.out); // what we wrote must read back
  return { files: names, bytes: total, tokenizer: tok.kind };
}
