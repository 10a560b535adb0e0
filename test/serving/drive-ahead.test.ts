// The replica driver's run-ahead loop alone (tp 1, pp 1) on a real CPU engine: step N+1 is
// submitted to the engine while N runs, its decodes' tokens filled in natively from N's sampled
// tokens. Every request's tokens must be exactly what single-process generation gives it; a more
// urgent request arriving while a step runs withdraws the step submitted behind it and rides the
// step planned again in its place; a failed step ends the loop without running the one behind it
// on tokens that were never sampled.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { Engine, generateAll } from '../../src/engine/index.js';
import { loadTokenizer } from '../../src/model/index.js';
import type { Tokenizer } from '../../src/model/index.js';
import { driverOn, serve, submitOf } from './driver-harness.js';
import type { DriverReq } from './driver-harness.js';
import { PY_TINY } from './helpers.js';

const batch = (i: number): DriverReq => ({ id: `batch-${i}`, promptIds: Array.from({ length: 60 + 17 * i }, (_, k) => 3 + ((k * (i + 3)) % 250)),
  classRank: 2, maxTokens: 24, temperature: i % 2 ? 0.9 : 0, seed: 100 + i });
const URGENT: DriverReq = { id: 'urgent', promptIds: [7, 70, 77, 170, 177, 7, 70], classRank: 0, maxTokens: 12, temperature: 0.7, seed: 9 };

describe('driveAhead on a CPU engine (tp 1)', () => {
  let engine: Engine;
  let tok: Tokenizer;
  beforeAll(async () => {
    engine = await Engine.load(PY_TINY, { device: 'cpu', kvBlocks: 96 });
    tok = await loadTokenizer(PY_TINY);
  });
  afterAll(() => engine?.dispose());

  it('tokens equal single-process generation, and an urgent request arriving mid-step joins the step withdrawn and planned again', async () => {
    const reqs = [0, 1, 2, 3].map(batch);
    const want = await generateAll(engine, tok, [...reqs, URGENT].map((r) => ({ promptIds: r.promptIds, maxTokens: r.maxTokens,
      temperature: r.temperature, seed: r.seed, ignoreEos: true })));

    let urgentSent = false;
    const { got, log } = await serve(engine, tok, reqs, reqs.length + 1, (so, replica) => {
      // Once the batch decodes, the urgent request arrives while the driver waits for a running
      // step, with the step behind it already submitted (after this report, the driver plans it).
      if (!urgentSent && (so.get('batch-0')?.length ?? 0) >= 3) {
        urgentSent = true;
        setImmediate(() => replica.submit(submitOf(URGENT)));
      }
    });

    for (const [i, r] of [...reqs, URGENT].entries()) expect([r.id, got.get(r.id)]).toEqual([r.id, want[i]!.tokenIds]);
    // The urgent prompt went in a step submitted ahead (chained) in place of a withdrawn one, not in the step after it.
    const withdrawn = log.findIndex((e) => e.withdrawn === true);
    expect(withdrawn).toBeGreaterThan(0);
    const again = log[withdrawn + 1]!.req;
    expect(again.tokenFrom).toBeInstanceOf(Int32Array);
    expect(again.seqs.some((s) => Array.from(s.tokens).join() === URGENT.promptIds.join())).toBe(true);
    expect(log[withdrawn]!.req.seqs.some((s) => Array.from(s.tokens).join() === URGENT.promptIds.join())).toBe(false);
    // Every step but the first few ran chained: submitted while the one before it ran.
    expect(log.filter((e) => e.req.tokenFrom).length).toBeGreaterThan(log.length / 2);
  });

  it('a full batch (4 seats): an exclusive-prefill request arriving as a batch stream samples its last token takes the seat of one that is not ending, at once; every stream, the preempted one resumed by recompute, keeps its tokens', async () => {
    // batch-0 ends at 4 tokens; the urgent request arrives once batch-0 has 3, i.e. while the step
    // sampling batch-0's last token is in flight: its seat is coming, and the urgent request does not wait for it.
    // It arrives inside the report (before the driver plans the step after): arriving any later, even as
    // a microtask, a starved test process could find that step already started on the engine's thread,
    // too late to withdraw, and the seat freed by the time the request is planned (no preemption).
    const reqs = [{ ...batch(0), maxTokens: 4 }, batch(1), batch(2), batch(3)];
    const urgent: DriverReq = { ...URGENT, exclusive: true };
    const want = await generateAll(engine, tok, [...reqs, urgent].map((r) => ({ promptIds: r.promptIds, maxTokens: r.maxTokens,
      temperature: r.temperature, seed: r.seed, ignoreEos: true })));
    let urgentSent = false;
    const { got, replica, preempted } = await serve(engine, tok, reqs, reqs.length + 1, (so, r) => {
      if (!urgentSent && (so.get('batch-0')?.length ?? 0) === 3) {
        urgentSent = true;
        expect(r.submit(submitOf(urgent))).toBeNull();
      }
    }, 4);
    for (const [i, x] of [...reqs, urgent].entries()) expect([x.id, got.get(x.id)]).toEqual([x.id, want[i]!.tokenIds]);
    expect(urgentSent).toBe(true);
    // One batch stream gave up its seat, and not batch-0, which was ending anyway.
    expect(preempted.length).toBe(1);
    expect(preempted[0]).not.toBe('batch-0');
    expect(replica.scheduler!.preemptions).toBe(1);
  });

  it('a step that fails ends the loop; the step submitted behind it fails too instead of running on tokens never sampled', async () => {
    // The fault: the sixth step's first sequence points at a KV block the cache does not have.
    const outcomes: Promise<string>[] = [];
    const chained: boolean[] = [];
    const submit = engine.submit.bind(engine);
    engine.submit = (req) => {
      const bad = outcomes.length === 5;
      const broken = (t: Int32Array) => { const c = t.slice(); c[0] = engine.kvBlocks; return c; };
      const run = submit(bad ? { ...req, seqs: [{ ...req.seqs[0]!, blockTable: broken(req.seqs[0]!.blockTable) }, ...req.seqs.slice(1)] } : req);
      outcomes.push(run.result.then(() => 'ran', (e: Error) => e.message));
      chained.push(req.tokenFrom !== undefined);
      return run;
    };
    try {
      const replica = driverOn(engine, tok, () => {});
      const running = replica.run();
      replica.submit(submitOf({ ...batch(0), maxTokens: 40 }));
      await expect(running).rejects.toThrow(/blockTable\[0\]/);
      const got = await Promise.all(outcomes);
      expect(got.slice(0, 5)).toEqual(['ran', 'ran', 'ran', 'ran', 'ran']);
      expect(got[5]).toMatch(/blockTable\[0\]/);
      // The step behind it had been submitted, chained, before the failure reached the driver.
      expect(got.length).toBe(7);
      expect(chained[6]).toBe(true);
      expect(got[6]).toMatch(/the step before this chained one failed/);
    } finally {
      engine.submit = submit;
    }
  });
});
