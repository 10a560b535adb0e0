// Hugging Face config.json / generation_config.json → one normalized ModelConfig. One forward serves
// every family: what differs (norm style, activation, biases, soft-capping, windows, experts) is a
// named switch here, set from the family's defaults (FAMILIES) and its config.json fields. Every
// field the forward pass depends on is checked, so a bad folder fails at load with the file and
// field named rather than deep inside the addon.
import { closeSync, existsSync, openSync, readFileSync, readSync } from 'node:fs';
import { join } from 'node:path';

import { ConfigError } from './config-error.js';
import type { CheckpointQuant } from './quantization.js';
import { parseQuantizationConfig } from './quantization.js';

export { ConfigError };

export type DType = 'f32' | 'bf16' | 'f16';
export type RopeType = 'default' | 'linear' | 'llama3' | 'dynamic' | 'yarn' | 'longrope';
export type ModelType = 'llama' | 'mistral' | 'qwen2' | 'qwen3' | 'gemma2' | 'gemma3_text' | 'phi3' | 'mixtral' | 'qwen3_moe' | 'qwen2_moe';
export type Activation = 'silu' | 'gelu_tanh';

export interface RopeConfig {
  type: RopeType;
  theta: number;
  /** linear / llama3 / dynamic / yarn scaling factor (1 for default). */
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  /** llama3, yarn, longrope: the pretraining context; dynamic: max_position_embeddings. */
  originalMaxPos: number;
  /** yarn / longrope: cos and sin are multiplied by it (1 otherwise). */
  attentionFactor: number;
  betaFast: number;
  betaSlow: number;
  /** yarn: round the correction range to whole dimensions (transformers' `truncate`, default true). */
  truncate: boolean;
  /** longrope: per-frequency divisors up to originalMaxPos positions, and past them. */
  shortFactor: number[];
  longFactor: number[];
  /** Leading dimensions of each head that RoPE rotates (partial_rotary_factor × head_dim). */
  rotaryDim: number;
}

export interface MoeConfig {
  numExperts: number;
  topK: number;
  /** Each routed expert's intermediate size. */
  intermediate: number;
  /** Renormalise the top-k router probabilities to sum to 1 (mixtral always; qwen: norm_topk_prob). */
  normTopK: boolean;
  /** qwen2_moe's shared expert (0: none), gated by sigmoid(x · shared_expert_gate). */
  sharedIntermediate: number;
  /** Per layer: routed experts (true) or a dense MLP of intermediate_size (mlp_only_layers, decoder_sparse_step). */
  sparseLayers: boolean[];
  /** How the checkpoint names expert tensors: mixtral's block_sparse_moe.experts.E.w1/w3/w2, qwen's mlp.experts.E.*_proj. */
  naming: 'mixtral' | 'qwen';
}

export interface ModelConfig {
  dir: string;
  modelType: ModelType;
  architecture: string;
  hiddenSize: number;
  intermediateSize: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  numLayers: number;
  rmsEps: number;
  maxPosition: number;
  tieWordEmbeddings: boolean;
  /** q/k/v projections carry a bias (qwen2, llama's attention_bias). */
  qkvBias: boolean;
  /** o_proj carries a bias (llama's attention_bias). */
  oBias: boolean;
  /** gate/up/down carry biases (llama's mlp_bias). */
  mlpBias: boolean;
  /** RMSNorm of each q and k head before RoPE (qwen3, gemma3). */
  qkNorm: boolean;
  /** Gemma's RMSNorm: x / rms(x) · (1 + w). */
  normPlusOne: boolean;
  /** Gemma's four norms a layer: post_attention_layernorm on the attention output, pre/post_feedforward_layernorm around the MLP. */
  sandwichNorms: boolean;
  activation: Activation;
  /** Embedding rows are multiplied by it (Gemma: sqrt(hidden_size)); 1 otherwise. */
  embedScale: number;
  /** Attention score scale: 1 / sqrt(query_pre_attn_scalar) (Gemma) or 1 / sqrt(head_dim). */
  attnScale: number;
  /** cap · tanh(x / cap) on attention scores / final logits (Gemma 2); 0 = off. */
  attnSoftcap: number;
  finalSoftcap: number;
  /** phi3 stores q|k|v as one qkv_proj and gate|up as one gate_up_proj (the loader slices them per rank). */
  fusedQkv: boolean;
  fusedGateUp: boolean;
  rope: RopeConfig;
  /** RoPE of the sliding-window layers when it differs from `rope` (Gemma 3's local base); null = `rope`. */
  ropeLocal: RopeConfig | null;
  /** The sliding attention window (tokens) of the layers marked in `slidingLayers`, or null when attention is full. */
  slidingWindow: number | null;
  /** Per layer: does it attend only to the last `slidingWindow` positions. */
  slidingLayers: boolean[];
  /** Mixture of experts, or null for a dense MLP. */
  moe: MoeConfig | null;
  /** Storage dtype declared by config.json (`dtype` or `torch_dtype`); the tensors are checked against it. */
  dtype: DType;
  /** The raw dtype string of config.json ('' when absent). */
  torchDtype: string;
  /** Where `dtype` came from: config.json, or (when it declares none) the first weights header. */
  dtypeSource: 'config' | 'weights' | 'default';
  bosTokenId: number | null;
  eosTokenIds: number[];
  /** config.json's quantization_config (a pre-quantized checkpoint), normalized; null for float weights. */
  quantization: CheckpointQuant | null;
}

export interface GenerationConfig {
  bosTokenId: number | null;
  eosTokenIds: number[];
  /** Sampling defaults the model ships with (absent fields are undefined). */
  temperature?: number;
  topK?: number;
  topP?: number;
  minP?: number;
  repetitionPenalty?: number;
  maxNewTokens?: number;
  doSample?: boolean;
}

type Json = Record<string, unknown>;


function readJson(file: string): Json {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`${file}: cannot read (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`${file}: not valid JSON (${(err as Error).message})`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new ConfigError(`${file}: expected a JSON object`);
  return v as Json;
}

/** Field readers that name the file and field on every error. */
class Fields {
  constructor(readonly file: string, readonly obj: Json, readonly prefix = '') {}

  private fail(key: string, why: string): never {
    throw new ConfigError(`${this.file}: field ${this.prefix}${key} ${why}`);
  }

  has(key: string): boolean {
    return this.obj[key] !== undefined && this.obj[key] !== null;
  }

  int(key: string, min: number, fallback?: number): number {
    const v = this.obj[key];
    if (v === undefined || v === null) {
      if (fallback !== undefined) return fallback;
      this.fail(key, 'is missing');
    }
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min) this.fail(key, `must be an integer >= ${min} (got ${JSON.stringify(v)})`);
    return v;
  }

  num(key: string, ok: (n: number) => boolean, what: string, fallback?: number): number {
    const v = this.obj[key];
    if (v === undefined || v === null) {
      if (fallback !== undefined) return fallback;
      this.fail(key, 'is missing');
    }
    if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v)) this.fail(key, `must be ${what} (got ${JSON.stringify(v)})`);
    return v;
  }

  bool(key: string, fallback: boolean): boolean {
    const v = this.obj[key];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== 'boolean') this.fail(key, `must be true or false (got ${JSON.stringify(v)})`);
    return v;
  }

  str(key: string): string | undefined {
    const v = this.obj[key];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'string') this.fail(key, `must be a string (got ${JSON.stringify(v)})`);
    return v;
  }

  /** A token id or a list of them (HF allows both for eos_token_id). */
  ids(key: string): number[] {
    const v = this.obj[key];
    if (v === undefined || v === null) return [];
    const list = Array.isArray(v) ? v : [v];
    for (const x of list) if (typeof x !== 'number' || !Number.isInteger(x) || x < 0) this.fail(key, `must be a token id or a list of them (got ${JSON.stringify(v)})`);
    return list as number[];
  }

  sub(key: string): Fields | undefined {
    const v = this.obj[key];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'object' || Array.isArray(v)) this.fail(key, `must be an object (got ${JSON.stringify(v)})`);
    return new Fields(this.file, v as Json, `${this.prefix}${key}.`);
  }
}

/** What each family is, before its config.json fields refine it. */
interface Family {
  qkvBias: boolean | 'attention_bias' | 'qkv_bias';
  qkNorm: boolean;
  gemma: boolean;
  fused: boolean;
  /** How config.json decides which layers use the window. */
  window: 'none' | 'all' | 'max_window_layers' | 'layer_types';
  moe: 'none' | 'mixtral' | 'qwen';
}

const FAMILIES: Record<ModelType, Family> = {
  llama: { qkvBias: 'attention_bias', qkNorm: false, gemma: false, fused: false, window: 'none', moe: 'none' },
  mistral: { qkvBias: false, qkNorm: false, gemma: false, fused: false, window: 'all', moe: 'none' },
  qwen2: { qkvBias: true, qkNorm: false, gemma: false, fused: false, window: 'max_window_layers', moe: 'none' },
  qwen3: { qkvBias: 'attention_bias', qkNorm: true, gemma: false, fused: false, window: 'max_window_layers', moe: 'none' },
  gemma2: { qkvBias: 'attention_bias', qkNorm: false, gemma: true, fused: false, window: 'layer_types', moe: 'none' },
  gemma3_text: { qkvBias: 'attention_bias', qkNorm: true, gemma: true, fused: false, window: 'layer_types', moe: 'none' },
  phi3: { qkvBias: false, qkNorm: false, gemma: false, fused: true, window: 'all', moe: 'none' },
  mixtral: { qkvBias: false, qkNorm: false, gemma: false, fused: false, window: 'all', moe: 'mixtral' },
  qwen3_moe: { qkvBias: 'attention_bias', qkNorm: true, gemma: false, fused: false, window: 'max_window_layers', moe: 'qwen' },
  qwen2_moe: { qkvBias: 'qkv_bias', qkNorm: false, gemma: false, fused: false, window: 'max_window_layers', moe: 'qwen' },
};

const MODEL_TYPES = Object.keys(FAMILIES) as ModelType[];

export function parseDType(s: string, where: string): DType {
  switch (s) {
    case 'float32': case 'F32': case 'f32': case 'fp32': return 'f32';
    case 'bfloat16': case 'BF16': case 'bf16': return 'bf16';
    case 'float16': case 'F16': case 'f16': case 'fp16': case 'half': return 'f16';
    default: throw new ConfigError(`${where}: unsupported dtype ${JSON.stringify(s)} (float32, bfloat16 or float16)`);
  }
}

/** Reads a list of positive numbers (longrope's factors). */
function numList(src: Fields, key: string, len: number): number[] {
  const v = src.obj[key];
  if (!Array.isArray(v) || v.length !== len || !v.every((x) => typeof x === 'number' && Number.isFinite(x) && x > 0)) {
    throw new ConfigError(`${src.file}: field ${src.prefix}${key} must be a list of ${len} positive numbers (rotary dims / 2)`);
  }
  return v as number[];
}

/**
 * One RoPE: `src` is a rope_parameters dict (transformers 5, possibly one of several per layer type)
 * or the older rope_scaling object; the theta comes from it, else `theta`. Every scaling type of
 * transformers' ROPE_INIT_FUNCTIONS that a served model uses is accepted; anything else is an error
 * naming the field (silently running e.g. an unknown type as default would give wrong logits).
 */
function parseRopeParams(f: Fields, src: Fields | undefined, theta: number, maxPosition: number, rotaryDim: number,
  topOriginal: number | undefined): RopeConfig {
  if (src?.has('rope_theta')) theta = src.num('rope_theta', (n) => n > 0, 'a positive number');
  const rope: RopeConfig = {
    type: 'default', theta, factor: 1, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPos: maxPosition,
    attentionFactor: 1, betaFast: 32, betaSlow: 1, truncate: true, shortFactor: [], longFactor: [], rotaryDim,
  };
  if (!src) return rope;
  const typeKey = src.has('rope_type') ? 'rope_type' : 'type';
  const type = src.str(typeKey) ?? 'default';
  const supported: RopeType[] = ['default', 'linear', 'llama3', 'dynamic', 'yarn', 'longrope'];
  if (!supported.includes(type as RopeType)) {
    throw new ConfigError(`${f.file}: field ${src.prefix}${typeKey} is ${JSON.stringify(type)}; supported RoPE types are ${supported.join(', ')}`);
  }
  rope.type = type as RopeType;
  const pos = (k: string) => src.num(k, (n) => n > 0, 'a positive number');
  switch (rope.type) {
    case 'default': break;
    case 'linear': rope.factor = pos('factor'); break;
    case 'dynamic': rope.factor = pos('factor'); rope.originalMaxPos = maxPosition; break;
    case 'llama3':
      rope.factor = pos('factor');
      rope.lowFreqFactor = pos('low_freq_factor');
      rope.highFreqFactor = src.num('high_freq_factor', (n) => n > rope.lowFreqFactor, 'a number > low_freq_factor');
      rope.originalMaxPos = src.int('original_max_position_embeddings', 1);
      break;
    case 'yarn': {
      // transformers: original_max_position_embeddings defaults to max_position_embeddings, factor to their ratio.
      rope.originalMaxPos = src.int('original_max_position_embeddings', 1, topOriginal ?? maxPosition);
      rope.factor = src.has('factor') ? pos('factor') : maxPosition / rope.originalMaxPos;
      rope.betaFast = src.num('beta_fast', Number.isFinite, 'a number', 32) || 32;
      rope.betaSlow = src.num('beta_slow', Number.isFinite, 'a number', 1) || 1;
      rope.truncate = src.bool('truncate', true);
      const mscale = (scale: number, m = 1) => (scale <= 1 ? 1 : 0.1 * m * Math.log(scale) + 1);
      if (src.has('attention_factor')) rope.attentionFactor = pos('attention_factor');
      else if (src.has('mscale') && src.has('mscale_all_dim') && src.num('mscale', Number.isFinite, 'a number') && src.num('mscale_all_dim', Number.isFinite, 'a number')) {
        rope.attentionFactor = mscale(rope.factor, src.num('mscale', Number.isFinite, 'a number')) / mscale(rope.factor, src.num('mscale_all_dim', Number.isFinite, 'a number'));
      } else rope.attentionFactor = mscale(rope.factor);
      break;
    }
    case 'longrope': {
      // Phi-3 keeps original_max_position_embeddings beside rope_scaling; transformers prefers that one.
      rope.originalMaxPos = topOriginal ?? src.int('original_max_position_embeddings', 1);
      rope.shortFactor = numList(src, 'short_factor', rotaryDim / 2);
      rope.longFactor = numList(src, 'long_factor', rotaryDim / 2);
      rope.factor = src.has('factor') ? pos('factor') : maxPosition / rope.originalMaxPos;
      if (src.has('attention_factor')) rope.attentionFactor = pos('attention_factor');
      else rope.attentionFactor = rope.factor <= 1 ? 1 : Math.sqrt(1 + Math.log(rope.factor) / Math.log(rope.originalMaxPos));
      break;
    }
  }
  return rope;
}

/**
 * RoPE of the global layers and (Gemma 3) of the sliding ones, from transformers 5's
 * `rope_parameters` (one dict, or one per layer type) or the older rope_theta / rope_scaling /
 * rope_local_base_freq fields.
 */
function parseRope(f: Fields, maxPosition: number, headDim: number): { rope: RopeConfig; local: RopeConfig | null } {
  const partial = f.num('partial_rotary_factor', (n) => n > 0 && n <= 1, 'in (0, 1]', 1);
  const rotaryDim = Math.floor(headDim * partial);
  if (rotaryDim % 2 !== 0) throw new ConfigError(`${f.file}: field partial_rotary_factor gives ${rotaryDim} rotary dimensions; RoPE needs an even number`);
  const topOriginal = f.has('original_max_position_embeddings') ? f.int('original_max_position_embeddings', 1) : undefined;
  const theta = f.num('rope_theta', (n) => n > 0, 'a positive number', 10000);
  const params = f.sub('rope_parameters');
  if (params && (params.has('full_attention') || params.has('sliding_attention'))) {
    const full = params.sub('full_attention');
    const sliding = params.sub('sliding_attention');
    const rope = parseRopeParams(f, full, theta, maxPosition, rotaryDim, topOriginal);
    return { rope, local: sliding ? parseRopeParams(f, sliding, theta, maxPosition, rotaryDim, topOriginal) : null };
  }
  const rope = parseRopeParams(f, params ?? f.sub('rope_scaling'), theta, maxPosition, rotaryDim, topOriginal);
  const localTheta = f.has('rope_local_base_freq') ? f.num('rope_local_base_freq', (n) => n > 0, 'a positive number') : null;
  return { rope, local: localTheta === null ? null : parseRopeParams(f, undefined, localTheta, maxPosition, rotaryDim, undefined) };
}

/**
 * The context a model serves: max_position_embeddings, except dynamic NTK RoPE, which exists to run
 * past it (vLLM serves max_position_embeddings × factor too).
 */
function servedContext(maxPosition: number, rope: RopeConfig): number {
  return rope.type === 'dynamic' ? Math.floor(maxPosition * rope.factor) : maxPosition;
}

/** generation_config.json when present (EOS may be a list); missing file → empty defaults. */
export function loadGenerationConfig(dir: string): GenerationConfig {
  const file = join(dir, 'generation_config.json');
  if (!existsSync(file)) return { bosTokenId: null, eosTokenIds: [] };
  const f = new Fields(file, readJson(file));
  const bos = f.ids('bos_token_id');
  const g: GenerationConfig = { bosTokenId: bos[0] ?? null, eosTokenIds: f.ids('eos_token_id') };
  if (f.has('temperature')) g.temperature = f.num('temperature', (n) => n >= 0, 'a number >= 0');
  if (f.has('top_k')) g.topK = f.int('top_k', 0);
  if (f.has('top_p')) g.topP = f.num('top_p', (n) => n > 0 && n <= 1, 'in (0, 1]');
  if (f.has('min_p')) g.minP = f.num('min_p', (n) => n >= 0 && n <= 1, 'in [0, 1]');
  if (f.has('repetition_penalty')) g.repetitionPenalty = f.num('repetition_penalty', (n) => n > 0, 'a number > 0');
  if (f.has('max_new_tokens')) g.maxNewTokens = f.int('max_new_tokens', 1);
  if (f.has('do_sample')) g.doSample = f.bool('do_sample', false);
  return g;
}

export function parseModelConfig(raw: Json, file: string, dir: string): ModelConfig {
  const f = new Fields(file, raw);
  const modelType = f.str('model_type');
  if (modelType === undefined) throw new ConfigError(`${file}: field model_type is missing`);
  if (!MODEL_TYPES.includes(modelType as ModelType)) {
    throw new ConfigError(`${file}: field model_type is ${JSON.stringify(modelType)}; supported: ${MODEL_TYPES.join(', ')}`);
  }
  const mt = modelType as ModelType;
  const fam = FAMILIES[mt];
  const hiddenSize = f.int('hidden_size', 1);
  const numHeads = f.int('num_attention_heads', 1);
  const numKvHeads = f.int('num_key_value_heads', 1, numHeads);
  const numLayers = f.int('num_hidden_layers', 1);
  if (numHeads % numKvHeads !== 0) {
    throw new ConfigError(`${file}: field num_key_value_heads (${numKvHeads}) must divide num_attention_heads (${numHeads})`);
  }
  let headDim: number;
  if (f.has('head_dim')) headDim = f.int('head_dim', 1);
  else if (hiddenSize % numHeads !== 0) throw new ConfigError(`${file}: field head_dim is missing and hidden_size ${hiddenSize} is not a multiple of num_attention_heads ${numHeads}`);
  else headDim = hiddenSize / numHeads;
  if (headDim % 2 !== 0) throw new ConfigError(`${file}: field head_dim must be even for RoPE (got ${headDim})`);
  // Gemma names it hidden_activation (hidden_act is an older alias); gelu_pytorch_tanh is GeGLU's tanh GELU.
  const actKey = f.has('hidden_activation') ? 'hidden_activation' : 'hidden_act';
  const actName = f.str(actKey) ?? (fam.gemma ? 'gelu_pytorch_tanh' : 'silu');
  const activation: Activation | undefined = actName === 'silu' ? 'silu'
    : ['gelu_pytorch_tanh', 'gelu_tanh', 'gelu_new', 'gelu_fast'].includes(actName) ? 'gelu_tanh' : undefined;
  if (!activation) throw new ConfigError(`${file}: field ${actKey} is ${JSON.stringify(actName)}; supported: silu, gelu_pytorch_tanh`);
  const mlpBias = f.bool('mlp_bias', false);
  if (mlpBias && mt !== 'llama') throw new ConfigError(`${file}: field mlp_bias is true; MLP biases are supported for llama only`);
  const maxPosition = f.int('max_position_embeddings', 1);
  const torchDtype = f.str('dtype') ?? f.str('torch_dtype') ?? '';
  let dtype: DType, dtypeSource: ModelConfig['dtypeSource'];
  if (torchDtype !== '') {
    dtype = parseDType(torchDtype, `${file}: field ${f.has('dtype') ? 'dtype' : 'torch_dtype'}`);
    dtypeSource = 'config';
  } else {
    const fromWeights = weightsDType(dir);
    dtype = fromWeights ?? 'f32';
    dtypeSource = fromWeights ? 'weights' : 'default';
  }
  const { slidingWindow, slidingLayers } = parseWindow(f, fam, numLayers);
  const { rope, local } = parseRope(f, maxPosition, headDim);
  const attentionBias = f.bool('attention_bias', false);
  const qkvBias = fam.qkvBias === 'attention_bias' ? attentionBias : fam.qkvBias === 'qkv_bias' ? f.bool('qkv_bias', true) : fam.qkvBias;
  const archs = raw.architectures;
  const architecture = Array.isArray(archs) && typeof archs[0] === 'string' ? archs[0] : `${mt}ForCausalLM`;
  const gen = loadGenerationConfig(dir);
  const bos = f.ids('bos_token_id');
  const eos = f.ids('eos_token_id');
  const softcap = (k: string) => (f.has(k) ? f.num(k, (n) => n > 0, 'a positive number or null') : 0);
  return {
    dir,
    modelType: mt,
    architecture,
    hiddenSize,
    intermediateSize: f.int('intermediate_size', 1),
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: f.int('vocab_size', 1),
    numLayers,
    rmsEps: f.num('rms_norm_eps', (n) => n > 0, 'a positive number', 1e-6),
    maxPosition: servedContext(maxPosition, rope),
    tieWordEmbeddings: f.bool('tie_word_embeddings', fam.gemma),
    qkvBias,
    // llama/qwen3's attention_bias covers o_proj too; qwen2's q/k/v biases do not.
    oBias: fam.qkvBias === 'attention_bias' && attentionBias,
    mlpBias,
    qkNorm: fam.qkNorm,
    normPlusOne: fam.gemma,
    sandwichNorms: fam.gemma,
    activation,
    embedScale: fam.gemma ? Math.fround(Math.sqrt(hiddenSize)) : 1,
    attnScale: 1 / Math.sqrt(fam.gemma ? f.num('query_pre_attn_scalar', (n) => n > 0, 'a positive number', headDim) : headDim),
    attnSoftcap: fam.gemma ? softcap('attn_logit_softcapping') : 0,
    finalSoftcap: fam.gemma ? softcap('final_logit_softcapping') : 0,
    fusedQkv: fam.fused,
    fusedGateUp: fam.fused,
    rope,
    ropeLocal: slidingWindow && local ? local : null,
    slidingWindow,
    slidingLayers,
    moe: parseMoe(f, fam, numLayers),
    dtype,
    torchDtype,
    dtypeSource,
    bosTokenId: gen.bosTokenId ?? bos[0] ?? null,
    eosTokenIds: gen.eosTokenIds.length ? gen.eosTokenIds : eos,
    quantization: parseQuantizationConfig(raw.quantization_config, file, numLayers),
  };
}

/**
 * Which layers attend only to the last sliding_window positions: mistral/mixtral/phi3 every layer;
 * the others `layer_types` when config.json lists them (transformers 5 writes it), else their rule:
 * qwen2/qwen3 (with use_sliding_window) layers from max_window_layers on, Gemma 2 the even layers,
 * Gemma 3 all but every sliding_window_pattern-th.
 */
function parseWindow(f: Fields, fam: Family, numLayers: number): { slidingWindow: number | null; slidingLayers: boolean[] } {
  const none = { slidingWindow: null, slidingLayers: Array<boolean>(numLayers).fill(false) };
  if (fam.window === 'none' || !f.has('sliding_window')) return none;
  if (fam.window === 'max_window_layers' && !f.bool('use_sliding_window', false)) return none;
  const slidingWindow = f.int('sliding_window', 1);
  let slidingLayers: boolean[];
  const types = f.obj.layer_types;
  if (fam.window === 'all') {
    // mistral, mixtral and phi3 pass config.sliding_window to every layer's attention in
    // transformers, whatever layer_types says.
    slidingLayers = Array<boolean>(numLayers).fill(true);
  } else if (types !== undefined && types !== null) {
    if (!Array.isArray(types) || types.length !== numLayers || !types.every((t) => t === 'sliding_attention' || t === 'full_attention')) {
      throw new ConfigError(`${f.file}: field layer_types must list 'sliding_attention' or 'full_attention' for each of the ${numLayers} layers`);
    }
    slidingLayers = types.map((t) => t === 'sliding_attention');
  } else if (fam.window === 'max_window_layers') {
    const from = f.int('max_window_layers', 0, numLayers);
    slidingLayers = Array.from({ length: numLayers }, (_, i) => i >= from);
  } else {
    const pattern = f.int('sliding_window_pattern', 1, 2);
    slidingLayers = Array.from({ length: numLayers }, (_, i) => (i + 1) % pattern !== 0);
  }
  return slidingLayers.some(Boolean) ? { slidingWindow, slidingLayers } : none;
}

/**
 * How the paged KV cache keeps the windowed layers' keys (engine/block-allocator.ts), where the
 * window is shorter than the context: `all` (every layer windowed: each sequence's one table cycles
 * through a ring of blocks), `group` (windowed and global layers mix: the windowed ones keep a pool
 * and a ring table of their own, the global ones every block), or none. window: 0 with none.
 */
export function kvWindowLayout(c: ModelConfig): { kind: 'none' | 'all' | 'group'; window: number } {
  const w = c.slidingWindow ?? 0;
  if (w <= 0 || w >= c.maxPosition || !c.slidingLayers.some(Boolean)) return { kind: 'none', window: 0 };
  return { kind: c.slidingLayers.every(Boolean) ? 'all' : 'group', window: w };
}

function parseMoe(f: Fields, fam: Family, numLayers: number): MoeConfig | null {
  if (fam.moe === 'none') return null;
  if (fam.moe === 'mixtral') {
    const numExperts = f.int('num_local_experts', 1);
    return {
      numExperts, topK: f.int('num_experts_per_tok', 1), intermediate: f.int('intermediate_size', 1), normTopK: true,
      sharedIntermediate: 0, sparseLayers: Array<boolean>(numLayers).fill(true), naming: 'mixtral',
    };
  }
  // transformers 5 writes qwen3_moe's num_experts as num_local_experts (its attribute map); Hub configs say num_experts.
  const numExperts = f.has('num_experts') ? f.int('num_experts', 0) : f.int('num_local_experts', 0);
  const step = f.int('decoder_sparse_step', 1, 1);
  const dense = f.obj.mlp_only_layers ?? [];
  if (!Array.isArray(dense) || !dense.every((x) => Number.isInteger(x))) throw new ConfigError(`${f.file}: field mlp_only_layers must be a list of layer indices`);
  const sparseLayers = Array.from({ length: numLayers }, (_, i) => numExperts > 0 && !dense.includes(i) && (i + 1) % step === 0);
  if (!sparseLayers.some(Boolean)) return null;
  const topK = f.int('num_experts_per_tok', 1);
  if (topK > numExperts) throw new ConfigError(`${f.file}: field num_experts_per_tok (${topK}) exceeds the number of experts (${numExperts})`);
  return {
    numExperts, topK, intermediate: f.int('moe_intermediate_size', 1),
    // qwen3_moe renormalises by default in transformers, qwen2_moe does not.
    normTopK: f.bool('norm_topk_prob', f.str('model_type') === 'qwen3_moe'),
    sharedIntermediate: f.has('shared_expert_intermediate_size') ? f.int('shared_expert_intermediate_size', 0) : 0,
    sparseLayers, naming: 'qwen',
  };
}

/**
 * Older configs may not declare a dtype: then the dtype of the first tensor in the first weights
 * file decides (read from its header only). null when there is no readable weights file.
 */
function weightsDType(dir: string): DType | null {
  let file = join(dir, 'model.safetensors');
  const index = join(dir, 'model.safetensors.index.json');
  let fd: number | undefined;
  try {
    if (existsSync(index)) {
      const wm = (JSON.parse(readFileSync(index, 'utf8')) as { weight_map?: Record<string, string> }).weight_map ?? {};
      const first = Object.values(wm)[0];
      if (!first) return null;
      file = join(dir, first);
    }
    fd = openSync(file, 'r');
    const len = Buffer.alloc(8);
    if (readSync(fd, len, 0, 8, 0) !== 8) return null;
    const n = Number(len.readBigUInt64LE());
    if (n > 100 * 1024 * 1024) return null;
    const hb = Buffer.alloc(n);
    if (readSync(fd, hb, 0, n, 8) !== n) return null;
    for (const [k, v] of Object.entries(JSON.parse(hb.toString('utf8')) as Record<string, { dtype?: string }>)) {
      // Quantized weights (and their int shape records) say nothing of the model's float dtype.
      if (k === '__metadata__' || typeof v?.dtype !== 'string' || ['I8', 'F8_E4M3', 'I32', 'I64', 'U8'].includes(v.dtype)) continue;
      return parseDType(v.dtype, `${file}: tensor ${k}`);
    }
    return null;
  } catch {
    return null; // the safetensors reader reports what is wrong with the file, with more context
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** Reads and normalizes DIR/config.json (and generation_config.json for BOS/EOS). */
export function loadModelConfig(dir: string): ModelConfig {
  const file = join(dir, 'config.json');
  return parseModelConfig(readJson(file), file, dir);
}
