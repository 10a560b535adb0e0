// The replica driver alone (tp 1, pp 1) on a real engine, for tests of its run-ahead loop: requests
// as the coordinator submits them, the engine's step submissions as the replica made them, and a
// serve loop that checks every report continues its stream (no token lost, repeated or skipped).
import { expect } from 'vitest';

import type { Engine } from '../../src/engine/index.js';
import type { Tokenizer } from '../../src/model/index.js';
import type { StepRequest, SubmittedStep } from '../../src/native/addon.js';
import type { Submit, TokenUpdate } from '../../src/protocol/control.js';
import { FinishReason } from '../../src/protocol/lifecycle.js';
import { samplingToWire, validateSampling } from '../../src/protocol/sampling.js';
import { Replica } from '../../src/worker/replica.js';

export interface DriverReq {
  id: string;
  promptIds: number[];
  classRank: number;
  exclusive?: boolean;
  maxTokens: number;
  temperature: number;
  seed: number;
}

export function submitOf(r: DriverReq): Submit {
  return { epoch: '1', requestId: r.id, promptIds: r.promptIds, generatedIds: [], priority: r.classRank * 100, classRank: r.classRank,
    exclusivePrefill: r.exclusive === true,
    params: samplingToWire(validateSampling({ maxTokens: r.maxTokens, temperature: r.temperature, seed: r.seed, ignoreEos: true })) } as Submit;
}

export type SubmitEntry = { req: StepRequest; withdrawn?: boolean };

/** Records the engine's step submissions and withdrawals, in order, as the replica made them. */
export function watchSubmits(engine: Engine): { log: SubmitEntry[]; restore: () => void } {
  const log: SubmitEntry[] = [];
  const submit = engine.submit.bind(engine);
  engine.submit = (req: StepRequest): SubmittedStep => {
    const run = submit(req);
    const entry: SubmitEntry = { req };
    log.push(entry);
    return { result: run.result, withdraw: () => (entry.withdrawn = run.withdraw()) };
  };
  return { log, restore: () => { engine.submit = submit; } };
}

/** A driver replica of one rank on `engine`, reporting to `emit`; `maxSeqs` seats (0: no limit but the KV cache). */
export function driverOn(engine: Engine, tok: Tokenizer, emit: (u: TokenUpdate[]) => void, maxBatchTokens = 64, maxSeqs = 0): Replica {
  return new Replica(engine, null, { stage: 0, tpRank: 0, tp: 1, pp: 1 }, {
    driver: { tokenizer: tok, kvBlocks: engine.kvBlocks, kvBlockSize: engine.kvBlockSize, maxBatchTokens, maxQueue: 64, emit, maxSeqs } });
}

/**
 * Serves `initial` on a driver replica until `total` requests have finished; after each report,
 * `onReport` sees the tokens so far and may submit more (it runs on the report's turn of the loop,
 * so what it submits arrives while the driver waits for a step). Returns every request's tokens,
 * the engine's submissions, the replica and the requests preempted (in order); `maxSeqs` as driverOn's.
 */
export async function serve(engine: Engine, tok: Tokenizer, initial: DriverReq[], total: number,
  onReport: (got: Map<string, number[]>, replica: Replica) => void, maxSeqs = 0):
  Promise<{ got: Map<string, number[]>; log: SubmitEntry[]; replica: Replica; preempted: string[] }> {
  const got = new Map<string, number[]>();
  const done = new Set<string>();
  const preempted: string[] = [];
  const { log, restore } = watchSubmits(engine);
  let allDone: () => void;
  const finished = new Promise<void>((r) => (allDone = r));
  const replica: Replica = driverOn(engine, tok, (updates) => {
    for (const u of updates) {
      const toks = got.get(u.requestId) ?? [];
      expect(u.index).toBe(toks.length);  // no token lost, repeated or skipped
      toks.push(...u.tokenIds);
      got.set(u.requestId, toks);
      if (u.finishReason !== FinishReason.FINISH_REASON_UNSPECIFIED) done.add(u.requestId);
      if (u.preempted) preempted.push(u.requestId);
    }
    onReport(got, replica);
    if (done.size === total) allDone();
  }, undefined, maxSeqs);
  try {
    const running = replica.run();
    for (const r of initial) expect(replica.submit(submitOf(r))).toBeNull();
    await finished;
    replica.stop();
    await running;
  } finally {
    restore();
  }
  return { got, log, replica, preempted };
}
