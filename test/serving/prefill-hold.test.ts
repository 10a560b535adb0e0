// A class's prefill hold on the replica driver (tp 1, run-ahead) with a real CPU engine: a queue of
// requests longer than the seats, each ending at its own step, so seats free one at a time. Held,
// the queued requests join the decoding batch several to a step; every request's tokens stay
// exactly what single-process generation gives it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { Engine, generateAll } from '../../src/engine/index.js';
import { loadTokenizer } from '../../src/model/index.js';
import type { Tokenizer } from '../../src/model/index.js';
import { serve } from './driver-harness.js';
import type { DriverReq, SubmitEntry } from './driver-harness.js';
import { PY_TINY } from './helpers.js';

const MAX_TOKENS = [5, 9, 13, 17, 6, 10, 14, 18, 7, 11, 8, 12];
const reqs = (holdSteps: number): DriverReq[] => MAX_TOKENS.map((maxTokens, i) => ({ id: `r${i}`, classRank: 2, holdSteps, maxTokens,
  promptIds: Array.from({ length: 20 + (i % 3) }, (_, k) => 5 + ((k * 7 + i * 13) % 240)), temperature: i % 2 ? 0.8 : 0, seed: 40 + i }));

/** Steps that carried a prompt chunk (a sequence fed more than one token), and how many chunks each. */
const prefills = (log: SubmitEntry[]) => log.filter((e) => !e.withdrawn).map((e) => e.req.seqs.filter((s) => s.tokens.length > 1).length).filter((n) => n > 0);

describe('prefill hold (4 seats, 12 requests ending at different steps)', () => {
  let engine: Engine;
  let tok: Tokenizer;
  beforeAll(async () => {
    engine = await Engine.load(PY_TINY, { device: 'cpu', kvBlocks: 96 });
    tok = await loadTokenizer(PY_TINY);
  });
  afterAll(() => engine?.dispose());

  it('held 4 steps, the queued requests join the batch together in fewer steps with prompts, each with its own tokens', async () => {
    const want = await generateAll(engine, tok, reqs(0).map((r) => ({ promptIds: r.promptIds, maxTokens: r.maxTokens,
      temperature: r.temperature, seed: r.seed, ignoreEos: true })));
    const runs = [];
    for (const hold of [0, 4]) {
      const { got, log } = await serve(engine, tok, reqs(hold), MAX_TOKENS.length, () => {}, 4);
      for (const [i, r] of reqs(hold).entries()) expect([hold, r.id, got.get(r.id)]).toEqual([hold, r.id, want[i]!.tokenIds]);
      runs.push({ hold, chunks: prefills(log), steps: log.filter((e) => !e.withdrawn).length });
    }
    const [free, held] = runs;
    // Every prompt was fed once, either way (the first step takes 4 of them: 20-22 tokens each, 64 a step).
    expect(free!.chunks.reduce((a, b) => a + b)).toBeGreaterThanOrEqual(MAX_TOKENS.length);
    // Without a hold the 8 queued requests join one at a time, each as a seat frees; held, they share steps.
    expect(free!.chunks.slice(2).every((n) => n === 1), JSON.stringify(free)).toBe(true);
    expect(held!.chunks.length, JSON.stringify(runs)).toBeLessThan(free!.chunks.length);
    expect(Math.max(...held!.chunks.slice(2)), JSON.stringify(held)).toBeGreaterThan(1);
  });
});
