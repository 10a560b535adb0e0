// Which slice of which HF tensor a (TP rank, layer range) shard loads — Megatron slicing, as
// native/src/engine.h describes it — and the streaming load of those slices into a sink (the addon).
//
//   q/k/v/gate/up (+ q/k/v biases): rows (dim 0); q by the heads whose KV heads this rank holds
//   o_proj/down:                    columns (dim 1), followed by an all-reduce in the backend
//   embed_tokens/lm_head:           vocab rows [r*ceil(V/tp), min(V, (r+1)*ceil(V/tp)))
//   norms:                          whole
// Tied embeddings: the last stage gets embed_tokens' vocab rows under the name
// `model.embed_tokens.weight` (the backends use it as the head when tiedEmbeddings is set); an
// lm_head.weight in such a checkpoint is ignored.
import type { DType, ModelConfig, RopeConfig } from './config.js';
import type { Checkpoint, TensorInfo } from './safetensors.js';
import { DTYPE_BYTES } from './safetensors.js';

export interface ShardRange {
  tpRank: number;
  tpSize: number;
  layerStart: number;
  layerEnd: number;
}

/** The ShardConfigJS fields that come from the model (camelCase of ns::ShardConfig). */
export interface ShardModelConfig {
  hidden: number;
  intermediate: number;
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  vocabSize: number;
  vocabStart: number;
  vocabEnd: number;
  layerStart: number;
  layerEnd: number;
  maxPosition: number;
  rmsEps: number;
  qkvBias: boolean;
  tiedEmbeddings: boolean;
  hasEmbedding: boolean;
  hasHead: boolean;
  tpRank: number;
  tpSize: number;
  rope: RopeConfig;
}

export type Slice =
  | { kind: 'whole' }
  | { kind: 'rows'; start: number; end: number }
  | { kind: 'cols'; start: number; end: number };

export interface PlannedTensor {
  /** HF tensor name; also the name the backend expects. */
  name: string;
  /** Shape of the full tensor in the checkpoint, as config.json implies it. */
  fullShape: number[];
  slice: Slice;
  /** Shape of this rank's slice. */
  shape: number[];
}

export interface ShardPlan {
  range: ShardRange;
  shardConfig: ShardModelConfig;
  tensors: PlannedTensor[];
  /** Expected dtype of every tensor (config.json's dtype, else the first tensor's). */
  dtype: DType;
  dtypeFrom: string;
}

export class ShardPlanError extends Error {}

/** Rank r's q heads, KV heads (a replicated one when tp > KV heads) and vocab rows. */
export function tpLayout(cfg: ModelConfig, tpRank: number, tpSize: number) {
  const { numHeads: H, numKvHeads: K } = cfg;
  const bad = (why: string): never => { throw new ShardPlanError(`tensor parallel ${tpSize}: ${why}`); };
  if (!Number.isInteger(tpSize) || tpSize < 1) bad('tp size must be an integer >= 1');
  if (!Number.isInteger(tpRank) || tpRank < 0 || tpRank >= tpSize) bad(`tp rank ${tpRank} is not in [0, ${tpSize})`);
  if (H % tpSize !== 0) bad(`num_attention_heads ${H} is not divisible by ${tpSize}`);
  if (cfg.intermediateSize % tpSize !== 0) bad(`intermediate_size ${cfg.intermediateSize} is not divisible by ${tpSize}`);
  const qPerRank = H / tpSize;
  let kvStart: number, kvPerRank: number;
  if (K >= tpSize) {
    if (K % tpSize !== 0) bad(`num_key_value_heads ${K} is not divisible by ${tpSize}`);
    kvPerRank = K / tpSize;
    kvStart = tpRank * kvPerRank;
  } else {
    // Fewer KV heads than ranks: each rank holds the one KV head its q heads attend with, so all
    // of a rank's q heads must share one KV head (tp a multiple of the KV head count).
    if (tpSize % K !== 0) bad(`num_key_value_heads ${K} does not divide ${tpSize}, so KV heads cannot be replicated evenly`);
    kvPerRank = 1;
    kvStart = Math.floor((tpRank * K) / tpSize);
  }
  const vocabStride = Math.ceil(cfg.vocabSize / tpSize);
  const vocabStart = Math.min(cfg.vocabSize, tpRank * vocabStride);
  const vocabEnd = Math.min(cfg.vocabSize, (tpRank + 1) * vocabStride);
  return {
    qStart: tpRank * qPerRank, qPerRank, kvStart, kvPerRank,
    interStart: tpRank * (cfg.intermediateSize / tpSize), interPerRank: cfg.intermediateSize / tpSize,
    vocabStart, vocabEnd,
  };
}

export function planShard(cfg: ModelConfig, range: ShardRange): ShardPlan {
  const { tpRank, tpSize, layerStart, layerEnd } = range;
  if (!Number.isInteger(layerStart) || !Number.isInteger(layerEnd) || layerStart < 0 || layerEnd > cfg.numLayers || layerStart >= layerEnd) {
    throw new ShardPlanError(`layer range [${layerStart}, ${layerEnd}) is not a non-empty range within the model's ${cfg.numLayers} layers`);
  }
  const L = tpLayout(cfg, tpRank, tpSize);
  const H = cfg.hiddenSize, D = cfg.headDim, I = cfg.intermediateSize, V = cfg.vocabSize;
  const hasEmbedding = layerStart === 0;
  const hasHead = layerEnd === cfg.numLayers;
  const tensors: PlannedTensor[] = [];
  const whole = (name: string, shape: number[]) => tensors.push({ name, fullShape: shape, slice: { kind: 'whole' }, shape });
  const rows = (name: string, full: number[], start: number, end: number) =>
    tensors.push({ name, fullShape: full, slice: { kind: 'rows', start, end }, shape: [end - start, ...full.slice(1)] });
  const cols = (name: string, full: number[], start: number, end: number) =>
    tensors.push({ name, fullShape: full, slice: { kind: 'cols', start, end }, shape: [full[0]!, end - start] });

  if (hasEmbedding || (hasHead && cfg.tieWordEmbeddings)) rows('model.embed_tokens.weight', [V, H], L.vocabStart, L.vocabEnd);
  const qRows: [number, number] = [L.qStart * D, (L.qStart + L.qPerRank) * D];
  const kvRows: [number, number] = [L.kvStart * D, (L.kvStart + L.kvPerRank) * D];
  const inter: [number, number] = [L.interStart, L.interStart + L.interPerRank];
  for (let l = layerStart; l < layerEnd; l++) {
    const p = `model.layers.${l}.`;
    whole(p + 'input_layernorm.weight', [H]);
    rows(p + 'self_attn.q_proj.weight', [cfg.numHeads * D, H], ...qRows);
    rows(p + 'self_attn.k_proj.weight', [cfg.numKvHeads * D, H], ...kvRows);
    rows(p + 'self_attn.v_proj.weight', [cfg.numKvHeads * D, H], ...kvRows);
    if (cfg.qkvBias) {
      rows(p + 'self_attn.q_proj.bias', [cfg.numHeads * D], ...qRows);
      rows(p + 'self_attn.k_proj.bias', [cfg.numKvHeads * D], ...kvRows);
      rows(p + 'self_attn.v_proj.bias', [cfg.numKvHeads * D], ...kvRows);
    }
    cols(p + 'self_attn.o_proj.weight', [H, cfg.numHeads * D], ...qRows);
    whole(p + 'post_attention_layernorm.weight', [H]);
    rows(p + 'mlp.gate_proj.weight', [I, H], ...inter);
    rows(p + 'mlp.up_proj.weight', [I, H], ...inter);
    cols(p + 'mlp.down_proj.weight', [H, I], ...inter);
  }
  if (hasHead) {
    whole('model.norm.weight', [H]);
    if (!cfg.tieWordEmbeddings) rows('lm_head.weight', [V, H], L.vocabStart, L.vocabEnd);
  }
  return {
    range: { ...range },
    dtype: cfg.dtype,
    dtypeFrom: cfg.dtypeSource === 'config' ? `config.json's dtype ${cfg.dtype}` : `${cfg.dtype}, the first tensor's dtype (config.json declares none)`,
    tensors,
    shardConfig: {
      hidden: H, intermediate: L.interPerRank, nHeads: L.qPerRank, nKvHeads: L.kvPerRank, headDim: D,
      vocabSize: V, vocabStart: L.vocabStart, vocabEnd: L.vocabEnd, layerStart, layerEnd,
      // Mistral's sliding window is not implemented by the backends; capping the context at the
      // window keeps every sequence within it, where full attention equals sliding attention.
      maxPosition: cfg.slidingWindow ? Math.min(cfg.maxPosition, cfg.slidingWindow) : cfg.maxPosition,
      rmsEps: cfg.rmsEps, qkvBias: cfg.qkvBias, tiedEmbeddings: cfg.tieWordEmbeddings,
      hasEmbedding, hasHead, tpRank, tpSize, rope: { ...cfg.rope },
    },
  };
}

export function sliceBytes(t: PlannedTensor, dtype: DType): number {
  return t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype];
}

function sameShape(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Checks a checkpoint tensor against what config.json implies; the error names file and tensor. */
export function checkTensor(ckpt: Checkpoint, t: PlannedTensor, dtype: DType, dtypeFrom = `config.json's dtype ${dtype}`): TensorInfo {
  const info = ckpt.get(t.name);
  if (!info) throw new ShardPlanError(`${ckpt.dir}: tensor ${t.name} is missing from the checkpoint`);
  if (!sameShape(info.shape, t.fullShape)) {
    throw new ShardPlanError(`${info.file}: tensor ${t.name}: shape [${info.shape.join(', ')}] does not match config.json, which implies [${t.fullShape.join(', ')}]`);
  }
  if (info.dtype !== dtype) {
    throw new ShardPlanError(`${info.file}: tensor ${t.name}: dtype ${info.dtype} does not match ${dtypeFrom}`);
  }
  return info;
}

export type TensorSink = (name: string, dtype: DType, shape: number[], data: Uint8Array) => Promise<void>;

/**
 * Reads this shard's slices one tensor at a time and hands each to `sink`, awaiting it before the
 * next read so at most one slice is in memory. Every tensor is checked before the first byte is
 * read, so a bad checkpoint fails fast. onProgress(bytesDone, bytesTotal) after each tensor.
 */
export async function loadShard(ckpt: Checkpoint, plan: ShardPlan, sink: TensorSink,
  onProgress?: (done: number, total: number) => void): Promise<void> {
  const infos = plan.tensors.map((t) => checkTensor(ckpt, t, plan.dtype, plan.dtypeFrom));
  const total = plan.tensors.reduce((s, t) => s + sliceBytes(t, plan.dtype), 0);
  let done = 0;
  for (let i = 0; i < plan.tensors.length; i++) {
    const t = plan.tensors[i]!, info = infos[i]!;
    let data: Uint8Array;
    if (t.slice.kind === 'whole') data = await ckpt.readRows(info, 0, info.shape[0] ?? 1);
    else if (t.slice.kind === 'rows') data = await ckpt.readRows(info, t.slice.start, t.slice.end);
    else data = await ckpt.readColumns(info, t.slice.start, t.slice.end);
    await sink(t.name, info.dtype, t.shape, data);
    done += data.byteLength;
    onProgress?.(done, total);
  }
}
