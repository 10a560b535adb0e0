// Hugging Face config.json / generation_config.json → one normalized ModelConfig for the
// Llama family (llama, mistral, qwen2). Every field the forward pass depends on is checked here, so
// a bad folder fails at load with the file and field named rather than deep inside the addon.
import { closeSync, existsSync, openSync, readFileSync, readSync } from 'node:fs';
import { join } from 'node:path';

export type DType = 'f32' | 'bf16' | 'f16';
export type RopeType = 'default' | 'linear' | 'llama3';
export type ModelType = 'llama' | 'mistral' | 'qwen2';

export interface RopeConfig {
  type: RopeType;
  theta: number;
  /** linear / llama3 scaling factor (1 for default). */
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPos: number;
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
  /** q/k/v projections carry a bias (qwen2). llama/mistral with attention_bias are refused (o_proj bias). */
  qkvBias: boolean;
  rope: RopeConfig;
  /** Mistral's sliding attention window (tokens), or null when attention is full. */
  slidingWindow: number | null;
  /** Storage dtype declared by config.json (`dtype` or `torch_dtype`); the tensors are checked against it. */
  dtype: DType;
  /** The raw dtype string of config.json ('' when absent). */
  torchDtype: string;
  /** Where `dtype` came from: config.json, or (when it declares none) the first weights header. */
  dtypeSource: 'config' | 'weights' | 'default';
  bosTokenId: number | null;
  eosTokenIds: number[];
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

export class ConfigError extends Error {}

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

const MODEL_TYPES: ModelType[] = ['llama', 'mistral', 'qwen2'];

export function parseDType(s: string, where: string): DType {
  switch (s) {
    case 'float32': case 'F32': case 'f32': case 'fp32': return 'f32';
    case 'bfloat16': case 'BF16': case 'bf16': return 'bf16';
    case 'float16': case 'F16': case 'f16': case 'fp16': case 'half': return 'f16';
    default: throw new ConfigError(`${where}: unsupported dtype ${JSON.stringify(s)} (float32, bfloat16 or float16)`);
  }
}

/**
 * RoPE from (in order of precedence) transformers 5's `rope_parameters`, or `rope_theta` plus the
 * older `rope_scaling` object. Types other than default/linear/llama3 are refused: the backends
 * implement only those, and silently running e.g. yarn as default would give wrong logits.
 */
function parseRope(f: Fields, maxPosition: number): RopeConfig {
  const params = f.sub('rope_parameters');
  const scaling = f.sub('rope_scaling');
  const src = params ?? scaling;
  const theta = params?.has('rope_theta')
    ? params.num('rope_theta', (n) => n > 0, 'a positive number')
    : f.num('rope_theta', (n) => n > 0, 'a positive number', 10000);
  const rope: RopeConfig = { type: 'default', theta, factor: 1, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPos: maxPosition };
  if (!src) return rope;
  const typeKey = src.has('rope_type') ? 'rope_type' : 'type';
  const type = src.str(typeKey) ?? 'default';
  const field = `${src.prefix}${typeKey}`;
  if (type === 'default') return rope;
  if (type !== 'linear' && type !== 'llama3') {
    throw new ConfigError(`${f.file}: field ${field} is ${JSON.stringify(type)}; supported RoPE types are default, linear and llama3`);
  }
  rope.type = type;
  rope.factor = src.num('factor', (n) => n > 0, 'a positive number');
  if (type === 'llama3') {
    rope.lowFreqFactor = src.num('low_freq_factor', (n) => n > 0, 'a positive number');
    rope.highFreqFactor = src.num('high_freq_factor', (n) => n > rope.lowFreqFactor, 'a number > low_freq_factor');
    rope.originalMaxPos = src.int('original_max_position_embeddings', 1);
  }
  return rope;
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
  const hiddenSize = f.int('hidden_size', 1);
  const numHeads = f.int('num_attention_heads', 1);
  const numKvHeads = f.int('num_key_value_heads', 1, numHeads);
  if (numHeads % numKvHeads !== 0) {
    throw new ConfigError(`${file}: field num_key_value_heads (${numKvHeads}) must divide num_attention_heads (${numHeads})`);
  }
  let headDim: number;
  if (f.has('head_dim')) headDim = f.int('head_dim', 1);
  else if (hiddenSize % numHeads !== 0) throw new ConfigError(`${file}: field head_dim is missing and hidden_size ${hiddenSize} is not a multiple of num_attention_heads ${numHeads}`);
  else headDim = hiddenSize / numHeads;
  if (headDim % 2 !== 0) throw new ConfigError(`${file}: field head_dim must be even for RoPE (got ${headDim})`);
  const act = f.str('hidden_act');
  if (act !== undefined && act !== 'silu') throw new ConfigError(`${file}: field hidden_act is ${JSON.stringify(act)}; only silu (SwiGLU) is supported`);
  if (f.bool('mlp_bias', false)) throw new ConfigError(`${file}: field mlp_bias is true; MLP biases are not supported`);
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
  // sliding_window only bites when use_sliding_window is not false (qwen2 ships it disabled).
  let slidingWindow: number | null = null;
  if (mt !== 'qwen2' || f.bool('use_sliding_window', false)) {
    slidingWindow = f.has('sliding_window') ? f.int('sliding_window', 1) : null;
  }
  const archs = raw.architectures;
  const architecture = Array.isArray(archs) && typeof archs[0] === 'string' ? archs[0] : `${mt}ForCausalLM`;
  const gen = loadGenerationConfig(dir);
  const bos = f.ids('bos_token_id');
  const eos = f.ids('eos_token_id');
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
    numLayers: f.int('num_hidden_layers', 1),
    rmsEps: f.num('rms_norm_eps', (n) => n > 0, 'a positive number', 1e-6),
    maxPosition,
    tieWordEmbeddings: f.bool('tie_word_embeddings', false),
    // qwen2 always has q/k/v biases. A llama/mistral config with attention_bias has an o_proj bias
    // too, which the backends do not add yet: refuse it rather than compute something else.
    qkvBias: mt === 'qwen2' ? true : refuseAttentionBias(f, mt),
    rope: parseRope(f, maxPosition),
    slidingWindow,
    dtype,
    torchDtype,
    dtypeSource,
    bosTokenId: gen.bosTokenId ?? bos[0] ?? null,
    eosTokenIds: gen.eosTokenIds.length ? gen.eosTokenIds : eos,
  };
}

function refuseAttentionBias(f: Fields, modelType: string): false {
  if (f.bool('attention_bias', false)) {
    throw new ConfigError(`${f.file}: field attention_bias is true: ${modelType} with attention biases also has an o_proj bias, which nodespeed does not support yet (qwen2-style q/k/v biases are supported)`);
  }
  return false;
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
      if (k !== '__metadata__' && typeof v?.dtype === 'string') return parseDType(v.dtype, `${file}: tensor ${k}`);
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
