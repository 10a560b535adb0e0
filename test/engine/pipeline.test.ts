// Pipeline stages in one process: layers [0, 2) hand their activations (hiddenOut) to layers
// [2, 4) (hiddenIn), and the two stages together give the full model's logits and samples.
import { afterAll, beforeAll, expect, it } from 'vitest';

import { BlockAllocator, Engine } from '../../src/engine/index.js';
import { F32, maxAbsDiff, reference } from './helpers.js';
import type { FixtureCase } from './helpers.js';

let first: Engine, last: Engine;
beforeAll(async () => {
  [first, last] = await Promise.all([
    Engine.load(F32, { device: 'cpu', layerStart: 0, layerEnd: 2, kvBlocks: 16 }),
    Engine.load(F32, { device: 'cpu', layerStart: 2, layerEnd: 4, kvBlocks: 16 }),
  ]);
});
afterAll(() => {
  first?.dispose();
  last?.dispose();
});

it('two stages reproduce the reference logits, prefill and decode, several sequences per step', async () => {
  const { cases } = reference<FixtureCase>(F32);
  expect(first.shard.hasHead).toBe(false);
  expect(last.shard.hasEmbedding).toBe(false);
  const alloc = new BlockAllocator(16, 16);
  const seqs = cases.map((c, i) => ({ tokens: Int32Array.from(c.ids), pos: 0, blockTable: alloc.allocate(i, c.ids.length + 1) }));
  const a = await first.step({ seqs });
  expect(a.sampled.length).toBe(0);
  const T = cases.reduce((n, c) => n + c.ids.length, 0);
  expect(a.hiddenOut!.byteLength).toBe(T * first.shard.hidden * 4);
  const b = await last.step({ seqs, hiddenIn: a.hiddenOut!, wantLogits: true });
  const V = cases[0]!.last_logits.length;
  cases.forEach((c, i) => expect(maxAbsDiff(b.logits!.subarray(i * V, (i + 1) * V), c.last_logits)).toBeLessThan(1e-3));
  // One decode step of every sequence through both stages: the cache of each stage was filled.
  const dec = cases.map((c, i) => ({ tokens: Int32Array.of(b.sampled[i]!), pos: c.ids.length, blockTable: seqs[i]!.blockTable }));
  const a2 = await first.step({ seqs: dec });
  const b2 = await last.step({ seqs: dec, hiddenIn: a2.hiddenOut! });
  const full = await Engine.load(F32, { device: 'cpu', kvBlocks: 16 });
  try {
    await full.step({ seqs });
    expect(Array.from(b2.sampled)).toEqual(Array.from((await full.step({ seqs: dec })).sampled));
  } finally {
    full.dispose();
  }
  await expect(last.step({ seqs: dec })).rejects.toThrow(/hiddenIn is required/);
  await expect(last.step({ seqs: dec, hiddenIn: new Uint8Array(3) })).rejects.toThrow(/hiddenIn has 3 bytes/);
});
