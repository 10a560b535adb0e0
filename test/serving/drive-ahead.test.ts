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
import type { StepRequest, SubmittedStep } from '../../src/native/addon.js';
import type { Submit, TokenUpdate } from '../../src/protocol/control.js';
import { FinishReason } from '../../src/protocol/lifecycle.js';
import { samplingToWire, validateSampling } from '../../src/protocol/sampling.js';
import { Replica } from '../../src/worker/replica.js';
import { PY_TINY } from './helpers.js';

interface Req { id: string; promptIds: number[]; classRank: number; maxTokens: number; temperature: number; seed: number }

const batch = (i: number): Req => ({ id: `batch-${i}`, promptIds: Array.from({ length: 60 + 17 * i }, (_, k) => 3 + ((k * (i + 3)) % 250)),
  classRank: 2, maxTokens: 24, temperature: i % 2 ? 0.9 : 0, seed: 100 + i });
const URGENT: Req = { id: 'urgent', promptIds: [7, 70, 77, 170, 177, 7, 70], classRank: 0, maxTokens: 12, temperature: 0.7, seed: 9 };

function submitOf(r: Req): Submit {
  return { epoch: '1', requestId: r.id, promptIds: r.promptIds, generatedIds: [], priority: r.classRank * 100, classRank: r.classRank, exclusivePrefill: false,
    params: samplingToWire(validateSampling({ maxTokens: r.maxTokens, temperature: r.temperature, seed: r.seed, ignoreEos: true })) } as Submit;
}

/** The engine's step submissions and withdrawals, in order, as the replica made them. */
function watchSubmits(engine: Engine) {
  const log: { req: StepRequest; withdrawn?: boolean }[] = [];
  const submit = engine.submit.bind(engine);
  engine.submit = (req: StepRequest): SubmittedStep => {
    const run = submit(req);
    const entry: { req: StepRequest; withdrawn?: boolean } = { req };
    log.push(entry);
    return { result: run.result, withdraw: () => (entry.withdrawn = run.withdraw()) };
  };
  return { log, restore: () => { engine.submit = submit; } };
}

describe('driveAhead on a CPU engine (tp 1)', () => {
  let engine: Engine;
  let tok: Tokenizer;
  beforeAll(async () => {
    engine = await Engine.load(PY_TINY, { device: 'cpu', kvBlocks: 96 });
    tok = await loadTokenizer(PY_TINY);
  });
  afterAll(() => engine?.dispose());

  const replicaOn = (e: Engine, emit: (u: TokenUpdate[]) => void) => new Replica(e, null, { stage: 0, tpRank: 0, tp: 1, pp: 1 }, {
    driver: { tokenizer: tok, kvBlocks: e.kvBlocks, kvBlockSize: e.kvBlockSize, maxBatchTokens: 64, maxQueue: 64, emit } });

  it('tokens equal single-process generation, and an urgent request arriving mid-step joins the step withdrawn and planned again', async () => {
    const reqs = [0, 1, 2, 3].map(batch);
    const want = await generateAll(engine, tok, [...reqs, URGENT].map((r) => ({ promptIds: r.promptIds, maxTokens: r.maxTokens,
      temperature: r.temperature, seed: r.seed, ignoreEos: true })));

    const got = new Map<string, number[]>();
    const done = new Set<string>();
    const { log, restore } = watchSubmits(engine);
    let replica: Replica | undefined;
    let urgentSent = false;
    let allDone: () => void;
    const finished = new Promise<void>((r) => (allDone = r));
    const emit = (updates: TokenUpdate[]) => {
      for (const u of updates) {
        const toks = got.get(u.requestId) ?? [];
        expect(u.index).toBe(toks.length);  // no token lost, repeated or skipped
        toks.push(...u.tokenIds);
        got.set(u.requestId, toks);
        if (u.finishReason !== FinishReason.FINISH_REASON_UNSPECIFIED) done.add(u.requestId);
      }
      // Once the batch decodes, the urgent request arrives while the driver waits for a running
      // step, with the step behind it already submitted (after this report, the driver plans it).
      if (!urgentSent && (got.get('batch-0')?.length ?? 0) >= 3) {
        urgentSent = true;
        setImmediate(() => replica!.submit(submitOf(URGENT)));
      }
      if (done.size === reqs.length + 1) allDone();
    };
    replica = replicaOn(engine, emit);
    const running = replica.run();
    for (const r of reqs) expect(replica.submit(submitOf(r))).toBeNull();
    await finished;
    replica.stop();
    await running;
    restore();

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
      const replica = replicaOn(engine, () => {});
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
