// Which slice of which HF tensor a (TP rank, layer range) shard loads — Megatron slicing, as
// native/src/engine.h describes it — and the streaming load of those slices into a sink (the addon).
//
//   q/k/v/gate/up (+ their biases): rows (dim 0); q by the heads whose KV heads this rank holds
//   o_proj/down:                    columns (dim 1), followed by an all-reduce in the backend (their
//                                   biases whole: the backend adds them once, on TP rank 0)
//   embed_tokens/lm_head:           vocab rows [r*ceil(V/tp), min(V, (r+1)*ceil(V/tp)))
//   norms, q/k norms, router:       whole
//   routed experts:                 whole experts, rank r holding [floor(r*E/tp), floor((r+1)*E/tp))
//                                   (expert parallelism inside the TP group; the same all-reduce
//                                   that ends a dense MLP sums the experts' contributions)
//   shared expert:                  like a dense MLP; its sigmoid gate whole
// Fused checkpoint tensors (phi3's qkv_proj, gate_up_proj) are read as row ranges of the fused
// tensor and handed to the backend under the unfused names; mixtral's block_sparse_moe.* names
// become the mlp.* names qwen's MoE checkpoints use. The backend sees one naming.
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

/** The model's family switches, passed to the backend as they are (ModelConfig documents them). */
type FamilySwitches = Pick<ModelConfig, 'qkvBias' | 'oBias' | 'mlpBias' | 'qkNorm' | 'normPlusOne' | 'sandwichNorms' | 'activation' |
  'embedScale' | 'attnScale' | 'attnSoftcap' | 'finalSoftcap'>;

/** The ShardConfigJS fields that come from the model (camelCase of ns::ShardConfig). */
export interface ShardModelConfig extends FamilySwitches {
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
  tiedEmbeddings: boolean;
  hasEmbedding: boolean;
  hasHead: boolean;
  tpRank: number;
  tpSize: number;
  rope: RopeConfig;
  /** RoPE of the sliding-window layers (Gemma 3); absent: `rope`. */
  ropeLocal?: RopeConfig;
  /** 0: full attention everywhere. */
  slidingWindow: number;
  /** One 0/1 per layer of this shard (layerStart..layerEnd-1): attends only to the window. */
  slidingLayers: number[];
  /** Mixture of experts (0 experts: dense). Experts [expertStart, expertEnd) live on this rank. */
  numExperts: number;
  expertStart: number;
  expertEnd: number;
  topK: number;
  moeIntermediate: number;
  normTopK: boolean;
  /** This rank's share of the shared expert's intermediate size (0: none). */
  sharedIntermediate: number;
  /** One 0/1 per layer of this shard: routed experts (1) or the dense MLP (0). */
  sparseLayers: number[];
}

export type Slice =
  | { kind: 'whole' }
  | { kind: 'rows'; start: number; end: number }
  | { kind: 'cols'; start: number; end: number };

export interface PlannedTensor {
  /** The name the backend expects (HF's unfused Llama/Qwen naming). */
  name: string;
  /** The checkpoint tensor it is read from when that differs (fused or renamed tensors). */
  source?: string;
  /** Shape of the full (source) tensor in the checkpoint, as config.json implies it. */
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
  const hasDense = !cfg.moe || cfg.moe.sparseLayers.some((s) => !s);
  if (hasDense && cfg.intermediateSize % tpSize !== 0) bad(`intermediate_size ${cfg.intermediateSize} is not divisible by ${tpSize}`);
  const shared = cfg.moe?.sharedIntermediate ?? 0;
  if (shared % tpSize !== 0) bad(`shared_expert_intermediate_size ${shared} is not divisible by ${tpSize}`);
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
  const E = cfg.moe?.numExperts ?? 0;
  const interPerRank = hasDense ? cfg.intermediateSize / tpSize : 0;
  return {
    qStart: tpRank * qPerRank, qPerRank, kvStart, kvPerRank,
    interStart: tpRank * interPerRank, interPerRank,
    sharedStart: tpRank * (shared / tpSize), sharedPerRank: shared / tpSize,
    expertStart: Math.floor((tpRank * E) / tpSize), expertEnd: Math.floor(((tpRank + 1) * E) / tpSize),
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
  const NQ = cfg.numHeads * D, NKV = cfg.numKvHeads * D;
  const hasEmbedding = layerStart === 0;
  const hasHead = layerEnd === cfg.numLayers;
  const tensors: PlannedTensor[] = [];
  const src = (source: string | undefined) => (source === undefined ? {} : { source });
  const whole = (name: string, shape: number[], source?: string) =>
    tensors.push({ name, ...src(source), fullShape: shape, slice: { kind: 'whole' }, shape });
  const rows = (name: string, full: number[], start: number, end: number, source?: string) =>
    tensors.push({ name, ...src(source), fullShape: full, slice: { kind: 'rows', start, end }, shape: [end - start, ...full.slice(1)] });
  const cols = (name: string, full: number[], start: number, end: number, source?: string) =>
    tensors.push({ name, ...src(source), fullShape: full, slice: { kind: 'cols', start, end }, shape: [full[0]!, end - start] });

  if (hasEmbedding || (hasHead && cfg.tieWordEmbeddings)) rows('model.embed_tokens.weight', [V, H], L.vocabStart, L.vocabEnd);
  const qRows: [number, number] = [L.qStart * D, (L.qStart + L.qPerRank) * D];
  const kvRows: [number, number] = [L.kvStart * D, (L.kvStart + L.kvPerRank) * D];
  const inter: [number, number] = [L.interStart, L.interStart + L.interPerRank];
  const shared: [number, number] = [L.sharedStart, L.sharedStart + L.sharedPerRank];
  // A column-parallel MLP (gate/up rows, down columns) under `p`, optionally with biases.
  const mlp = (p: string, full: number, r: [number, number], bias: boolean) => {
    if (cfg.fusedGateUp) {
      rows(p + 'gate_proj.weight', [2 * full, H], r[0], r[1], p + 'gate_up_proj.weight');
      rows(p + 'up_proj.weight', [2 * full, H], full + r[0], full + r[1], p + 'gate_up_proj.weight');
    } else {
      rows(p + 'gate_proj.weight', [full, H], ...r);
      rows(p + 'up_proj.weight', [full, H], ...r);
    }
    cols(p + 'down_proj.weight', [H, full], ...r);
    if (bias) {
      rows(p + 'gate_proj.bias', [full], ...r);
      rows(p + 'up_proj.bias', [full], ...r);
      whole(p + 'down_proj.bias', [H]);
    }
  };
  for (let l = layerStart; l < layerEnd; l++) {
    const p = `model.layers.${l}.`;
    const a = p + 'self_attn.';
    whole(p + 'input_layernorm.weight', [H]);
    if (cfg.fusedQkv) {
      const fused = [NQ + 2 * NKV, H], qkv = a + 'qkv_proj.weight';
      rows(a + 'q_proj.weight', fused, ...qRows, qkv);
      rows(a + 'k_proj.weight', fused, NQ + kvRows[0], NQ + kvRows[1], qkv);
      rows(a + 'v_proj.weight', fused, NQ + NKV + kvRows[0], NQ + NKV + kvRows[1], qkv);
    } else {
      rows(a + 'q_proj.weight', [NQ, H], ...qRows);
      rows(a + 'k_proj.weight', [NKV, H], ...kvRows);
      rows(a + 'v_proj.weight', [NKV, H], ...kvRows);
    }
    if (cfg.qkvBias) {
      rows(a + 'q_proj.bias', [NQ], ...qRows);
      rows(a + 'k_proj.bias', [NKV], ...kvRows);
      rows(a + 'v_proj.bias', [NKV], ...kvRows);
    }
    if (cfg.qkNorm) {
      whole(a + 'q_norm.weight', [D]);
      whole(a + 'k_norm.weight', [D]);
    }
    cols(a + 'o_proj.weight', [H, NQ], ...qRows);
    if (cfg.oBias) whole(a + 'o_proj.bias', [H]);
    whole(p + 'post_attention_layernorm.weight', [H]);
    if (cfg.sandwichNorms) {
      whole(p + 'pre_feedforward_layernorm.weight', [H]);
      whole(p + 'post_feedforward_layernorm.weight', [H]);
    }
    const moe = cfg.moe;
    if (moe && moe.sparseLayers[l]) {
      const E = moe.numExperts, Ie = moe.intermediate;
      const mix = moe.naming === 'mixtral';
      const m = p + 'mlp.';
      whole(m + 'gate.weight', [E, H], mix ? p + 'block_sparse_moe.gate.weight' : undefined);
      for (let e = L.expertStart; e < L.expertEnd; e++) {
        const x = `${m}experts.${e}.`, ms = `${p}block_sparse_moe.experts.${e}.`;
        whole(x + 'gate_proj.weight', [Ie, H], mix ? ms + 'w1.weight' : undefined);
        whole(x + 'up_proj.weight', [Ie, H], mix ? ms + 'w3.weight' : undefined);
        whole(x + 'down_proj.weight', [H, Ie], mix ? ms + 'w2.weight' : undefined);
      }
      if (moe.sharedIntermediate > 0) {
        mlp(m + 'shared_expert.', moe.sharedIntermediate, shared, false);
        whole(m + 'shared_expert_gate.weight', [1, H]);
      }
    } else {
      mlp(p + 'mlp.', I, inter, cfg.mlpBias);
    }
  }
  if (hasHead) {
    whole('model.norm.weight', [H]);
    if (!cfg.tieWordEmbeddings) rows('lm_head.weight', [V, H], L.vocabStart, L.vocabEnd);
  }
  const moe = cfg.moe;
  const layers = Array.from({ length: layerEnd - layerStart }, (_, i) => layerStart + i);
  return {
    range: { ...range },
    dtype: cfg.dtype,
    dtypeFrom: cfg.dtypeSource === 'config' ? `config.json's dtype ${cfg.dtype}` : `${cfg.dtype}, the first tensor's dtype (config.json declares none)`,
    tensors,
    shardConfig: {
      hidden: H, intermediate: L.interPerRank, nHeads: L.qPerRank, nKvHeads: L.kvPerRank, headDim: D,
      vocabSize: V, vocabStart: L.vocabStart, vocabEnd: L.vocabEnd, layerStart, layerEnd,
      maxPosition: cfg.maxPosition,
      rmsEps: cfg.rmsEps, qkvBias: cfg.qkvBias, oBias: cfg.oBias, mlpBias: cfg.mlpBias, qkNorm: cfg.qkNorm,
      normPlusOne: cfg.normPlusOne, sandwichNorms: cfg.sandwichNorms, activation: cfg.activation,
      embedScale: cfg.embedScale, attnScale: cfg.attnScale, attnSoftcap: cfg.attnSoftcap, finalSoftcap: cfg.finalSoftcap,
      tiedEmbeddings: cfg.tieWordEmbeddings, hasEmbedding, hasHead, tpRank, tpSize, rope: { ...cfg.rope },
      ...(cfg.ropeLocal ? { ropeLocal: { ...cfg.ropeLocal } } : {}),
      slidingWindow: cfg.slidingWindow ?? 0,
      slidingLayers: layers.map((l) => (cfg.slidingLayers[l] ? 1 : 0)),
      numExperts: moe?.numExperts ?? 0, expertStart: L.expertStart, expertEnd: L.expertEnd, topK: moe?.topK ?? 0,
      moeIntermediate: moe?.intermediate ?? 0, normTopK: moe?.normTopK ?? false, sharedIntermediate: L.sharedPerRank,
      sparseLayers: layers.map((l) => (moe?.sparseLayers[l] ? 1 : 0)),
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
  const name = t.source ?? t.name;
  const info = ckpt.get(name);
  if (!info) throw new ShardPlanError(`${ckpt.dir}: tensor ${name} is missing from the checkpoint`);
  if (!sameShape(info.shape, t.fullShape)) {
    throw new ShardPlanError(`${info.file}: tensor ${name}: shape [${info.shape.join(', ')}] does not match config.json, which implies [${t.fullShape.join(', ')}]`);
  }
  if (info.dtype !== dtype) {
    throw new ShardPlanError(`${info.file}: tensor ${name}: dtype ${info.dtype} does not match ${dtypeFrom}`);
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
