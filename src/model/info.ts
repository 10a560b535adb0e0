// `nodespeed model info`: what a checkpoint is and what it needs per tensor-parallel degree.
import type { ModelConfig } from './config.js';
import { loadModelConfig } from './config.js';
import { describeQuant } from './quantization.js';
import { DTYPE_BYTES, openCheckpoint } from './safetensors.js';
import type { TensorDType } from './safetensors.js';
import { planShard, sliceBytes } from './weights.js';

export interface TpMemory {
  tp: number;
  /** Why this degree cannot split the model (heads/intermediate not divisible), else null. */
  unsupported: string | null;
  /** Weight bytes of the largest rank (rank 0: vocab slots round up) at the checkpoint dtype. */
  weightBytesPerRank: number;
  /** K and V of one token over all layers on one rank, in 16-bit (GPU) and f32 (CPU) storage. */
  kvBytesPerToken16: number;
  kvBytesPerToken32: number;
  /** Weights + a full max_position_embeddings context of KV (16-bit) on one rank. */
  totalBytesPerRankAtMaxContext: number;
  /** A float checkpoint: the largest rank's weights quantized at load (--quantize int8 / fp8), scales included. */
  quantizedWeightBytesPerRank: { int8: number; fp8: number } | null;
}

export interface ModelInfo {
  dir: string;
  architecture: string;
  modelType: string;
  config: ModelConfig;
  /** Parameters as config.json implies them (a tied head counted once). */
  parameters: number;
  /** Parameters and bytes actually in the safetensors files, per dtype. */
  checkpoint: { tensors: number; parameters: number; bytes: number; dtypes: Partial<Record<TensorDType, number>>; files: number };
  memory: TpMemory[];
}

export function parameterCount(cfg: ModelConfig): number {
  // The float plan: a quantized checkpoint's packed words and scale tensors are not parameters.
  const plan = planShard({ ...cfg, quantization: null }, { tpRank: 0, tpSize: 1, layerStart: 0, layerEnd: cfg.numLayers });
  // Fused tensors (phi3's qkv_proj) feed several planned slices: count each checkpoint tensor once.
  const seen = new Map<string, number>();
  for (const t of plan.tensors) seen.set(t.source ?? t.name, t.fullShape.reduce((a, b) => a * b, 1));
  return [...seen.values()].reduce((a, b) => a + b, 0);
}

/** Bytes a planned shard hands its backend: weights (quantized ones at one byte) and their f32 scales. */
function planBytes(plan: ReturnType<typeof planShard>, cfg: ModelConfig): number {
  return plan.tensors.reduce((s, t) => s + sliceBytes(t, cfg.dtype) + (t.convert?.kind === 'quantize' ? 4 * t.shape[0]! : 0), 0);
}

export function tpMemory(cfg: ModelConfig, tp: number): TpMemory {
  const empty = { tp, weightBytesPerRank: 0, kvBytesPerToken16: 0, kvBytesPerToken32: 0, totalBytesPerRankAtMaxContext: 0,
    quantizedWeightBytesPerRank: null };
  let plan;
  const range = { tpRank: 0, tpSize: tp, layerStart: 0, layerEnd: cfg.numLayers };
  try {
    plan = planShard(cfg, range);
  } catch (err) {
    return { ...empty, unsupported: (err as Error).message };
  }
  const weights = planBytes(plan, cfg);
  const kvElems = 2 * cfg.numLayers * plan.shardConfig.nKvHeads * cfg.headDim;
  return {
    tp, unsupported: null, weightBytesPerRank: weights, kvBytesPerToken16: kvElems * 2, kvBytesPerToken32: kvElems * 4,
    totalBytesPerRankAtMaxContext: weights + kvElems * 2 * plan.shardConfig.maxPosition,
    quantizedWeightBytesPerRank: cfg.quantization ? null : {
      int8: planBytes(planShard(cfg, range, { quantize: 'int8' }), cfg), fp8: planBytes(planShard(cfg, range, { quantize: 'fp8' }), cfg),
    },
  };
}

export async function modelInfo(dir: string, tpDegrees = [1, 2, 4, 8]): Promise<ModelInfo> {
  const cfg = loadModelConfig(dir);
  const ck = await openCheckpoint(dir);
  const dtypes: Partial<Record<TensorDType, number>> = {};
  let parameters = 0, bytes = 0;
  try {
    for (const t of ck.tensors.values()) {
      // compressed-tensors pack-quantized int8: four int8 weights to an int32 word.
      const packed = t.dtype === 'i32' && t.name.endsWith('.weight_packed');
      const n = (t.bytes / DTYPE_BYTES[t.dtype]) * (packed ? 4 : 1);
      const d = packed ? 'i8' : t.dtype;
      dtypes[d] = (dtypes[d] ?? 0) + n;
      parameters += n;
      bytes += t.bytes;
    }
    return {
      dir, architecture: cfg.architecture, modelType: cfg.modelType, config: cfg, parameters: parameterCount(cfg),
      checkpoint: { tensors: ck.tensors.size, parameters, bytes, dtypes, files: ck.files.length },
      memory: tpDegrees.map((tp) => tpMemory(cfg, tp)),
    };
  } finally {
    await ck.close();
  }
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i === 0 ? n : n.toFixed(n >= 100 ? 0 : n >= 10 ? 1 : 2)} ${units[i]}`;
}

export function formatCount(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}K`;
  return String(n);
}

export function formatInfo(i: ModelInfo): string {
  const c = i.config;
  const rope = c.rope.type === 'default' ? `default, theta ${c.rope.theta}`
    : `${c.rope.type}, theta ${c.rope.theta}, factor ${c.rope.factor}` +
      (c.rope.type === 'llama3' ? `, low/high freq ${c.rope.lowFreqFactor}/${c.rope.highFreqFactor}, original max ${c.rope.originalMaxPos}` : '');
  const attn = c.numKvHeads === c.numHeads ? 'MHA' : c.numKvHeads === 1 ? 'MQA' : 'GQA';
  const lines = [
    `model         ${i.dir}`,
    `architecture  ${i.architecture} (model_type ${i.modelType})`,
    `layers        ${c.numLayers}, hidden ${c.hiddenSize}, intermediate ${c.intermediateSize}`,
    `attention     ${c.numHeads} heads, ${c.numKvHeads} KV heads (${attn}), head_dim ${c.headDim}${c.qkvBias ? ', q/k/v bias' : ''}`,
    `vocab         ${c.vocabSize}${c.tieWordEmbeddings ? ' (tied embeddings)' : ''}`,
    `context       ${c.maxPosition} positions${c.slidingWindow ? `, sliding window ${c.slidingWindow} on ${c.slidingLayers.filter(Boolean).length} of ${c.numLayers} layers` : ''}${c.moe ? `; ${c.moe.numExperts} experts, top-${c.moe.topK}${c.moe.sharedIntermediate ? ", shared expert" : ''}` : ''}`,
    `rope          ${rope}`,
    `parameters    ${formatCount(i.parameters)} (${i.parameters})`,
    `dtype         config ${c.torchDtype || '(unset)'}; tensors ${Object.entries(i.checkpoint.dtypes).map(([d, n]) => `${d} ${formatCount(n!)}`).join(', ')}`,
    `quantization  ${c.quantization ? describeQuant(c.quantization) : 'none (float weights; --quantize int8 or fp8 quantizes them at load)'}`,
    `checkpoint    ${i.checkpoint.tensors} tensors in ${i.checkpoint.files} file(s), ${formatBytes(i.checkpoint.bytes)}`,
    '',
    `memory per rank (weights ${c.quantization ? `as quantized (${c.quantization.weights}, f32 scales)` : `at ${c.dtype}`}; ` +
      'KV cache per token over all layers: 16-bit on GPU (fp8: half), f32 on CPU)',
    `  tp  weights      KV/token 16-bit  KV/token f32  weights + KV at max context (16-bit)${c.quantization ? '' : '  --quantize int8 / fp8 weights'}`,
  ];
  for (const m of i.memory) {
    if (m.unsupported) {
      lines.push(`  ${String(m.tp).padEnd(3)} n/a: ${m.unsupported}`);
      continue;
    }
    const q = m.quantizedWeightBytesPerRank;
    lines.push((`  ${String(m.tp).padEnd(3)} ${formatBytes(m.weightBytesPerRank).padEnd(12)} ${formatBytes(m.kvBytesPerToken16).padEnd(16)} ` +
      `${formatBytes(m.kvBytesPerToken32).padEnd(13)} ${formatBytes(m.totalBytesPerRankAtMaxContext).padEnd(38)}` +
      (q ? `${formatBytes(q.int8)} / ${formatBytes(q.fp8)}` : '')).trimEnd());
  }
  return lines.join('\n');
}
