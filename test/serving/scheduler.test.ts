// The replica scheduler's split completion (apply now, settle while the next step runs), with the
// real py-tiny tokenizer: a sequence that a token ends for certain (EOS, max tokens) is never planned
// again; one that a stop string ends only when its text is settled, possibly after it was already
// planned into the next step, is dropped when that step completes, with no further update and
// every KV block freed.
import { beforeAll, describe, expect, it } from 'vitest';

import { FINISH_LENGTH, FINISH_STOP } from '../../src/coordinator/control-messages.js';
import type { SubmitMsg } from '../../src/coordinator/control-messages.js';
import { loadTokenizer } from '../../src/model/index.js';
import type { Tokenizer } from '../../src/model/index.js';
import { Scheduler } from '../../src/worker/scheduler.js';
import { PY_TINY } from './helpers.js';

let tok: Tokenizer;
beforeAll(async () => { tok = await loadTokenizer(PY_TINY); });

function submit(s: Scheduler, id: string, over: Partial<SubmitMsg> = {}): void {
  const err = s.submit({ requestId: id, promptIds: tok.encode('def main():\n'), maxTokens: 10, temperature: 0, topK: 0, topP: 1,
    seed: '1', stop: [], ignoreEos: false, generatedIds: [], ...over } as SubmitMsg);
  expect(err).toBeNull();
}

function ids(s: Scheduler, n: number): number[] { return Array.from({ length: n }, (_, i) => s.steps * 10 + i + 300); }
const word = (): number => tok.encode(' stack', { addSpecialTokens: false })[0]!;

describe('scheduler: apply now, settle later', () => {
  it('a stop string settled after the sequence was planned again: that step drops it, no more updates, blocks freed', async () => {
    const s = new Scheduler(64, 16, tok, 256, 16, 512);
    submit(s, 'a', { stop: [tok.decode([word()])] });
    submit(s, 'b');
    const total = s.load().kvBlocksFree;
    const p1 = s.next(1)!;                         // both prompts
    const a1 = s.apply(p1, new Int32Array([word(), 400]));
    const p2 = s.next(1)!;                         // planned before step 1 settled: a and b decode
    expect(p2.seqs.length).toBe(2);
    const u1 = s.settle(a1);
    expect(u1.find((u) => u.requestId === 'a')!.finishReason).toBe(FINISH_STOP);
    expect(u1.find((u) => u.requestId === 'b')!.finishReason).toBe(0);
    const u2 = s.settle(s.apply(p2, new Int32Array([401, 402])));
    expect(u2.map((u) => u.requestId)).toEqual(['b']);
    expect(u2[0]!.index).toBe(1);
    const p3 = s.next(1)!;
    expect(p3.seqs.length).toBe(1);                // a is gone
    s.cancel('b');
    s.settle(s.apply(p3, new Int32Array([403])));
    expect(s.idle).toBe(true);
    expect(s.load().kvBlocksFree).toBe(total);
  });

  it('EOS and the last allowed token keep the sequence out of the next step before they are settled', () => {
    const s = new Scheduler(64, 16, tok, 256, 16, 512);
    submit(s, 'eos');
    submit(s, 'len', { maxTokens: 1 });
    submit(s, 'go', { maxTokens: 5 });
    const eos = tok.eosTokenIds[0]!;
    const a1 = s.apply(s.next(1)!, new Int32Array([eos, 500, 501]));
    const p2 = s.next(1)!;
    expect(p2.seqs.length).toBe(1);                // only 'go'
    const u = s.settle(a1);
    expect(u.map((x) => [x.requestId, x.finishReason, x.tokenIds.length])).toEqual([
      ['eos', FINISH_STOP, 0], ['len', FINISH_LENGTH, 1], ['go', 0, 1]]);
    const u2 = s.complete(p2, new Int32Array([ids(s, 1)[0]!]));
    expect(u2[0]!.requestId).toBe('go');
    expect(s.load().running).toBe(1);
  });

  it('a stream cancelled between apply and settle gets no update for its last token', () => {
    const s = new Scheduler(64, 16, tok, 256, 16, 512);
    submit(s, 'c');
    const total = s.load().kvBlocksFree;
    const a = s.apply(s.next(1)!, new Int32Array([600]));
    s.cancel('c');
    expect(s.settle(a)).toEqual([]);
    expect(s.idle).toBe(true);
    expect(s.load().kvBlocksFree).toBe(total);
  });
});
