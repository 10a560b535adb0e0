// The replica scheduler's priorities: the queue in priority order, and preemption of a less urgent
// class when the head of the queue cannot be admitted (blocks or seats), with its blocks freed only
// once no planned step uses them, its step results after the preemption dropped, and its resume
// recomputing the prompt and every token it had (no token repeated or skipped in its updates).
import { beforeAll, describe, expect, it } from 'vitest';

import type { Submit, TokenUpdate } from '../../src/protocol/control.js';
import { FinishReason, RequestStatus } from '../../src/protocol/lifecycle.js';
import { loadTokenizer } from '../../src/model/index.js';
import type { Tokenizer } from '../../src/model/index.js';
import { Scheduler } from '../../src/worker/scheduler.js';
import type { PlannedStep } from '../../src/worker/scheduler.js';
import { samplingToWire, validateSampling } from '../../src/protocol/sampling.js';
import { fillTokens } from '../../src/protocol/step-codec.js';
import { StepModel } from '../../src/worker/step-model.js';
import { PY_TINY } from './helpers.js';

const { QUEUED, RUNNING, PREEMPTED } = RequestStatus;
const { FINISH_REASON_STOP: STOP, FINISH_REASON_UNSPECIFIED: NONE } = FinishReason;

let tok: Tokenizer;
beforeAll(async () => { tok = await loadTokenizer(PY_TINY); });

const PROMPT = [5, 6, 7];

function submit(s: Scheduler, id: string, o: { priority?: number; classRank?: number; maxTokens?: number; stop?: string[]; promptIds?: number[]; exclusive?: boolean } = {}): void {
  const err = s.submit({ epoch: '1', requestId: id, promptIds: o.promptIds ?? PROMPT, generatedIds: [], priority: o.priority ?? 0, classRank: o.classRank ?? 0,
    exclusivePrefill: o.exclusive ?? false,
    params: samplingToWire(validateSampling({ maxTokens: o.maxTokens ?? 10, temperature: 0, seed: 1, stop: o.stop ?? [], ignoreEos: true })) } as Submit);
  expect(err).toBeNull();
}

/** Runs one planned step whose sampled tokens are `token` for every sampling member; returns the updates. */
function run(s: Scheduler, step: PlannedStep, token: (id: string) => number): TokenUpdate[] {
  return s.complete(step, Int32Array.from(step.members.filter((m) => m.sample).map((m) => token(m.seq.id))));
}

const ids = (step: PlannedStep | null) => step?.members.map((m) => m.seq.id) ?? [];

describe('scheduler priorities', () => {
  it('admits the queue by priority, then arrival', () => {
    // One seat and one token each: each step runs the next request the queue admits.
    const s = new Scheduler(64, 16, tok, 256, 16, 512, {}, 1);
    submit(s, 'low', { priority: 5, maxTokens: 1 });
    submit(s, 'high', { priority: -3, maxTokens: 1 });
    submit(s, 'mid-1', { priority: 0, maxTokens: 1 });
    submit(s, 'mid-2', { priority: 0, maxTokens: 1 });
    const order: string[] = [];
    for (let step = s.next(1); step; step = s.next(1)) {
      order.push(...ids(step));
      run(s, step, () => 100);
    }
    expect(order).toEqual(['high', 'mid-1', 'mid-2', 'low']);
  });

  it('a realtime request at a full replica preempts the batch stream; it resumes by recompute and its updates continue at the next index', () => {
    // 3 blocks of 16: one request of budget 3 + 30 tokens (3 blocks) fills the cache.
    const s = new Scheduler(3, 16, tok, 256, 16, 512);
    submit(s, 'batch', { priority: 100, classRank: 2, maxTokens: 30 });
    let step = s.next(1)!;
    const got: number[] = [];
    const track = (ups: TokenUpdate[]) => {
      for (const u of ups.filter((x) => x.requestId === 'batch' && !x.preempted)) {
        expect(u.index).toBe(got.length);
        got.push(...u.tokenIds);
      }
    };
    let t = 200;
    track(run(s, step, () => t++));
    track(run(s, s.next(1)!, () => t++));
    expect(got).toEqual([200, 201]);
    submit(s, 'rt', { priority: -100, classRank: 0, maxTokens: 2 });
    expect(s.status('rt')).toBe(QUEUED);
    step = s.next(1)!;                                       // batch preempted (not in flight: blocks freed at once), rt admitted
    expect(ids(step)).toEqual(['rt']);
    expect([s.status('batch'), s.status('rt')]).toEqual([PREEMPTED, RUNNING]);
    expect(s.load()).toMatchObject({ preemptions: 1, running: 1, queued: 1 });
    const ups = run(s, step, () => 900);
    expect(ups.map((u) => [u.requestId, u.preempted, u.index])).toEqual([['rt', false, 0], ['batch', true, 2]]);
    run(s, s.next(1)!, () => 901);                           // rt's last token
    expect(s.status('rt')).toBeUndefined();
    step = s.next(1)!;                                       // batch resumes: prompt + its 2 tokens recomputed from position 0
    expect(ids(step)).toEqual(['batch']);
    expect(step.seqs[0]!.pos).toBe(0);
    expect(Array.from(step.seqs[0]!.tokens)).toEqual([...PROMPT, 200, 201]);
    expect(s.status('batch')).toBe(RUNNING);
    track(run(s, step, () => t++));
    expect(got).toEqual([200, 201, 202]);
  });

  it('a victim planned into the running step: that result is dropped, its blocks free when the step completes, the head is admitted after', () => {
    const s = new Scheduler(3, 16, tok, 256, 16, 512);
    submit(s, 'batch', { priority: 100, classRank: 2, maxTokens: 30 });
    const p1 = s.next(1)!;
    const a1 = s.apply(p1, Int32Array.of(300));
    s.settle(a1);
    const p2 = s.next(1)!;                                   // batch decodes in p2 (running)
    submit(s, 'rt', { priority: -100, classRank: 0, maxTokens: 2 });
    const p3 = s.nextAhead(p2);                              // planned while p2 runs: batch preempted, rt cannot start yet
    expect(p3).toBeNull();
    expect(s.status('batch')).toBe(PREEMPTED);
    expect(s.load().kvBlocksFree).toBe(0);                   // p2 still writes batch's KV
    const u2 = s.settle(s.apply(p2, Int32Array.of(301)));   // batch's token from p2 is dropped
    expect(u2.map((u) => [u.requestId, u.preempted, u.index, u.tokenIds])).toEqual([['batch', true, 1, []]]);
    expect(s.load().kvBlocksFree).toBe(3);
    const p4 = s.next(1)!;
    expect(ids(p4)).toEqual(['rt']);
    expect(s.preemptions).toBe(1);                           // once, not again while its blocks were on their way
  });

  it('never preempts its own class or a more urgent one, nor when even every lower sequence would not make room', () => {
    const s = new Scheduler(4, 16, tok, 256, 16, 512);
    submit(s, 'std-1', { priority: 0, classRank: 1, maxTokens: 30 });
    s.settle(s.apply(s.next(1)!, Int32Array.of(1)));
    submit(s, 'std-2', { priority: -5, classRank: 1, maxTokens: 30 });  // more urgent, same class: waits
    expect(s.next(1)!.members.map((m) => m.seq.id)).toEqual(['std-1']);
    expect(s.status('std-2')).toBe(QUEUED);
    const s2 = new Scheduler(6, 16, tok, 256, 16, 512);
    submit(s2, 'rt-old', { priority: -100, classRank: 0, maxTokens: 30 });   // 3 blocks
    submit(s2, 'b', { priority: 100, classRank: 2, maxTokens: 14 });         // 2 blocks
    s2.settle(s2.apply(s2.next(1)!, Int32Array.of(1, 2)));
    submit(s2, 'rt-big', { priority: -100, classRank: 0, maxTokens: 60 });   // 4 blocks: 1 free + b's 2 < 4
    expect(ids(s2.next(1))).toEqual(['rt-old', 'b']);
    expect([s2.status('b'), s2.status('rt-big'), s2.preemptions]).toEqual([RUNNING, QUEUED, 0]);
  });

  it('a full batch (--max-seqs) gives a seat to a more urgent class by preempting', () => {
    const s = new Scheduler(64, 16, tok, 256, 16, 512, {}, 2);
    submit(s, 'b1', { priority: 100, classRank: 2 });
    submit(s, 'b2', { priority: 101, classRank: 2 });
    s.settle(s.apply(s.next(1)!, Int32Array.of(1, 2)));
    submit(s, 's', { priority: 0, classRank: 1 });
    const step = s.next(1)!;
    // The least urgent (b2, priority 101) leaves; the more urgent class's prefill comes before b1's decode.
    expect(ids(step)).toEqual(['s', 'b1']);
    expect(s.status('b2')).toBe(PREEMPTED);
  });

  it('a full batch where a less urgent sequence is sampling its last token: the urgent head takes that seat a step later, nobody is preempted', () => {
    const s = new Scheduler(64, 16, tok, 256, 16, 512, {}, 2);
    submit(s, 'b1', { priority: 100, classRank: 2, maxTokens: 30 });
    submit(s, 'b2', { priority: 101, classRank: 2, maxTokens: 2 });
    s.settle(s.apply(s.next(1)!, Int32Array.of(1, 2)));     // b2 has 1 of its 2 tokens
    const p2 = s.next(1)!;                                   // b2 samples its last token in p2
    expect(ids(p2)).toEqual(['b1', 'b2']);
    submit(s, 'rt', { priority: -100, classRank: 0, maxTokens: 4 });
    const p3 = s.nextAhead(p2);                              // planned while p2 runs: b2's seat is on its way
    expect(ids(p3)).toEqual(['b1']);
    expect([s.status('rt'), s.status('b2'), s.preemptions]).toEqual([QUEUED, RUNNING, 0]);
    s.settle(s.apply(p2, Int32Array.of(3, 4)));              // b2 ends: its seat frees
    expect(s.status('b2')).toBeUndefined();
    s.settle(s.apply(p3!, Int32Array.of(5)));
    const p4 = s.next(1)!;
    expect(ids(p4)).toEqual(['rt', 'b1']);
    expect(s.preemptions).toBe(0);
    // Without a sequence about to end, the same head preempts at once (b1 has 27 tokens to go).
    submit(s, 'rt2', { priority: -100, classRank: 0, maxTokens: 4 });
    s.settle(s.apply(p4, Int32Array.of(6, 7)));
    expect(ids(s.next(1))).toEqual(['rt', 'rt2']);
    expect([s.status('b1'), s.preemptions]).toEqual([PREEMPTED, 1]);
  });

  it('the same full batch and an exclusive-prefill head: it takes a seat at once, preempting a sequence that is not ending, and is in the step planned ahead', () => {
    const s = new Scheduler(64, 16, tok, 256, 16, 512, {}, 2);
    submit(s, 'b1', { priority: 100, classRank: 2, maxTokens: 30 });
    submit(s, 'b2', { priority: 101, classRank: 2, maxTokens: 2 });
    s.settle(s.apply(s.next(1)!, Int32Array.of(1, 2)));
    const p2 = s.next(1)!;                                   // b2 samples its last token in p2
    submit(s, 'rt', { priority: -100, classRank: 0, maxTokens: 4, exclusive: true });
    const p3 = s.nextAhead(p2)!;                             // planned while p2 runs
    // b1 (27 tokens to go) leaves rather than b2, whose last token p2 is computing (and which p3 has
    // no token for): the step is rt's prefill alone.
    expect(ids(p3)).toEqual(['rt']);
    expect([s.status('rt'), s.status('b1'), s.status('b2'), s.preemptions]).toEqual([RUNNING, PREEMPTED, RUNNING, 1]);
    const u2 = s.settle(s.apply(p2, Int32Array.of(3, 4)));   // b2 ends; b1's p2 token is dropped (recomputed on resume)
    expect(u2.filter((u) => u.requestId === 'b2').map((u) => u.finishReason)).toEqual([FinishReason.FINISH_REASON_LENGTH]);
    expect(u2.filter((u) => u.requestId === 'b1' && u.tokenIds.length > 0)).toEqual([]);
    s.settle(s.apply(p3, Int32Array.of(9)));
    // b1 resumes in the next step by recomputing its prompt and its one token.
    const p4 = s.next(1)!;
    expect(p4.members.map((m) => [m.seq.id, m.n])).toEqual([['rt', 1], ['b1', PROMPT.length + 1]]);
  });

  it('a sequence that ended in a step applied but not settled yet still holds its seat: that seat is coming, nobody is preempted', () => {
    // The driver plans again between apply() and settle() when an urgent request arrived meanwhile.
    const s = new Scheduler(64, 16, tok, 256, 16, 512, {}, 2);
    submit(s, 'b1', { priority: 100, classRank: 2, maxTokens: 30 });
    submit(s, 'b2', { priority: 101, classRank: 2, maxTokens: 2 });
    s.settle(s.apply(s.next(1)!, Int32Array.of(1, 2)));
    const applied = s.apply(s.next(1)!, Int32Array.of(3, 4));  // b2's last token: ended, not reported yet
    submit(s, 'rt', { priority: -100, classRank: 0, maxTokens: 4 });
    const p3 = s.next(1)!;
    expect(ids(p3)).toEqual(['b1']);
    expect([s.status('b1'), s.status('rt'), s.preemptions]).toEqual([RUNNING, QUEUED, 0]);
    s.settle(applied);                                       // b2 leaves
    s.settle(s.apply(p3, Int32Array.of(5)));
    expect(ids(s.next(1))).toEqual(['rt', 'b1']);
    expect(s.preemptions).toBe(0);
  });

  it('a stop string in a preempted sequence\'s last token ends it without resuming', () => {
    const word = tok.encode(' stack', { addSpecialTokens: false })[0]!;
    const s = new Scheduler(3, 16, tok, 256, 16, 512);
    submit(s, 'b', { priority: 100, classRank: 2, maxTokens: 30, stop: [tok.decode([word])] });
    const a1 = s.apply(s.next(1)!, Int32Array.of(word));     // applied, not settled yet
    submit(s, 'rt', { priority: -100, classRank: 0, maxTokens: 2 });
    const p2 = s.next(1)!;                                   // b preempted before its token is settled
    expect([ids(p2), s.status('b')]).toEqual([['rt'], PREEMPTED]);
    const u = s.settle(a1);
    expect(u.map((x) => [x.requestId, x.finishReason])).toEqual([['b', STOP]]);  // no preempted notice: it ended
    expect(s.status('b')).toBeUndefined();
  });

  it('tp 1: a step planned ahead is planned again when a more urgent class arrives before it is launched', () => {
    const s = new Scheduler(64, 16, tok, 256, 16, 512);
    submit(s, 'b', { priority: 100, classRank: 2 });
    const p1 = s.next(1)!;
    const p2 = s.nextAhead(p1)!;                             // b's decode, planned while p1 runs
    expect(s.urgentWaiting(p2)).toBe(false);
    submit(s, 'std', { priority: 0, classRank: 1 });
    expect(s.urgentWaiting(p2)).toBe(true);
    s.settle(s.apply(p1, Int32Array.of(70)));
    const steps = s.steps;
    s.unplan(p2);
    expect(s.steps).toBe(steps - 1);
    const p3 = s.next(1)!;
    expect(p3.members.map((m) => [m.seq.id, m.n, m.sample])).toEqual([['std', 3, true], ['b', 1, true]]);
    expect(Array.from(p3.seqs[1]!.tokens)).toEqual([70]);    // b's decode input: the token p1 gave it
    expect(p3.tokenFrom).toBeUndefined();
    submit(s, 'rt', { priority: -100, classRank: 0 });
    expect(s.urgentWaiting(p3)).toBe(true);
    submit(s, 'b2', { priority: 100, classRank: 2 });
    const only = s.nextAhead(p3)!;
    expect(s.urgentWaiting(only)).toBe(false);               // everything waiting is in it already
  });

  it('tp 1: a step planned ahead is planned again while the step before it still runs, the urgent prefill in it', () => {
    // The driver withdraws its submitted step N+1 when the request arrives, while N runs (N not applied).
    const s = new Scheduler(64, 16, tok, 256, 16, 512);
    submit(s, 'b', { priority: 100, classRank: 2 });
    s.settle(s.apply(s.next(1)!, Int32Array.of(70)));
    const n = s.next(1)!;                                    // b's decode (token 70)
    const ahead = s.nextAhead(n)!;
    expect(ahead.tokenFrom && Array.from(ahead.tokenFrom)).toEqual([0]);
    submit(s, 'rt', { priority: -100, classRank: 0, promptIds: [9, 8] });
    expect(s.urgentWaiting(ahead)).toBe(true);
    const steps = s.steps;
    s.unplan(ahead);
    const again = s.nextAhead(n)!;
    expect(s.steps).toBe(steps);
    expect(again.members.map((m) => [m.seq.id, m.n, m.sample])).toEqual([['rt', 2, true], ['b', 1, true]]);  // the urgent class first
    expect(Array.from(again.tokenFrom!)).toEqual([-1, 0]);  // rt's prompt is given; b still decodes n's token
    expect(Array.from(again.seqs[0]!.tokens)).toEqual([9, 8]);
    expect(s.urgentWaiting(again)).toBe(false);
    // n, then the re-planned step, complete as usual: b's tokens continue, rt has its first.
    s.settle(s.apply(n, Int32Array.of(71)));
    const u = s.settle(s.apply(again, Int32Array.of(5, 72)));
    expect(u.map((x) => [x.requestId, x.index, x.tokenIds])).toEqual([['rt', 0, [5]], ['b', 2, [72]]]);
  });

  it('the step model fits base + per-token ms, newer steps weighing more', () => {
    const m = new StepModel();
    expect(m.fit()).toEqual({ stepMsBase: 0, stepMsPerToken: 0 });
    for (let i = 0; i < 50; i++) for (const n of [1, 8, 64, 256]) m.observe(n, 2 + 0.05 * n);
    const f = m.fit();
    expect(f.stepMsBase).toBeCloseTo(2, 6);
    expect(f.stepMsPerToken).toBeCloseTo(0.05, 6);
    const one = new StepModel();
    for (let i = 0; i < 5; i++) one.observe(4, 10);
    expect(one.fit().stepMsBase).toBeCloseTo(10, 9);
    expect(one.fit().stepMsPerToken).toBe(0);
  });
});
