// Tensor parallelism 2 in one process over the addon's TCP communicator: both ranks produce the
// reference logits (vocab-parallel head gathered), and decode the same tokens as one rank alone.
// (The real multi-process path is tested by the serving layer.)
import { afterAll, beforeAll, expect, it } from 'vitest';

import { BlockAllocator, Engine } from '../../src/engine/index.js';
import { loadAddon } from '../../src/native/addon.js';
import type { NativeComm } from '../../src/native/addon.js';
import { F32, maxAbsDiff, reference } from './helpers.js';
import type { FixtureCase } from './helpers.js';

const addon = loadAddon();
let comms: NativeComm[] = [];
let ranks: Engine[] = [];
let single: Engine;

beforeAll(async () => {
  if (!addon.Comm) return;
  comms = [0, 1].map((rank) => new addon.Comm!({ kind: 'tcp', rank, size: 2 }));
  const ports = await Promise.all(comms.map((c) => c.listen!('127.0.0.1')));
  await Promise.all(comms.map((c) => c.connect!(ports.map((p) => `127.0.0.1:${p}`))));
  [single, ...ranks] = await Promise.all([
    Engine.load(F32, { device: 'cpu', kvBlocks: 16 }),
    ...[0, 1].map((r) => Engine.load(F32, { device: 'cpu', tpRank: r, tpSize: 2, kvBlocks: 16 })),
  ]);
  ranks.forEach((e, r) => e.setTpComm(comms[r]!));
});
afterAll(() => {
  [single, ...ranks].forEach((e) => e?.dispose());
  comms.forEach((c) => c.abort());
});

it.skipIf(!addon.Comm)('tp=2: reference logits on both ranks, then the same greedy and seeded tokens as tp=1', async () => {
  const { cases } = reference<FixtureCase>(F32);
  expect(ranks[0]!.shard.nHeads).toBe(2);
  expect(ranks[1]!.shard.vocabStart).toBe(256);
  const alloc = new BlockAllocator(16, 16);
  const seqs = cases.map((c, i) => ({ tokens: Int32Array.from(c.ids), pos: 0, blockTable: alloc.allocate(i, c.ids.length + 8) }));
  const [r0, r1] = await Promise.all(ranks.map((e) => e.step({ seqs, wantLogits: true })));
  const V = cases[0]!.last_logits.length;
  for (const r of [r0!, r1!])
    cases.forEach((c, i) => expect(maxAbsDiff(r.logits!.subarray(i * V, (i + 1) * V), c.last_logits)).toBeLessThan(1e-3));
  let tp = Array.from(r0!.sampled);
  let one = Array.from((await single.step({ seqs })).sampled);
  expect(tp).toEqual(one);
  for (let s = 0; s < 8; s++) {
    const dec = cases.map((c, i) => ({ tokens: Int32Array.of(tp[i]!), pos: c.ids.length + s, blockTable: seqs[i]!.blockTable,
      temperature: s % 2 ? 0.8 : 0, topP: 0.9, seed: 1000 + i }));
    const [d0, d1] = await Promise.all(ranks.map((e) => e.step({ seqs: dec })));
    expect(Array.from(d1!.sampled)).toEqual(Array.from(d0!.sampled));
    tp = Array.from(d0!.sampled);
    one = Array.from((await single.step({ seqs: dec.map((d, i) => ({ ...d, tokens: Int32Array.of(one[i]!) })) })).sampled);
    expect(tp).toEqual(one);
  }
});
