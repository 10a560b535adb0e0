// The CPU engine against the Hugging Face fixtures: last-position logits of every reference
// prompt, greedy continuations, and batching invariance.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { BlockAllocator, Engine, generateAll } from '../../src/engine/index.js';
import type { TokenizerLike } from '../../src/engine/index.js';
import { BF16, F32, maxAbsDiff, reference } from './helpers.js';
import type { FixtureCase } from './helpers.js';

// Greedy continuations need only ids; a tokenizer that is never asked to encode.
const idsOnly: TokenizerLike = { encode: () => { throw new Error('ids only'); }, decode: () => '', eosTokenIds: [] };

for (const [dir, tol] of [[F32, 1e-3], [BF16, 2e-2]] as const) {
  describe(`${dir.split('/').pop()} on cpu`, () => {
    let engine: Engine;
    const { cases } = reference<FixtureCase>(dir);
    beforeAll(async () => {
      engine = await Engine.load(dir, { device: 'cpu' });
    });
    afterAll(() => engine?.dispose());

    it(`last-position logits within ${tol}`, async () => {
      const alloc = new BlockAllocator(engine.kvBlocks, engine.kvBlockSize);
      for (const [i, c] of cases.entries()) {
        const res = await engine.step({
          seqs: [{ tokens: Int32Array.from(c.ids), pos: 0, blockTable: alloc.allocate(i, c.ids.length) }],
          wantLogits: true,
        });
        expect(res.logits!.length).toBe(c.last_logits.length);
        expect(maxAbsDiff(res.logits!, c.last_logits)).toBeLessThan(tol);
        expect(res.sampled[0]).toBe(c.last_logits_top8[0]);
        alloc.free(i);
      }
    });

    // The fixture's greedy_24 continues the prompt *without* its BOS (ids.slice(1)): with the
    // BOS its first token would be the argmax of last_logits, which it is not (checked below).
    //
    // Teacher-forced first: at every step of the reference path, its token must be our argmax.
    // The one allowed exception is a near-tie in the bf16 model: its reference logits differ by
    // up to 8.6e-4 from an fp32 forward over the same bf16 weights (ours, and a plain PyTorch fp32
    // forward, bench/cpu/torch_llama.py, agree with each other to 1e-5), and 'Permission is
    // hereby granted' has a step where the top two are 1.2e-4 apart. There the reference token
    // must be within 1e-3 of our best, and the free-running comparison skips that case.
    const tieTol = dir === F32 ? 0 : 1e-3;
    it('greedy_24 identical (prompt without BOS, as the fixture generated it)', async () => {
      const alloc = new BlockAllocator(engine.kvBlocks, engine.kvBlockSize);
      const exact: boolean[] = [];
      for (const [n, c] of cases.entries()) {
        expect(c.greedy_24[0]).not.toBe(c.last_logits_top8[0]);
        const ids = [...c.ids.slice(1), ...c.greedy_24];
        const res = await engine.step({
          seqs: [{ tokens: Int32Array.from(ids), pos: 0, blockTable: alloc.allocate(n, ids.length), allLogits: true, sample: false }],
          wantLogits: true,
        });
        const V = c.last_logits.length, P = c.ids.length - 1;
        exact[n] = true;
        for (let i = 0; i < c.greedy_24.length; i++) {
          const row = res.logits!.subarray((P - 1 + i) * V, (P + i) * V);
          let best = 0;
          for (let j = 1; j < V; j++) if (row[j]! > row[best]!) best = j;
          if (best === c.greedy_24[i]) continue;
          exact[n] = false;
          expect(row[best]! - row[c.greedy_24[i]!]!, `${c.text} step ${i}`).toBeLessThanOrEqual(tieTol);
        }
        alloc.free(n);
      }
      if (dir === F32) expect(exact.every(Boolean)).toBe(true);
      expect(exact.filter(Boolean).length).toBeGreaterThanOrEqual(cases.length - 1);
      const results = await generateAll(engine, idsOnly,
        cases.map((c) => ({ promptIds: c.ids.slice(1), maxTokens: 24, ignoreEos: true })));
      for (const [i, c] of cases.entries()) {
        if (!exact[i]) continue;
        expect(results[i]!.tokenIds).toEqual(c.greedy_24);
        expect(results[i]!.finishReason).toBe('FINISH_REASON_LENGTH');
      }
    });

    it('steps issued without awaiting run in order (prefill, then each decode)', async () => {
      const c = cases[0]!;
      const prompt = c.ids.slice(1);
      const alloc = new BlockAllocator(engine.kvBlocks, engine.kvBlockSize);
      const blockTable = alloc.allocate(0, prompt.length + 24);
      const steps = [engine.step({ seqs: [{ tokens: Int32Array.from(prompt), pos: 0, blockTable }] })];
      for (let i = 0; i < 23; i++)
        steps.push(engine.step({ seqs: [{ tokens: Int32Array.of(c.greedy_24[i]!), pos: prompt.length + i, blockTable }] }));
      const sampled = (await Promise.all(steps)).map((r) => r.sampled[0]);
      expect(sampled).toEqual(c.greedy_24);  // case 0 has no near-tie in either fixture
    });

    it('the 4 prompts decoded as one batch give what each gives alone', async () => {
      const reqs = cases.map((c) => ({ promptIds: c.ids, maxTokens: 24, ignoreEos: true }));
      const batched = await generateAll(engine, idsOnly, reqs);
      for (const [i, r] of reqs.entries()) {
        const [alone] = await generateAll(engine, idsOnly, [r]);
        expect(batched[i]!.tokenIds).toEqual(alone!.tokenIds);
      }
      // And the logits of a mixed step (prefills of different lengths together) match too.
      const alloc = new BlockAllocator(engine.kvBlocks, engine.kvBlockSize);
      const mixed = await engine.step({
        seqs: cases.map((c, i) => ({ tokens: Int32Array.from(c.ids), pos: 0, blockTable: alloc.allocate(i, c.ids.length) })),
        wantLogits: true,
      });
      const V = cases[0]!.last_logits.length;
      for (const [i, c] of cases.entries())
        expect(maxAbsDiff(mixed.logits!.subarray(i * V, (i + 1) * V), c.last_logits)).toBeLessThan(tol);
    });
  });
}
