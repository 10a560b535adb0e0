// Which smaller layout failover picks when a replica's lost ranks cannot be restarted
// (recovery (c), src/coordinator/shrink.ts): the largest tp' <= tp x pp' <= pp the ranks left can
// hold (most ranks, then the larger TP), TP groups on one host unless --allow-tp-across-hosts, heads
// that split, and the memory estimate of memory.ts; nothing that fits means the replica is retired.
// No process is started.
import { describe, expect, it } from 'vitest';

import { estimateMemory } from '../../src/coordinator/memory.js';
import { candidates, chooseShrink } from '../../src/coordinator/shrink.js';
import type { ShrinkInput, Survivor } from '../../src/coordinator/shrink.js';
import { loadModelConfig } from '../../src/model/config.js';
import type { ModelConfig } from '../../src/model/config.js';
import { PY_TINY } from '../serving/helpers.js';

const tiny = loadModelConfig(PY_TINY); // 6 layers, 8 heads, 4 KV heads
/** Llama-2-7B's shapes: ~12.6 GiB of bf16 weights, 4 GiB of KV cache for 8192 tokens at tp 1. */
const llama7b: ModelConfig = { ...tiny, hiddenSize: 4096, intermediateSize: 11008, numHeads: 32, numKvHeads: 32, headDim: 128, vocabSize: 32000,
  numLayers: 32, maxPosition: 4096, tieWordEmbeddings: false };
const GiB = 2 ** 30;

const at = (host: string, ...ranks: number[]): Survivor[] => ranks.map((rank, localRank) => ({ rank, host, localRank }));
const cpu = { device: 'cpu' as const, dtype: 'auto', kvBlocks: 256, kvBlockSize: 16 };
const gpu = (gib: number) => ({ device: 'cuda' as const, dtype: 'auto', kvBlocks: 512, kvBlockSize: 16, gpuMemory: gib * GiB });
const input = (tp: number, pp: number, survivors: Survivor[], over: Partial<ShrinkInput> = {}): ShrinkInput =>
  ({ config: tiny, replica: 1, tp, pp, survivors, memory: cpu, allowTpAcrossHosts: false, ...over });
/** [rank, stage, tpRank, layerStart, layerEnd] of each rank kept, driver first. */
const picked = (i: ShrinkInput) => {
  const { plan, refused } = chooseShrink(i);
  return { shape: plan && `tp ${plan.tp} x pp ${plan.pp}`, ranks: plan?.ranks.map((r) => [r.rank, r.stage, r.tpRank, r.layerStart, r.layerEnd]),
    surplus: plan?.surplus, refused };
};

describe('chooseShrink: the layout a replica is re-formed with when some ranks cannot be restarted', () => {
  it('tries the shapes with the most ranks first, then the larger TP, never growing tp or pp', () => {
    expect(candidates(2, 2, 3)).toEqual([[2, 1], [1, 2], [1, 1]]);
    expect(candidates(2, 1, 1)).toEqual([[1, 1]]);
    expect(candidates(4, 2, 6)).toEqual([[3, 2], [4, 1], [2, 2], [3, 1], [2, 1], [1, 2], [1, 1]]);
    expect(candidates(2, 1, 0)).toEqual([]);
  });

  it('tp 2 -> tp 1 on the rank left; pp 2 -> pp 1 on the last stage, which then holds every layer and drives', () => {
    expect(picked(input(2, 1, at('node-a', 0)))).toMatchObject({ shape: 'tp 1 x pp 1', ranks: [[0, 0, 0, 0, 6]], surplus: [], refused: [] });
    expect(picked(input(1, 2, at('node-b', 1)))).toMatchObject({ shape: 'tp 1 x pp 1', ranks: [[1, 0, 0, 0, 6]], surplus: [] });
  });

  it('tp 2 x pp 2 with 3 ranks left: tp 2 x pp 1 on one host; the third rank is left out (it becomes a spare)', () => {
    expect(picked(input(2, 2, at('node-a', 0, 1, 2)))).toMatchObject({ shape: 'tp 2 x pp 1', ranks: [[0, 0, 0, 0, 6], [1, 0, 1, 0, 6]], surplus: [2] });
    // Rank 1 (node-a) lost: node-b's two ranks form the TP group, rank 0 is left out...
    const split = [...at('node-a', 0), ...at('node-b', 2, 3)];
    expect(picked(input(2, 2, split))).toMatchObject({ shape: 'tp 2 x pp 1', ranks: [[2, 0, 0, 0, 6], [3, 0, 1, 0, 6]], surplus: [0] });
    // ...unless TP groups may span hosts: then the old driver drives again.
    expect(picked(input(2, 2, split, { allowTpAcrossHosts: true }))).toMatchObject({ ranks: [[0, 0, 0, 0, 6], [2, 0, 1, 0, 6]], surplus: [3] });
    // One rank per host: no TP group of 2 fits on a host, two pipeline stages do.
    expect(picked(input(2, 2, [...at('node-a', 0), ...at('node-b', 2)]))).toMatchObject({
      shape: 'tp 1 x pp 2', ranks: [[0, 0, 0, 0, 3], [2, 1, 0, 3, 6]], refused: [expect.stringMatching(/^tp 2 x pp 1: stage 0 has no 2 ranks left on one host/)],
    });
  });

  it('a TP size that does not split the heads is skipped, naming why', () => {
    const r = picked(input(4, 1, at('node-a', 0, 1, 2)));
    expect(r).toMatchObject({ shape: 'tp 2 x pp 1', ranks: [[0, 0, 0, 0, 6], [1, 0, 1, 0, 6]], surplus: [2] });
    expect(r.refused).toEqual(['tp 3 x pp 1: does not divide the model\'s 8 attention heads']);
  });

  it('memory (cuda): a 7B tp=2 replica shrinks to tp 1 on a 24 GiB GPU; on a 16 GiB GPU nothing fits and it is retired', () => {
    const fits = picked(input(2, 1, at('gpu-a', 0), { config: llama7b, memory: gpu(24) }));
    expect(fits).toMatchObject({ shape: 'tp 1 x pp 1', ranks: [[0, 0, 0, 0, 32]] });
    const none = chooseShrink(input(2, 1, at('gpu-a', 0), { config: llama7b, memory: gpu(16) }));
    expect(none.plan).toBeUndefined();
    expect(none.refused).toHaveLength(1);
    expect(none.refused[0]).toMatch(/^tp 1 x pp 1: rank 0 on gpu-a needs ~16\.\d GiB, a GPU offers 14\.4 GiB$/);
    // The GPU memory a survivor reported wins over the flag's default (the smallest of the survivors').
    expect(chooseShrink(input(2, 1, [{ rank: 0, host: 'gpu-a', localRank: 0, gpuMemory: 16 * GiB }], { config: llama7b, memory: gpu(24) })).plan)
      .toBeUndefined();
  });

  it('memory (cuda): tp 2 x pp 2 on 16 GiB GPUs keeps 2 ranks per stage-worth of weights: tp 2 x pp 1 or, across hosts, tp 1 x pp 2', () => {
    expect(picked(input(2, 2, at('gpu-a', 0, 1), { config: llama7b, memory: gpu(16) }))).toMatchObject({ shape: 'tp 2 x pp 1', refused: [] });
    const split = picked(input(2, 2, [...at('gpu-a', 0), ...at('gpu-b', 3)], { config: llama7b, memory: gpu(16) }));
    expect(split).toMatchObject({ shape: 'tp 1 x pp 2', ranks: [[0, 0, 0, 0, 16], [3, 1, 0, 16, 32]] });
    // One 16 GiB GPU left of the four: nothing fits.
    expect(chooseShrink(input(2, 2, at('gpu-a', 1), { config: llama7b, memory: gpu(16) })).plan).toBeUndefined();
  });

  it('memory (cpu): the host\'s RAM is shared with the other ranks on it, as at launch', () => {
    const one = estimateMemory(tiny, { tp: 1, pp: 1, replicas: 1, world: 1, stages: [], ranks: [{ rank: 0, host: 'node-a', localRank: 0, replica: 0, stage: 0,
      tpRank: 0, layerStart: 0, layerEnd: 6 }] }, cpu).ranks[0]!.totalBytes;
    const ram = (one * 1.5) / 0.9; // room for the new rank and half as much again
    expect(picked(input(2, 1, at('node-a', 0), { memory: { ...cpu, hostMemory: ram } })).shape).toBe('tp 1 x pp 1');
    const crowded = chooseShrink(input(2, 1, at('node-a', 0), { memory: { ...cpu, hostMemory: ram, hostUsedBytes: new Map([['node-a', one]]) } }));
    expect(crowded.plan).toBeUndefined();
    expect(crowded.refused[0]).toMatch(/^tp 1 x pp 1: the ranks on node-a need ~0\.\d+ GiB together, the host has ~0\.\d+ GiB of which other ranks use ~0\.\d+ GiB$/);
    // Another host's use does not count.
    expect(chooseShrink(input(2, 1, at('node-a', 0), { memory: { ...cpu, hostMemory: ram, hostUsedBytes: new Map([['node-b', one]]) } })).plan).toBeDefined();
  });

  it('no rank left: nothing to re-form (retired)', () => {
    expect(chooseShrink(input(2, 1, []))).toEqual({ refused: ['no rank of the replica could be restarted'] });
  });
});
