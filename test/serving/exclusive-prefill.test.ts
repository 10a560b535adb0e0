// Exclusive prefill on the replica driver's run-ahead loop (tp 1, pp 1) on a real CPU engine: the
// step carrying the first prompt chunk of an exclusive-prefill class's request leaves the batch
// streams out (they sit that step out and join the next one, taking their input token from their
// own feed, not from a step they were not in), at most 4 of any 16 consecutive steps do so, and
// every request's tokens are exactly what single-process generation gives it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { Engine, generateAll } from '../../src/engine/index.js';
import { loadTokenizer } from '../../src/model/index.js';
import type { Tokenizer } from '../../src/model/index.js';
import { serve as serveOn, submitOf } from './driver-harness.js';
import type { DriverReq } from './driver-harness.js';
import { PY_TINY } from './helpers.js';

const BATCH = 4;
const batch = (i: number, maxTokens: number): DriverReq => ({ id: `batch-${i}`, promptIds: Array.from({ length: 30 + 11 * i }, (_, k) => 3 + ((k * (i + 3)) % 250)),
  classRank: 2, exclusive: false, maxTokens, temperature: i % 2 ? 0.9 : 0, seed: 100 + i });
const realtime = (i: number, exclusive: boolean, maxTokens = 6): DriverReq => ({ id: `rt-${i}`, promptIds: [7 + i, 70, 77 + i, 170, 177, 7, 70 + i],
  classRank: 0, exclusive, maxTokens, temperature: 0.7, seed: 9 + i });

const same = (t: Int32Array, ids: number[]) => t.length === ids.length && t.every((x, i) => x === ids[i]);

describe('exclusive prefill on a CPU engine (tp 1, run-ahead)', () => {
  let engine: Engine;
  let tok: Tokenizer;
  beforeAll(async () => {
    engine = await Engine.load(PY_TINY, { device: 'cpu', kvBlocks: 128 });
    tok = await loadTokenizer(PY_TINY);
  });
  afterAll(() => engine?.dispose());

  /**
   * Runs the batch streams and, once each has 2 tokens, submits the realtime requests, one per step
   * report (the first at once). Returns every request's tokens, the steps that ran (withdrawn ones
   * dropped) with which of their sequences are batch streams, and the scheduler's exclusive count.
   */
  async function serve(batchReqs: DriverReq[], rt: DriverReq[]) {
    let sent = 0;
    const { got, log, replica } = await serveOn(engine, tok, batchReqs, batchReqs.length + rt.length, (so, r) => {
      // Realtime requests arrive while the driver waits for a running step, with the step behind it submitted.
      if (sent < rt.length && batchReqs.every((b) => (so.get(b.id)?.length ?? 0) >= 2)) {
        const q = rt[sent++]!;
        setImmediate(() => expect(r.submit(submitOf(q))).toBeNull());
      }
    });

    // A batch stream's blocks are its own while it runs: its first chunk's block table names it in every later step.
    const batchBlock = new Set<number>();
    const ran = log.filter((e) => e.withdrawn !== true).map((e) => e.req);
    for (const req of ran) for (const s of req.seqs)
      if (s.pos === 0 && batchReqs.some((b) => same(s.tokens, b.promptIds.slice(0, s.tokens.length)))) batchBlock.add(s.blockTable[0]!);
    expect(batchBlock.size).toBe(batchReqs.length);
    const steps = ran.map((req) => ({ req, batch: req.seqs.map((s) => batchBlock.has(s.blockTable[0]!)),
      first: rt.findIndex((r) => req.seqs.some((s) => s.pos === 0 && same(s.tokens, r.promptIds))) }));
    return { got, steps, exclusiveCount: replica.scheduler!.exclusiveCount };
  }

  async function want(reqs: Req[]) {
    const out = await generateAll(engine, tok, reqs.map((r) => ({ promptIds: r.promptIds, maxTokens: r.maxTokens,
      temperature: r.temperature, seed: r.seed, ignoreEos: true })));
    return new Map(reqs.map((r, i) => [r.id, out[i]!.tokenIds]));
  }

  it('a first prompt chunk of an exclusive class rides a step without the batch decodes; the batch streams join the next step unchanged', async () => {
    const batchReqs = Array.from({ length: BATCH }, (_, i) => batch(i, 24));
    for (const exclusive of [true, false]) {
      const rt = [realtime(0, exclusive)];
      const expected = await want([...batchReqs, ...rt]);
      const { got, steps, exclusiveCount } = await serve(batchReqs, rt);
      for (const r of [...batchReqs, ...rt]) expect([r.id, got.get(r.id)]).toEqual([r.id, expected.get(r.id)]);

      const at = steps.findIndex((s) => s.first === 0);
      expect(at).toBeGreaterThan(0);
      const step = steps[at]!;
      // The batch streams were decoding in the step before and in the step after.
      expect(steps[at - 1]!.batch.filter(Boolean).length).toBe(BATCH);
      expect(steps[at + 1]!.batch.filter(Boolean).length).toBe(BATCH);
      if (!exclusive) {
        // The same arrival without exclusive prefill rides with every batch decode.
        expect(step.batch.filter(Boolean).length).toBe(BATCH);
        expect(exclusiveCount).toBe(0);
        continue;
      }
      expect(step.req.seqs.length).toBe(1);
      expect(step.batch.some(Boolean)).toBe(false);
      expect(exclusiveCount).toBe(1);
      // The step after it was submitted behind it (chained): the realtime decode takes its token from
      // the exclusive step's result, the batch streams, which were not in it, take theirs from the feed.
      const next = steps[at + 1]!.req;
      expect(next.tokenFrom).toBeInstanceOf(Int32Array);
      next.seqs.forEach((s, k) => expect([k, next.tokenFrom![k]! >= 0]).toEqual([k, !steps[at + 1]!.batch[k]]));
    }
  });

  it('a flood of exclusive-class requests leaves the batch streams out of at most 4 of any 16 consecutive steps', async () => {
    const batchReqs = Array.from({ length: BATCH }, (_, i) => batch(i, 80));
    const rt = Array.from({ length: 24 }, (_, i) => realtime(i, true, 2));
    const expected = await want([...batchReqs, ...rt]);
    const { got, steps, exclusiveCount } = await serve(batchReqs, rt);
    for (const r of [...batchReqs, ...rt]) expect([r.id, got.get(r.id)]).toEqual([r.id, expected.get(r.id)]);

    // From the first realtime prompt to the last one, while every batch stream runs.
    const from = steps.findIndex((s) => s.first >= 0);
    const to = steps.findLastIndex((s) => s.first >= 0);
    expect(to - from).toBeGreaterThan(16);
    expect(steps.slice(from, to + 1).every((s) => s.first >= 0 || s.batch.filter(Boolean).length === BATCH)).toBe(true);
    const without = steps.map((s, i) => i >= from && i <= to && !s.batch.some(Boolean));
    for (let i = from; i + 16 <= to + 1; i++) expect(without.slice(i, i + 16).filter(Boolean).length).toBeLessThanOrEqual(4);
    // Some first chunks had their step alone, the others rode normal steps once the share was spent.
    const alone = without.filter(Boolean).length;
    expect(alone).toBe(exclusiveCount);
    expect(alone).toBeGreaterThanOrEqual(4);
    expect(steps.filter((s) => s.first >= 0 && s.batch.some(Boolean)).length).toBeGreaterThan(0);
  });
});
