// A class's stream interval at the replica: the scheduler reports a paced sequence's tokens at most
// once an interval (settle()'s clock), as one update joining what it held, with its first tokens and
// its last at once, its held tokens before a preemption notice, and nothing after a cancel; the tokens,
// text and indices the coordinator gets are those of the same sequence unpaced.
import { beforeAll, describe, expect, it } from 'vitest';

import type { Submit, TokenUpdate } from '../../src/protocol/control.js';
import { FinishReason } from '../../src/protocol/lifecycle.js';
import { loadTokenizer } from '../../src/model/index.js';
import type { Tokenizer } from '../../src/model/index.js';
import { samplingToWire, validateSampling } from '../../src/protocol/sampling.js';
import { MAX_LOGPROBS } from '../../src/native/addon.js';
import { Scheduler } from '../../src/worker/scheduler.js';
import type { PlannedStep } from '../../src/worker/scheduler.js';
import { PY_TINY } from './helpers.js';

const { FINISH_REASON_LENGTH: LENGTH, FINISH_REASON_UNSPECIFIED: NONE } = FinishReason;

let tok: Tokenizer;
beforeAll(async () => { tok = await loadTokenizer(PY_TINY); });

const PROMPT = [5, 6, 7];

function submit(s: Scheduler, id: string, o: { intervalMs?: number; maxTokens?: number; priority?: number; classRank?: number; logprobs?: number } = {}): void {
  const err = s.submit({ epoch: '1', requestId: id, promptIds: PROMPT, generatedIds: [], priority: o.priority ?? 0, classRank: o.classRank ?? 0,
    exclusivePrefill: false, streamIntervalMs: o.intervalMs ?? 0,
    params: samplingToWire(validateSampling({ maxTokens: o.maxTokens ?? 12, temperature: 0, seed: 1, ignoreEos: true, logprobs: o.logprobs })) } as Submit);
  expect(err).toBeNull();
}

/** One step at time `now` (ms): every sampling member gets `token`; its updates. */
function step(s: Scheduler, p: PlannedStep, token: number, now: number): TokenUpdate[] {
  return s.settle(s.apply(p, Int32Array.from(p.members.filter((m) => m.sample).map(() => token))), now);
}

const of = (ups: TokenUpdate[], id: string) => ups.filter((u) => u.requestId === id);

describe('stream interval at the replica', () => {
  it('reports a paced sequence once an interval, first and last tokens at once, the same tokens, text and indices as unpaced', () => {
    const s = new Scheduler(64, 16, tok, 256, 16, 512);
    submit(s, 'paced', { intervalMs: 50 });
    submit(s, 'plain');
    const got = new Map<string, { at: number; u: TokenUpdate }[]>([['paced', []], ['plain', []]]);
    // Word tokens of py-tiny, so the text is not empty.
    const words = tok.encode(' alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu', { addSpecialTokens: false });
    for (let i = 0; !s.idle; i++) {
      const now = i * 10;
      for (const u of step(s, s.next(1)!, words[i % words.length]!, now)) got.get(u.requestId)!.push({ at: now, u });
    }
    const paced = got.get('paced')!;
    const plain = got.get('plain')!;
    expect(plain.length).toBe(12);
    // First token at 0; then at 50 and 100 (each 50 ms after the last report); the 12th (at 110) ends it.
    expect(paced.map((x) => [x.at, x.u.index, x.u.tokenIds.length, x.u.finishReason])).toEqual([
      [0, 0, 1, NONE], [50, 1, 5, NONE], [100, 6, 5, NONE], [110, 11, 1, LENGTH]]);
    const join = (xs: { u: TokenUpdate }[]) => ({ ids: xs.flatMap((x) => x.u.tokenIds), text: xs.map((x) => x.u.text).join('') });
    expect(join(paced)).toEqual(join(plain));
    expect(join(paced).text.length).toBeGreaterThan(0);
  });

  it('keeps logprobs with their tokens', () => {
    const s = new Scheduler(64, 16, tok, 256, 16, 512);
    submit(s, 'lp', { intervalMs: 1000, maxTokens: 4, logprobs: 1 });
    const ups: TokenUpdate[] = [];
    for (let i = 0; !s.idle; i++) {
      const p = s.next(1)!;
      const top = new Int32Array(MAX_LOGPROBS).fill(300 + i);
      const lp = { sampled: new Float32Array([-0.5 - i]), topIds: top, top: new Float32Array(MAX_LOGPROBS).fill(-0.5 - i) };
      ups.push(...s.settle(s.apply(p, new Int32Array([300 + i]), lp), i));
    }
    expect(ups.map((u) => [u.tokenIds, u.logprobs.map((l) => [l.logprob, l.topIds])])).toEqual([
      [[300], [[-0.5, [300]]]], [[301, 302, 303], [[-1.5, [301]], [-2.5, [302]], [-3.5, [303]]]]]);
  });

  it('sends what a preempted sequence held before its preemption notice', () => {
    // 3 blocks of 16: the batch request's budget (3 + 30 tokens) fills the cache, so the realtime one preempts it.
    const s = new Scheduler(3, 16, tok, 256, 16, 512);
    submit(s, 'batch', { intervalMs: 50, maxTokens: 30, priority: 100, classRank: 2 });
    const ups: TokenUpdate[] = [];
    ups.push(...step(s, s.next(1)!, 200, 0));           // its first token: at once
    ups.push(...step(s, s.next(1)!, 201, 10));          // held
    ups.push(...step(s, s.next(1)!, 202, 20));          // held
    expect(of(ups, 'batch').map((u) => u.tokenIds)).toEqual([[200]]);
    submit(s, 'rt', { priority: -100, classRank: 0, maxTokens: 2 });
    const late = step(s, s.next(1)!, 900, 25);           // batch preempted for rt
    expect(late.map((u) => [u.requestId, u.preempted, u.index, u.tokenIds])).toEqual([
      ['rt', false, 0, [900]], ['batch', false, 1, [201, 202]], ['batch', true, 3, []]]);
  });

  it('drops what a cancelled sequence held', () => {
    const s = new Scheduler(64, 16, tok, 256, 16, 512);
    submit(s, 'c', { intervalMs: 50 });
    const ups: TokenUpdate[] = [];
    ups.push(...step(s, s.next(1)!, 300, 0));
    ups.push(...step(s, s.next(1)!, 301, 10));           // held
    const p = s.next(1)!;
    s.cancel('c');
    ups.push(...step(s, p, 302, 60));
    expect(ups.map((u) => u.tokenIds)).toEqual([[300]]);
    expect(s.idle).toBe(true);
  });
});
