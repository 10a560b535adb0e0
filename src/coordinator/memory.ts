// Per-rank memory estimate for `nodespeed launch --dry-run` (and the check that refuses a layout
// that does not fit): the rank's weight slices, its KV cache, the scratch of its largest step
// (--max-batch-tokens tokens) and a fixed working reserve.
import { totalmem } from 'node:os';

import type { ModelConfig } from '../model/config.js';
import type { QuantizeChoice } from '../model/quantization.js';
import type { KvCacheDtypeChoice } from '../model/precision.js';
import type { Layout, RankPlan } from './layout.js';

export interface RankMemory {
  rank: number;
  host: string;
  weightBytes: number;
  kvBytes: number;
  /** Activations of one step of `stepTokens` tokens (the CUDA backend keeps this much free beside the KV cache). */
  scratchBytes: number;
  totalBytes: number;
}

export interface MemoryCheck {
  ranks: RankMemory[];
  /** Memory one rank may use: a GPU's memory x fraction, or a host's RAM shared by its ranks. */
  budgetBytes: Map<string, number>;
  problems: string[];
}

const RESERVE = 256 * 2 ** 20; // runtime, allocator slack

function bytesOf(dtype: string, fallback: string): number {
  const d = dtype === 'auto' ? fallback : dtype;
  return d === 'f32' ? 4 : 2;
}

/** Weight parameters a rank holds: its TP share of its stage's layers, plus embedding / head slices. */
export function rankWeightParams(c: ModelConfig, p: RankPlan, tp: number, pp: number): number {
  const w = rankWeights(c, p, tp, pp);
  return w.linear + w.embedding + w.head + w.norms;
}

/** rankWeightParams by kind: decoder linears, embedding rows, LM head rows (0 when tied to a held embedding), norms. */
function rankWeights(c: ModelConfig, p: RankPlan, tp: number, pp: number) {
  const h = c.hiddenSize;
  const kvHeads = Math.max(1, c.numKvHeads / tp); // replicated when tp > kv heads
  const linear = (p.layerEnd - p.layerStart) * ((h * c.numHeads * c.headDim) / tp + 2 * h * kvHeads * c.headDim +
    (c.numHeads * c.headDim * h) / tp + (3 * h * c.intermediateSize) / tp);
  const vocabShare = Math.ceil(c.vocabSize / tp) * h;
  const embedding = p.stage === 0 ? vocabShare : 0;
  const head = p.stage === pp - 1 && !(c.tieWordEmbeddings && pp === 1) ? vocabShare : 0;
  const norms = (p.layerEnd - p.layerStart) * 2 * h + (p.stage === pp - 1 ? h : 0);
  return { linear, embedding, head, norms, tiedHead: p.stage === pp - 1 && c.tieWordEmbeddings && pp === 1 ? vocabShare : 0 };
}

/** Bytes of a rank's weights as the backend keeps them, quantized linears at one byte (plus an f32 scale a row). */
function rankWeightBytes(c: ModelConfig, p: RankPlan, tp: number, pp: number, o: MemoryOptions): number {
  const float = o.device === 'cpu' ? bytesOf(o.dtype, c.dtype) : 2;
  const w = rankWeights(c, p, tp, pp);
  const q = c.quantization?.weights ?? (o.quantize && o.quantize !== 'none' ? o.quantize : null);
  if (!q) return (w.linear + w.embedding + w.head + w.norms) * float;
  // int8 quantizes the head too (a tied one gets its own quantized copy); fp8 keeps it as stored.
  const headQ = q === 'int8' || (c.quantization?.headQuantized ?? false);
  const head = headQ ? (w.head + w.tiedHead) * 1 : w.head * float;
  return w.linear * 1 + w.embedding * float + head + w.norms * 4;
}

export interface MemoryOptions {
  device: 'cpu' | 'cuda';
  dtype: string;
  /** --quantize: decoder linears (and with int8 the LM head) at one byte a weight. */
  quantize?: QuantizeChoice;
  /** --kv-cache-dtype fp8: one byte per cached element (CUDA). */
  kvCacheDtype?: KvCacheDtypeChoice;
  kvBlocks: number;
  kvBlockSize: number;
  /** Per-GPU memory (bytes) for cuda; ignored for cpu. */
  gpuMemory?: number;
  gpuMemoryFraction?: number;
  /** RAM of each host for cpu (bytes); default: this machine's. */
  hostMemory?: number;
  /** Bytes other ranks (not in `l`) already use on a host, for cpu: a re-formed replica shares the host's RAM. */
  hostUsedBytes?: Map<string, number>;
  /** Most tokens one step carries (--max-batch-tokens); 0 or absent: no step scratch counted. */
  stepTokens?: number;
}

/**
 * Activation bytes of one step of `tokens` tokens on a rank of TP degree `tp`: the f32 residual
 * stream and its partial sums, and the activation-dtype input, q|k|v, attention output, gate|up and
 * SwiGLU buffers (CudaBackend::activation_bytes).
 */
export function stepScratchBytes(c: ModelConfig, tp: number, tokens: number, device: 'cpu' | 'cuda'): number {
  const act = device === 'cpu' ? 4 : 2;
  const kvHeads = Math.max(1, c.numKvHeads / tp);
  const qd = (c.numHeads / tp) * c.headDim;
  const perToken = 8 * c.hiddenSize + act * (c.hiddenSize + qd + 2 * kvHeads * c.headDim + qd + (3 * c.intermediateSize) / tp);
  return Math.ceil(tokens * perToken);
}

export function estimateMemory(c: ModelConfig, l: Layout, o: MemoryOptions): MemoryCheck {
  // CPU keeps weights in the requested storage dtype (auto: as stored) and computes (and caches) f32.
  const kvElt = o.device === 'cpu' ? 4 : o.kvCacheDtype === 'fp8' ? 1 : 2;
  const kvHeads = Math.max(1, c.numKvHeads / l.tp);
  // With no explicit --kv-blocks the CPU backend sizes the cache for 8 full-context sequences.
  const kvTokens = o.kvBlocks > 0 ? o.kvBlocks * o.kvBlockSize : 8 * c.maxPosition;
  const ranks = l.ranks.map((p) => {
    const weightBytes = rankWeightBytes(c, p, l.tp, l.pp, o);
    const kvBytes = kvTokens * (p.layerEnd - p.layerStart) * 2 * kvHeads * c.headDim * kvElt;
    const scratchBytes = stepScratchBytes(c, l.tp, o.stepTokens ?? 0, o.device);
    return { rank: p.rank, host: p.host, weightBytes, kvBytes, scratchBytes, totalBytes: weightBytes + kvBytes + scratchBytes + RESERVE };
  });
  const budgetBytes = new Map<string, number>();
  const problems: string[] = [];
  if (o.device === 'cuda') {
    const budget = (o.gpuMemory ?? 0) * (o.gpuMemoryFraction ?? 0.9);
    for (const r of ranks) {
      budgetBytes.set(r.host, budget);
      if (budget > 0 && r.totalBytes > budget)
        problems.push(`rank ${r.rank} on ${r.host} needs ~${gib(r.totalBytes)} GiB, a GPU offers ${gib(budget)} GiB`);
    }
  } else {
    // Hosts are assumed alike: this machine's RAM is the yardstick for every host.
    const ram = (o.hostMemory ?? totalmem()) * 0.9;
    const perHost = new Map<string, number>();
    for (const r of ranks) perHost.set(r.host, (perHost.get(r.host) ?? 0) + r.totalBytes);
    for (const [host, need] of perHost) {
      const used = o.hostUsedBytes?.get(host) ?? 0;
      budgetBytes.set(host, ram - used);
      if (need + used > ram)
        problems.push(`the ranks on ${host} need ~${gib(need)} GiB together, the host has ~${gib(ram)} GiB` +
          (used > 0 ? ` of which other ranks use ~${gib(used)} GiB` : ''));
    }
  }
  return { ranks, budgetBytes, problems };
}

export function gib(b: number): string {
  return (b / 2 ** 30).toFixed(b < 2 ** 30 ? 3 : 1);
}
