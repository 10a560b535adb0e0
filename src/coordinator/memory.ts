// Per-rank memory estimate for `nodespeed launch --dry-run` (and the check that refuses a layout
// that does not fit): the rank's weight slices, its KV cache, the scratch of its largest step
// (--max-batch-tokens tokens) and a fixed working reserve.
import { totalmem } from 'node:os';

import { kvWindowLayout, type ModelConfig } from '../model/config.js';
import type { QuantizeChoice } from '../model/quantization.js';
import type { KvCacheDtypeChoice } from '../model/precision.js';
import { planShard } from '../model/weights.js';
import type { GroupPlan, GroupServing, Layout, RankPlan } from './layout.js';

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
  return d === 'f32' ? 4 : d === 'int8' || d === 'fp8' ? 1 : 2;
}

/** Ranks of one layout (tp x pp): a group's, or one replica's. */
export interface GroupRanks {
  tp: number;
  pp: number;
  ranks: RankPlan[];
}

/** A group's ranks in the layout (the first group's by default). */
export function groupRanks(l: Layout, g: GroupPlan = l.groups[0]!): GroupRanks {
  const gi = l.groups.indexOf(g);
  return { tp: g.tp, pp: g.pp, ranks: l.ranks.filter((r) => l.replicaGroup[r.replica] === gi) };
}

/**
 * Weight parameters a rank holds: exactly the slices planShard gives it (its TP share of its
 * stage's layers, its whole experts of an MoE, embedding / head slices).
 */
export function rankWeightParams(c: ModelConfig, p: RankPlan, tp: number, _pp: number): number {
  // The float plan: a quantized checkpoint's packed words and scale tensors are not parameters.
  const plan = planShard({ ...c, quantization: null }, { tpRank: p.tpRank, tpSize: tp, layerStart: p.layerStart, layerEnd: p.layerEnd });
  return plan.tensors.reduce((n, t) => n + t.shape.reduce((a, b) => a * b, 1), 0);
}

/**
 * Bytes of a rank's weights as the backend keeps them: floats at the storage dtype, quantized
 * matrices (--quantize, or a pre-quantized checkpoint) at one byte a weight plus an f32 scale a row
 * (an MoE's routed and shared experts too: both backends keep them quantized).
 */
export function rankWeightBytes(c: ModelConfig, p: RankPlan, tp: number, o: MemoryOptions): number {
  const float = o.device === 'cpu' ? bytesOf(o.dtype, c.dtype) : 2;
  const plan = planShard(c, { tpRank: p.tpRank, tpSize: tp, layerStart: p.layerStart, layerEnd: p.layerEnd },
    { quantize: o.quantize ?? 'none' });
  return plan.tensors.reduce((n, t) => {
    const elems = t.shape.reduce((a, b) => a * b, 1);
    const quantized = t.dtype === 'i8' || t.dtype === 'f8e4m3';
    const scales = t.convert?.kind === 'quantize' ? 4 * t.shape[0]! : 0;  // X.weight_scale, made as it loads
    return n + elems * (quantized ? 1 : t.dtype === 'f32' ? 4 : float) + scales;
  }, 0);
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

/** The memory options of a replica group's ranks: its device, precision and KV cache. */
export function memoryOptionsOf(s: GroupServing): Pick<MemoryOptions, 'device' | 'dtype' | 'quantize' | 'kvCacheDtype' | 'kvBlocks'> {
  return { device: s.device, dtype: s.dtype, quantize: s.quantize, kvCacheDtype: s.kvCacheDtype, kvBlocks: s.kvBlocks };
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

/**
 * Blocks of the windowed layers' own pool beside a global pool of `globalBlocks` (models whose
 * windowed and global layers mix): a ring of the blocks a window plus one step spans, for as many
 * sequences as the global pool holds at full context (as the backends size it: engine.h
 * kv_window_pool_blocks). 0 when the model keeps no such pool.
 */
export function windowPoolBlocks(c: ModelConfig, globalBlocks: number, blockSize: number, stepTokens: number): number {
  const w = kvWindowLayout(c);
  if (w.kind !== 'group' || globalBlocks <= 0) return 0;
  const step = stepTokens > 0 ? stepTokens : 2048;
  const ctx = Math.ceil(c.maxPosition / blockSize);
  const ring = Math.min(ctx, Math.ceil((w.window + step - 1) / blockSize));
  const share = ctx > 0 ? Math.ceil((globalBlocks * ring) / ctx) : globalBlocks;
  return Math.min(globalBlocks, Math.max(ring, share));
}

/**
 * KV blocks of a CPU rank given no --kv-blocks (cpu_backend.cc): room for 8 sequences of
 * min(context, 4096) tokens, at most 2 GiB of f32 K+V over the rank's layers, at least one sequence.
 */
function cpuDefaultKvBlocks(c: ModelConfig, kvHeads: number, blockSize: number, layers: number): number {
  const perSeq = Math.ceil(Math.min(c.maxPosition, 4096) / blockSize);
  const cap = Math.floor(2 ** 31 / Math.max(1, blockSize * kvHeads * c.headDim * 4 * 2 * Math.max(1, layers)));
  return Math.max(perSeq, Math.min(8 * perSeq, cap));
}

export function estimateMemory(c: ModelConfig, l: GroupRanks, o: MemoryOptions): MemoryCheck {
  // CPU keeps weights in the requested storage dtype (auto: as stored) and computes (and caches) f32.
  const kvElt = o.device === 'cpu' ? 4 : o.kvCacheDtype === 'fp8' ? 1 : 2;
  const kvHeads = Math.max(1, c.numKvHeads / l.tp);
  const windowGroup = kvWindowLayout(c).kind === 'group';
  // Ranks of equal slices (every replica's, every data-parallel copy) are planned once.
  const weightsOf = new Map<string, number>();
  const ranks = l.ranks.map((p) => {
    const key = `${p.tpRank}:${p.layerStart}:${p.layerEnd}`;
    const weightBytes = weightsOf.get(key) ?? rankWeightBytes(c, p, l.tp, o);
    weightsOf.set(key, weightBytes);
    const layers = p.layerEnd - p.layerStart;
    // With no explicit --kv-blocks the CPU backend sizes its own cache; a GPU's is what memory is
    // left, counted here as 8 full-context sequences.
    const blocks = o.kvBlocks > 0 ? o.kvBlocks
      : o.device === 'cpu' ? cpuDefaultKvBlocks(c, kvHeads, o.kvBlockSize, layers) : Math.ceil((8 * c.maxPosition) / o.kvBlockSize);
    // The windowed layers of a model that mixes them with global ones keep only their ring pool.
    const windowBlocks = windowPoolBlocks(c, blocks, o.kvBlockSize, o.stepTokens ?? 0);
    const windowed = windowGroup ? c.slidingLayers.slice(p.layerStart, p.layerEnd).filter(Boolean).length : 0;
    const layerBlocks = (layers - windowed) * blocks + windowed * windowBlocks;
    const kvBytes = layerBlocks * o.kvBlockSize * 2 * kvHeads * c.headDim * kvElt;
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
