// Chained steps (StepRequest.tokenFrom): a step submitted while the one before it runs takes its
// decodes' input tokens from that step's sampled tokens, filled in by the addon right before it
// runs. Submitted back to back they must sample exactly what stepping one at a time samples; a
// step withdrawn before it starts runs nothing; a bad index, or a failed step before a chained one,
// rejects naming the field, and the engine steps on afterwards.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { BlockAllocator, Engine } from '../../src/engine/index.js';
import type { StepResult, StepSeq } from '../../src/native/addon.js';
import { F32, PY_TINY } from './helpers.js';

const PROMPTS = [[1, 2, 3, 4, 5], [9, 8, 7], [4, 4, 6, 1]];
const DECODES = 6;

describe('chained steps on a CPU engine', () => {
  let engine: Engine;
  beforeAll(async () => {
    engine = await Engine.load(F32, { device: 'cpu', kvBlocks: 16 });
  });
  afterAll(() => engine?.dispose());

  // Each run writes its sequences' KV from position 0, so every run may reuse the same blocks.
  const tables = () => {
    const alloc = new BlockAllocator(engine.kvBlocks, engine.kvBlockSize);
    return PROMPTS.map((p, i) => alloc.allocate(`s${i}`, p.length + DECODES + 1));
  };
  // Sequence 1 samples with a seed, the others greedily, so both samplers' paths are covered.
  const prefill = (t: Int32Array[]): StepSeq[] =>
    PROMPTS.map((p, i) => ({ tokens: Int32Array.from(p), pos: 0, blockTable: t[i]!, ...(i === 1 ? { temperature: 1, seed: 11 } : {}) }));
  const decode = (t: Int32Array[], step: number, tokens: number[]): StepSeq[] =>
    PROMPTS.map((p, i) => ({ tokens: Int32Array.of(tokens[i]!), pos: p.length + step, blockTable: t[i]!, ...(i === 1 ? { temperature: 1, seed: 11 } : {}) }));

  /** Prefill, then DECODES decode steps, each awaited before the next is made from its tokens. */
  async function sequential(): Promise<number[][]> {
    const t = tables();
    let r = await engine.step({ seqs: prefill(t) });
    const out = [Array.from(r.sampled)];
    for (let d = 0; d < DECODES; d++) {
      r = await engine.step({ seqs: decode(t, d, Array.from(r.sampled)) });
      out.push(Array.from(r.sampled));
    }
    return out;
  }

  it('steps submitted back to back with tokenFrom sample what sequential steps sample', async () => {
    const want = await sequential();
    const t = tables();
    // Every step is submitted before the first one's result is taken: the placeholders (0) are never used.
    const from = Int32Array.from(PROMPTS.map((_, i) => i));
    const runs = [engine.submit({ seqs: prefill(t) })];
    for (let d = 0; d < DECODES; d++) runs.push(engine.submit({ seqs: decode(t, d, PROMPTS.map(() => 0)), tokenFrom: from }));
    const got: StepResult[] = await Promise.all(runs.map((r) => r.result));
    expect(got.map((r) => Array.from(r.sampled))).toEqual(want);
    expect(got.every((r) => !r.skipped)).toBe(true);
    // A step that waited behind another started when that one ended: the engine's gap between them is small.
    for (const r of got.slice(1)) expect(r.timing.gapMs).toBeGreaterThanOrEqual(0);
  });

  it('a chained step takes its sequences\' tokens by index, mixing them with given tokens and prefill chunks', async () => {
    const want = await sequential();
    const t = tables();
    const first = engine.submit({ seqs: prefill(t) });
    // Sequence 0 takes sampled token 2 (reordered), sequence 1 has its token given, sequence 2 takes token 0.
    const seqs = decode(t, 0, [0, want[0]![1]!, 0]);
    const swapped = [seqs[2]!, seqs[1]!, seqs[0]!];
    const second = engine.submit({ seqs: swapped, tokenFrom: Int32Array.of(2, -1, 0) });
    await first.result;
    expect(Array.from((await second.result).sampled)).toEqual([want[1]![2], want[1]![1], want[1]![0]]);
  });

  it('a bad tokenFrom, and a chained step behind a failed step, reject naming the field; the engine steps on', async () => {
    const t = tables();
    const base = await engine.step({ seqs: prefill(t) });
    expect(base.sampled.length).toBe(3);
    const from = (...f: number[]) => Int32Array.from(f);
    await expect(engine.step({ seqs: decode(t, 0, [0, 0, 0]), tokenFrom: from(0, 3, 1) }))
      .rejects.toThrow(/^step: tokenFrom\[1\] is 3, but the previous step sampled 3 tokens$/);
    // The step before it failed, so a chained step behind it fails too, even without an index of its own.
    await expect(engine.step({ seqs: decode(t, 0, [0, 0, 0]), tokenFrom: from(0, 1, 2) })).rejects.toThrow(/the step before this chained one failed/);
    await expect(engine.step({ seqs: decode(t, 0, [5, 5, 5]), tokenFrom: from(-1, -1, -1) })).rejects.toThrow(/the step before this chained one failed/);
    // A failure in the backend itself (a block out of range), with chained steps already queued behind it.
    const failing = engine.submit({ seqs: [{ tokens: Int32Array.of(1), pos: 0, blockTable: Int32Array.of(engine.kvBlocks) }] });
    const behind = engine.submit({ seqs: decode(t, 0, [0, 0, 0]), tokenFrom: from(0, 0, 0) });
    // Both handlers are attached before either settles: the chained step can reject in the same
    // turn of the event loop as the failing one, before a handler attached after an await.
    await Promise.all([
      expect(failing.result).rejects.toThrow(/blockTable\[0\]/),
      expect(behind.result).rejects.toThrow(/the step before this chained one failed/),
    ]);
    // A plain step runs, and chains work again behind it.
    const again = await engine.step({ seqs: prefill(t) });
    expect(Array.from(again.sampled)).toEqual(Array.from(base.sampled));
    const next = await engine.step({ seqs: decode(t, 0, [0, 0, 0]), tokenFrom: from(0, 1, 2) });
    const plain = await engine.step({ seqs: decode(t, 0, Array.from(again.sampled)) });
    expect(Array.from(next.sampled)).toEqual(Array.from(plain.sampled));
  });

  it('a chained step on an engine that has run no step rejects', async () => {
    const fresh = await Engine.load(F32, { device: 'cpu', kvBlocks: 4 });
    try {
      const seqs = [{ tokens: Int32Array.of(0), pos: 0, blockTable: Int32Array.of(0) }];
      await expect(fresh.step({ seqs, tokenFrom: Int32Array.of(0) })).rejects.toThrow(/^step: tokenFrom\[0\] is 0, but no step ran before this one$/);
      const r = await fresh.step({ seqs: [{ ...seqs[0]!, tokens: Int32Array.of(1) }] });
      expect(r.timing.gapMs).toBeGreaterThanOrEqual(0);  // the failed step counts as the one before
    } finally {
      fresh.dispose();
    }
  });
});

describe('withdrawing a submitted step', () => {
  let engine: Engine;
  beforeAll(async () => {
    engine = await Engine.load(PY_TINY, { device: 'cpu', kvBlocks: 48 });
  });
  afterAll(() => engine?.dispose());

  it('a withdrawn step runs nothing and the next chained step reads the tokens of the step before it', async () => {
    const alloc = new BlockAllocator(engine.kvBlocks, engine.kvBlockSize);
    const prompts = [[5, 6, 7, 8], [20, 21]];
    const t = prompts.map((p, i) => alloc.allocate(`s${i}`, p.length + 2));
    // A 480-token prefill that samples nothing keeps the engine busy for many ms (tens on this
    // CPU) after the calls below are made: the steps behind it have not started when withdrawn.
    const long = Int32Array.from({ length: 480 }, (_, i) => 2 + (i % 200));
    const blocker: StepSeq = { tokens: long, pos: 0, blockTable: alloc.allocate('blocker', long.length), sample: false };
    const first: StepSeq[] = [blocker, ...prompts.map((p, i) => ({ tokens: Int32Array.from(p), pos: 0, blockTable: t[i]!, temperature: 1, seed: 5 + i }))];
    const decode = (tokens: number[]): StepSeq[] =>
      prompts.map((p, i) => ({ tokens: Int32Array.of(tokens[i]!), pos: p.length, blockTable: t[i]!, temperature: 1, seed: 5 + i }));
    const from = Int32Array.of(0, 1);

    // One at a time.
    const a0 = Array.from((await engine.step({ seqs: first })).sampled);
    const want = Array.from((await engine.step({ seqs: decode(a0) })).sampled);

    const head = engine.submit({ seqs: first });
    // Its position would be written with a wrong token if it ran, and it would be the step the next chained one reads.
    const wrong = engine.submit({ seqs: decode([3, 3]) });
    const doomed = engine.submit({ seqs: decode([0, 0]), tokenFrom: from });
    expect(doomed.withdraw()).toBe(true);
    expect(wrong.withdraw()).toBe(true);
    expect(doomed.withdraw()).toBe(true);  // asked twice: still withdrawn
    const kept = engine.submit({ seqs: decode([0, 0]), tokenFrom: from });
    const [h, w, d, k] = await Promise.all([head.result, wrong.result, doomed.result, kept.result]);
    expect(Array.from(h.sampled)).toEqual(a0);
    for (const r of [w, d]) {
      expect(r.skipped).toBe(true);
      expect(r.sampled.length).toBe(0);
    }
    expect(k.skipped).toBeUndefined();
    expect(Array.from(k.sampled)).toEqual(want);
    // Once a step has run, withdrawing it changes nothing; a withdrawn one stays withdrawn.
    expect(kept.withdraw()).toBe(false);
    expect(head.withdraw()).toBe(false);
    expect(doomed.withdraw()).toBe(true);
  });
});
