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
//
// Quantized weights (docs/QUANTIZATION.md): with `quantize` (from a float checkpoint) or a
// pre-quantized checkpoint, every decoder linear X.weight reaches the backend as int8 / E4M3 with
// X.weight_scale (f32, one per row of the slice; per-tensor scales repeated), and X.input_scale for
// static fp8 activations. Quantizing at load, a row's scale comes from the whole row even when the
// rank holds a column slice, so every TP layout quantizes exactly as `nodespeed model quantize`
// does. int8 quantizes the LM head too (a tied head becomes lm_head.weight, quantized from the
// embedding's rows; the embedding itself stays as stored).
import { kvWindowLayout } from './config.js';
import type { DType, ModelConfig, RopeConfig } from './config.js';
import type { QuantizeChoice, WeightFormat } from './quantization.js';
import type { Checkpoint, TensorDType, TensorInfo } from './safetensors.js';
import { DTYPE_BYTES } from './safetensors.js';
import { convertTensor } from './convert.js';

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
  /** The model mixes windowed and global layers: the windowed ones keep their KV in a pool of their own (kvWindowLayout). */
  kvWindowGroup: boolean;
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
  /** Storage of the decoder linears and of the LM head (native: the checkpoint's float dtype). */
  weights: WeightFormat;
  headWeights: WeightFormat;
  /** fp8: X.input_scale tensors (static per-tensor activation scales) instead of per-token scales. */
  staticInputScales: boolean;
  /** fp8 weights: activations quantized too (W8A8), or weight-only (W8A16, an FP8 weight-only checkpoint). */
  fp8Activations: boolean;
  /** fp8 dynamic activations: the per-token absolute maximum is capped at this (fbgemm_fp8); 0: no cap. */
  activationScaleUb: number;
}

/** Quantization asked for at load (the checkpoint's own quantization_config is always honoured). */
export interface PlanOptions {
  /** Quantize a float checkpoint's linear layers as they load. */
  quantize?: QuantizeChoice;
  /** The fp8 KV cache: also load the checkpoint's per-layer K/V scales when it has them. */
  kvCacheFp8?: boolean;
}

export type Slice =
  | { kind: 'whole' }
  | { kind: 'rows'; start: number; end: number }
  | { kind: 'cols'; start: number; end: number };

/**
 * What the loader makes of a tensor's bytes before the backend sees them: `quantize` turns float
 * rows into int8 / E4M3 and also hands the backend `${name}_scale`; `unpack-int8` turns
 * compressed-tensors pack-quantized words (four int8 + 128 a word) into int8; `scale` makes f32
 * [rows] of a weight_scale ([rows, 1], or one value repeated); `f32` widens a small tensor to f32.
 */
export type Convert =
  | { kind: 'quantize'; format: 'int8' | 'fp8' }
  | { kind: 'unpack-int8' }
  | { kind: 'scale'; rows: number }
  | { kind: 'f32' };

export interface PlannedTensor {
  /** The name the backend expects (HF's unfused Llama/Qwen naming). */
  name: string;
  /** The checkpoint tensor it is read from when that differs (fused or renamed tensors). */
  source?: string;
  /** Shape of the full (source) tensor in the checkpoint, as config.json implies it. */
  fullShape: number[];
  /** Other accepted checkpoint shapes (a per-tensor scale stored as [] or [1]). */
  altShapes?: number[][];
  slice: Slice;
  /** Shape the backend receives. */
  shape: number[];
  /** Accepted checkpoint dtypes (default: the plan's dtype) and the dtype the backend receives. */
  dtypes?: TensorDType[];
  dtype?: BackendDType;
  convert?: Convert;
}

export interface ShardPlan {
  range: ShardRange;
  shardConfig: ShardModelConfig;
  tensors: PlannedTensor[];
  /** Expected dtype of every float tensor (config.json's dtype, else the first tensor's). */
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

export function planShard(cfg: ModelConfig, range: ShardRange, opts: PlanOptions = {}): ShardPlan {
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
  const quant = planQuantization(cfg, tensors, hasEmbedding, hasHead, opts);
  const moe = cfg.moe;
  const layers = Array.from({ length: layerEnd - layerStart }, (_, i) => layerStart + i);
  return {
    range: { ...range },
    dtype: cfg.dtype,
    dtypeFrom: cfg.dtypeSource === 'config' ? `config.json's dtype ${cfg.dtype}` : `${cfg.dtype}, the first tensor's dtype (config.json declares none)`,
    tensors: quant.tensors,
    shardConfig: {
      hidden: H, intermediate: L.interPerRank, nHeads: L.qPerRank, nKvHeads: L.kvPerRank, headDim: D,
      vocabSize: V, vocabStart: L.vocabStart, vocabEnd: L.vocabEnd, layerStart, layerEnd,
      maxPosition: cfg.maxPosition,
      rmsEps: cfg.rmsEps, qkvBias: cfg.qkvBias, oBias: cfg.oBias, mlpBias: cfg.mlpBias, qkNorm: cfg.qkNorm,
      normPlusOne: cfg.normPlusOne, sandwichNorms: cfg.sandwichNorms, activation: cfg.activation,
      embedScale: cfg.embedScale, attnScale: cfg.attnScale, attnSoftcap: cfg.attnSoftcap, finalSoftcap: cfg.finalSoftcap,
      tiedEmbeddings: cfg.tieWordEmbeddings && quant.headWeights === 'native', hasEmbedding, hasHead, tpRank, tpSize, rope: { ...cfg.rope },
      ...(cfg.ropeLocal ? { ropeLocal: { ...cfg.ropeLocal } } : {}),
      slidingWindow: cfg.slidingWindow ?? 0,
      slidingLayers: layers.map((l) => (cfg.slidingLayers[l] ? 1 : 0)),
      kvWindowGroup: kvWindowLayout(cfg).kind === 'group',
      numExperts: moe?.numExperts ?? 0, expertStart: L.expertStart, expertEnd: L.expertEnd, topK: moe?.topK ?? 0,
      moeIntermediate: moe?.intermediate ?? 0, normTopK: moe?.normTopK ?? false, sharedIntermediate: L.sharedPerRank,
      sparseLayers: layers.map((l) => (moe?.sparseLayers[l] ? 1 : 0)),
      weights: quant.weights, headWeights: quant.headWeights, staticInputScales: quant.staticInputScales,
      fp8Activations: quant.fp8Activations, activationScaleUb: quant.activationScaleUb,
    },
  };
}

// The decoder's linears: attention, the dense MLP, the MoE's routed and shared experts (not the
// router or the shared expert's gate, which stay as stored).
const LAYER_LINEAR = /^model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(experts\.\d+\.|shared_expert\.)?(gate|up|down)_proj)\.weight$/;

/**
 * Rewrites the float plan's linear weights into what the backend takes for the shard's weight
 * formats (module comment), and adds their scale tensors.
 */
function planQuantization(cfg: ModelConfig, tensors: PlannedTensor[], hasEmbedding: boolean, hasHead: boolean, opts: PlanOptions) {
  const cq = cfg.quantization;
  const ask = opts.quantize ?? 'none';
  if (cq && ask !== 'none' && ask !== cq.weights) {
    throw new ShardPlanError(`--quantize ${ask}: ${cfg.dir} is already quantized (${cq.method} ${cq.weights}); serve it as it is (drop --quantize)`);
  }
  const weights: WeightFormat = cq ? cq.weights : ask === 'none' ? 'native' : ask;
  // A float checkpoint quantized at load: int8 (weight-only) takes the head along, fp8 (activations
  // quantized too) leaves it as stored, as FP8 checkpoints do (ignore: [lm_head]). A pre-quantized
  // checkpoint: as its config says, except a tied head, which is the (float) embedding.
  const headWeights: WeightFormat = cq ? (cq.headQuantized && !cfg.tieWordEmbeddings ? cq.weights : 'native') : ask === 'int8' ? 'int8' : 'native';
  const staticInputScales = cq?.weights === 'fp8' && cq.activations === 'static';
  const out: PlannedTensor[] = [];
  const quantDtype = (f: WeightFormat): BackendDType => (f === 'int8' ? 'i8' : 'f8e4m3');
  const floats: TensorDType[] = ['f32', 'bf16', 'f16'];

  // t: the float plan's entry of a linear weight stored as `fmt`.
  const linear = (t: PlannedTensor, fmt: WeightFormat, name = t.name) => {
    if (fmt === 'native') return out.push(t);
    // The checkpoint's module (a fused qkv_proj / gate_up_proj, mixtral's w1/w2/w3 for phi3 / mixtral).
    const module = (t.source ?? t.name).slice(0, -'.weight'.length);
    const rowsHere = t.shape[0]!, fullRows = t.fullShape[0]!;
    if (!cq) {  // quantized as it loads
      out.push({ ...t, name, ...(name !== t.name ? { source: t.name } : {}), dtype: quantDtype(fmt), convert: { kind: 'quantize', format: fmt } });
      return;
    }
    const packed = cq.format === 'pack-quantized';
    if (packed && (t.fullShape[1]! % 4 !== 0 || (t.slice.kind === 'cols' && (t.slice.start % 4 !== 0 || t.slice.end % 4 !== 0)))) {
      throw new ShardPlanError(`${cfg.dir}: tensor ${module}.weight_packed: ${t.fullShape[1]} input columns (or this rank's slice of them) are not a multiple of 4, ` +
        'so pack-quantized int8 words cannot be split');
    }
    const slice: Slice = packed && t.slice.kind === 'cols' ? { kind: 'cols', start: t.slice.start / 4, end: t.slice.end / 4 } : t.slice;
    out.push({ name, source: packed ? `${module}.weight_packed` : `${module}.weight`, fullShape: packed ? [fullRows, t.fullShape[1]! / 4] : t.fullShape,
      slice, shape: t.shape, dtypes: [packed ? 'i32' : quantDtype(fmt)], dtype: quantDtype(fmt), ...(packed ? { convert: { kind: 'unpack-int8' } } : {}) });
    const perChannel = cq.strategy === 'channel';
    const scaleSlice: Slice = perChannel && t.slice.kind === 'rows' ? { kind: 'rows', start: t.slice.start, end: t.slice.end } : { kind: 'whole' };
    out.push({ name: `${name}_scale`, source: `${module}.weight_scale`, fullShape: perChannel ? [fullRows, 1] : [1],
      altShapes: perChannel ? [[fullRows]] : [[]], slice: scaleSlice, shape: [rowsHere], dtypes: floats, dtype: 'f32',
      convert: { kind: 'scale', rows: rowsHere } });
    if (staticInputScales && name !== 'lm_head.weight') {  // a quantized head takes per-token scales (the backends keep none for it)
      out.push({ name: `${name.slice(0, -'.weight'.length)}.input_scale`, source: `${module}.input_scale`, fullShape: [1], altShapes: [[]],
        slice: { kind: 'whole' }, shape: [1], dtypes: floats, dtype: 'f32', convert: { kind: 'f32' } });
    }
  };

  for (const t of tensors) {
    if (LAYER_LINEAR.test(t.name)) {
      linear(t, weights);
    } else if (t.name === 'lm_head.weight') {
      linear(t, headWeights);
    } else if (t.name === 'model.embed_tokens.weight' && cfg.tieWordEmbeddings && headWeights !== 'native') {
      if (hasEmbedding) out.push(t);  // the lookup table, as stored
      if (hasHead) linear(t, headWeights, 'lm_head.weight');
    } else {
      out.push(t);
    }
  }
  // The fp8 KV cache's per-layer scales, where a compressed-tensors checkpoint has them.
  if (opts.kvCacheFp8 && cq?.kvCacheScales) {
    for (const t of tensors) {
      const m = /^(model\.layers\.\d+\.self_attn)\.([kv])_proj\.weight$/.exec(t.name);
      if (m) out.push({ name: `${m[1]}.${m[2]}_scale`, source: `${m[1]}.${m[2]}_proj.output_scale`, fullShape: [1], altShapes: [[]],
        slice: { kind: 'whole' }, shape: [1], dtypes: floats, dtype: 'f32', convert: { kind: 'f32' } });
    }
  }
  return { tensors: out, weights, headWeights, staticInputScales, fp8Activations: !(cq && cq.activations === 'none'),
    activationScaleUb: cq?.activationScaleUb ?? 0 };
}

/** Bytes the backend receives for a tensor (a quantized weight's scales not included). */
export function sliceBytes(t: PlannedTensor, dtype: DType): number {
  return t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype ?? dtype];
}

function sameShape(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Checks a checkpoint tensor against what config.json implies; the error names file and tensor. */
export function checkTensor(ckpt: Checkpoint, t: PlannedTensor, dtype: DType, dtypeFrom = `config.json's dtype ${dtype}`): TensorInfo {
  const src = t.source ?? t.name;
  const info = ckpt.get(src);
  if (!info) throw new ShardPlanError(`${ckpt.dir}: tensor ${src} is missing from the checkpoint`);
  if (!sameShape(info.shape, t.fullShape) && !(t.altShapes ?? []).some((a) => sameShape(info.shape, a))) {
    throw new ShardPlanError(`${info.file}: tensor ${src}: shape [${info.shape.join(', ')}] does not match config.json, which implies [${t.fullShape.join(', ')}]`);
  }
  const accepted = t.dtypes ?? [dtype];
  if (!accepted.includes(info.dtype)) {
    throw new ShardPlanError(`${info.file}: tensor ${src}: dtype ${info.dtype} does not match ` +
      (t.dtypes ? `the quantization_config (expected ${accepted.join(' or ')})` : dtypeFrom));
  }
  return info;
}

/** The dtypes a backend receives: floats, and the storage of quantized matrices. */
export type BackendDType = Exclude<TensorDType, 'i32' | 'i64'>;

export type TensorSink = (name: string, dtype: BackendDType, shape: number[], data: Uint8Array) => Promise<void>;

/**
 * Quantizes `rows` rows of `cols` float elements, each row with its own scale from the whole row,
 * returning only columns [c0, c1) (addon.quantize: native/src/common/quant.h).
 */
export type Quantizer = (data: Uint8Array, dtype: DType, rows: number, cols: number, format: 'int8' | 'fp8', c0: number, c1: number,
  what: string) => Promise<{ data: Uint8Array; scales: Float32Array }>;

/** Rows of a weight_scale / input_scale widened to f32; a single value is repeated `rows` times. */
function scalesF32(data: Uint8Array, dtype: TensorDType, rows: number, what: string): Float32Array {
  const n = data.byteLength / DTYPE_BYTES[dtype];
  const f = new Float32Array(convertTensor(data, dtype as DType, 'f32').slice().buffer);
  if (n !== 1 && n !== rows) throw new ShardPlanError(`${what}: ${n} scales for ${rows} rows`);
  const out = n === 1 ? new Float32Array(rows).fill(f[0]!) : f;
  for (const v of out) if (!Number.isFinite(v)) throw new ShardPlanError(`${what}: holds a non-finite scale`);
  return out;
}

async function readSlice(ckpt: Checkpoint, info: TensorInfo, slice: Slice): Promise<Uint8Array> {
  if (slice.kind === 'whole') return ckpt.readRows(info, 0, info.shape[0] ?? 1);
  if (slice.kind === 'rows') return ckpt.readRows(info, slice.start, slice.end);
  return ckpt.readColumns(info, slice.start, slice.end);
}

/** A float weight quantized as it loads: whole rows are read (column slices too, for the rows' scales). */
async function readQuantized(ckpt: Checkpoint, info: TensorInfo, t: PlannedTensor, format: 'int8' | 'fp8', quantize: Quantizer) {
  const [fullRows, cols] = info.shape as [number, number];
  const what = `${info.file}: tensor ${info.name}`;
  if (t.slice.kind !== 'cols') {
    const [r0, r1] = t.slice.kind === 'rows' ? [t.slice.start, t.slice.end] : [0, fullRows];
    return quantize(await ckpt.readRows(info, r0, r1), info.dtype as DType, r1 - r0, cols, format, 0, cols, what);
  }
  const { start: c0, end: c1 } = t.slice;
  const w = c1 - c0;
  const data = new Uint8Array(fullRows * w), scales = new Float32Array(fullRows);
  const rowBytes = cols * DTYPE_BYTES[info.dtype];
  const block = Math.max(1, Math.floor((8 << 20) / rowBytes));
  const buf = new Uint8Array(Math.min(fullRows, block) * rowBytes);
  for (let r = 0; r < fullRows; r += block) {
    const n = Math.min(block, fullRows - r);
    const q = await quantize(await ckpt.readRows(info, r, r + n, buf), info.dtype as DType, n, cols, format, c0, c1, what);
    data.set(q.data, r * w);
    scales.set(q.scales, r);
  }
  return { data, scales };
}

/** compressed-tensors pack-quantized int8: each int32 word holds four values + 128, lowest byte first. */
function unpackInt8(words: Uint8Array): Uint8Array {
  const out = new Uint8Array(words.byteLength);
  const src = new Uint32Array(words.buffer, words.byteOffset, words.byteLength / 4);
  const dst = new Uint32Array(out.buffer);
  for (let i = 0; i < src.length; i++) dst[i] = src[i]! ^ 0x80808080;
  return out;
}

/**
 * Reads this shard's slices one tensor at a time and hands each to `sink`, awaiting it before the
 * next read so at most one slice is in memory. Every tensor is checked before the first byte is
 * read, so a bad checkpoint fails fast. onProgress(bytesDone, bytesTotal) after each tensor.
 * `quantize` is needed when the plan quantizes at load (PlanOptions.quantize).
 */
export async function loadShard(ckpt: Checkpoint, plan: ShardPlan, sink: TensorSink,
  onProgress?: (done: number, total: number) => void, quantize?: Quantizer): Promise<void> {
  const infos = plan.tensors.map((t) => checkTensor(ckpt, t, plan.dtype, plan.dtypeFrom));
  if (plan.tensors.some((t) => t.convert?.kind === 'quantize') && !quantize) throw new Error('loadShard: this plan quantizes at load: pass a quantizer');
  const total = plan.tensors.reduce((s, t) => s + sliceBytes(t, plan.dtype), 0);
  let done = 0;
  for (let i = 0; i < plan.tensors.length; i++) {
    const t = plan.tensors[i]!, info = infos[i]!;
    const c = t.convert;
    const what = `${info.file}: tensor ${info.name}`;
    let data: Uint8Array;
    if (c?.kind === 'quantize') {
      const q = await readQuantized(ckpt, info, t, c.format, quantize!);
      await sink(t.name, t.dtype!, t.shape, q.data);
      await sink(`${t.name}_scale`, 'f32', [t.shape[0]!], new Uint8Array(q.scales.buffer, q.scales.byteOffset, q.scales.byteLength));
      data = q.data;
    } else {
      data = await readSlice(ckpt, info, t.slice);
      if (c?.kind === 'unpack-int8') data = unpackInt8(data);
      else if (c?.kind === 'scale' || c?.kind === 'f32') {
        const f = scalesF32(data, info.dtype, c.kind === 'scale' ? c.rows : 1, what);
        data = new Uint8Array(f.buffer, f.byteOffset, f.byteLength);
      }
      await sink(t.name, t.dtype ?? (info.dtype as BackendDType), t.shape, data);
    }
    done += data.byteLength;
    onProgress?.(done, total);
  }
}
