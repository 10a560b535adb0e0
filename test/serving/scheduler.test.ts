// The replica scheduler's split completion (apply now, settle while the next step runs), with the
// real py-tiny tokenizer: a sequence that a token ends for certain (EOS, max tokens) is never planned
// again; one that a stop string ends only when its text is settled, possibly after it was already
// planned into the next step, is dropped when that step completes, with no further update and
// every KV block freed.
import { beforeAll, describe, expect, it } from 'vitest';

import type { Submit, TokenUpdate } from '../../src/protocol/control.js';
import { FinishReason, RequestStatus } from '../../src/protocol/lifecycle.js';
import { loadTokenizer } from '../../src/model/index.js';
import type { Tokenizer } from '../../src/model/index.js';
import { samplingToWire, validateSampling } from '../../src/protocol/sampling.js';
import { Scheduler } from '../../src/worker/scheduler.js';
import type { PlannedStep } from '../../src/worker/scheduler.js';
import { KIND_STEP, decodeStep, encodeStep, fillTokens, frame, readFrame } from '../../src/protocol/step-codec.js';
import { PY_TINY } from './helpers.js';

const { FINISH_REASON_STOP: STOP, FINISH_REASON_LENGTH: LENGTH, FINISH_REASON_UNSPECIFIED: NONE } = FinishReason;

let tok: Tokenizer;
beforeAll(async () => { tok = await loadTokenizer(PY_TINY); });

function submit(s: Scheduler, id: string, over: { promptIds?: number[]; maxTokens?: number; stop?: string[] } = {}): void {
  const { promptIds = tok.encode('def main():\n'), ...params } = over;
  const err = s.submit({ epoch: '1', requestId: id, promptIds, generatedIds: [], priority: 0, classRank: 0, exclusivePrefill: false,
    params: { ...samplingToWire(validateSampling({ maxTokens: 10, seed: 1 })), ...params } } as Submit);
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
    expect(u1.find((u) => u.requestId === 'a')!.finishReason).toBe(STOP);
    expect(u1.find((u) => u.requestId === 'b')!.finishReason).toBe(NONE);
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
      ['eos', STOP, 0], ['len', LENGTH, 1], ['go', NONE, 1]]);
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

// Planning ahead (pp = 1, src/worker/replica.ts): step N+1 is planned while N runs;
// its decode inputs are N's sampled tokens, filled in by index once N is done.
describe('scheduler: planning one step ahead', () => {
  /** What the driver does once step `cur` finished: apply it, then fill the ahead step's tokens. */
  function finish(s: Scheduler, cur: PlannedStep, ahead: PlannedStep | null, sampled: number[]): TokenUpdate[] {
    const out = Int32Array.from(sampled);
    const applied = s.apply(cur, out);
    if (ahead) fillTokens(ahead.seqs, ahead.tokenFrom, out);
    return s.settle(applied);
  }

  it('decodes take the running step\'s tokens by index at the positions after it; the result equals planning after it', () => {
    const s = new Scheduler(64, 16, tok, 256, 16, 512);
    submit(s, 'a');
    submit(s, 'b');
    const p1 = s.next(1)!;
    const p2 = s.nextAhead(p1)!;
    expect(Array.from(p2.tokenFrom!)).toEqual([0, 1]);
    expect(p2.seqs.map((q) => q.pos)).toEqual(p1.seqs.map((q) => q.tokens.length));
    const u1 = finish(s, p1, p2, [700, 701]);
    expect(u1.map((u) => u.tokenIds)).toEqual([[700], [701]]);
    expect(p2.seqs.map((q) => q.tokens[0])).toEqual([700, 701]);
    const p3 = s.nextAhead(p2)!;
    const u2 = finish(s, p2, p3, [702, 703]);
    expect(u2.map((u) => [u.requestId, u.index, u.tokenIds])).toEqual([['a', 1, [702]], ['b', 1, [703]]]);
    expect(p3.seqs.map((q) => [q.pos, q.tokens[0]])).toEqual(p1.seqs.map((q, i) => [q.tokens.length + 1, 702 + i]));
  });

  it('a sequence that EOS ends runs once more and that result is dropped; the last allowed token is not over-run; blocks come back', () => {
    const s = new Scheduler(64, 16, tok, 256, 16, 512);
    submit(s, 'eos');
    submit(s, 'len', { maxTokens: 1 });
    submit(s, 'go', { maxTokens: 3 });
    const total = s.load().kvBlocksFree;
    const p1 = s.next(1)!;
    const p2 = s.nextAhead(p1)!;
    expect(p2.seqs.length).toBe(2);                // 'len' has its one token in p1: not planned again
    const eos = tok.eosTokenIds[0]!;
    const u1 = finish(s, p1, p2, [eos, 800, 801]);
    expect(u1.map((u) => [u.requestId, u.finishReason])).toEqual([['eos', STOP], ['len', LENGTH], ['go', NONE]]);
    const p3 = s.nextAhead(p2)!;
    expect(p3.seqs.length).toBe(1);                // only 'go'
    const u2 = finish(s, p2, p3, [900, 802]);      // 900: eos's extra step, dropped
    expect(u2.map((u) => [u.requestId, u.tokenIds])).toEqual([['go', [802]]]);
    expect(s.nextAhead(p3)).toBeNull();            // go's third token is its last
    const u3 = finish(s, p3, null, [803]);
    expect(u3.map((u) => [u.requestId, u.finishReason])).toEqual([['go', LENGTH]]);
    expect(s.idle).toBe(true);
    expect(s.load().kvBlocksFree).toBe(total);
  });

  it('a prompt longer than the step budget continues chunk by chunk with the right tokens and positions', () => {
    const s = new Scheduler(64, 16, tok, 4, 16, 512);
    const prompt = tok.encode('class Stack:\n    def push(self, x):\n');
    expect(prompt.length).toBeGreaterThan(8);
    submit(s, 'p', { promptIds: prompt });
    let cur = s.next(1)!;
    const seen: number[] = [];
    for (;;) {
      const q = cur.seqs[0]!;
      if (!q.sample) {
        expect(q.pos).toBe(seen.length);
        expect(Array.from(q.tokens)).toEqual(prompt.slice(seen.length, seen.length + q.tokens.length));
      }
      seen.push(...q.tokens);
      const ahead = s.nextAhead(cur);
      finish(s, cur, ahead, [1000 + seen.length]);
      if (q.sample) {
        expect(seen.slice(0, prompt.length)).toEqual(prompt);
        expect(ahead!.tokenFrom![0]).toBe(0);
        expect(ahead!.seqs[0]!.tokens[0]).toBe(1000 + seen.length);
        expect(ahead!.seqs[0]!.pos).toBe(prompt.length);
        break;
      }
      cur = ahead!;
    }
  });

  it('a stream cancelled while planned into two steps keeps its blocks until the second one is applied', () => {
    const s = new Scheduler(64, 16, tok, 256, 16, 512);
    submit(s, 'c');
    const total = s.load().kvBlocksFree;
    const p1 = s.next(1)!;
    const p2 = s.nextAhead(p1)!;
    s.cancel('c');
    expect(finish(s, p1, p2, [600])).toEqual([]);
    expect(s.load().kvBlocksFree).toBeLessThan(total);  // p2 still writes its KV
    expect(finish(s, p2, null, [601])).toEqual([]);
    expect(s.idle).toBe(true);
    expect(s.load().kvBlocksFree).toBe(total);
  });
});

// One status per sequence: queued while it waits for KV blocks, running once admitted, finished
// as soon as its end is certain (EOS or its last allowed token at apply, a stop string at settle)
// or cancelled; it leaves (blocks freed, no status) once no planned step uses it.
describe('scheduler: a sequence\'s status', () => {
  const { QUEUED, RUNNING, FINISHED, CANCELLED } = RequestStatus;

  it('queued until blocks free up, running once admitted, finished at apply on EOS, gone after settle', () => {
    // 16 blocks of 16 tokens: a budget of prompt + 200 tokens fits once, not twice.
    const s = new Scheduler(16, 16, tok, 256, 16, 512);
    submit(s, 'a', { maxTokens: 200 });
    submit(s, 'b', { maxTokens: 200 });
    expect([s.status('a'), s.status('b')]).toEqual([QUEUED, QUEUED]);
    const p1 = s.next(1)!;
    expect([s.status('a'), s.status('b'), p1.seqs.length]).toEqual([RUNNING, QUEUED, 1]);
    const a1 = s.apply(p1, Int32Array.of(tok.eosTokenIds[0]!));
    expect(s.status('a')).toBe(FINISHED);                     // known at apply, before the report
    expect(s.next(1)).toBeNull();                             // not planned again; b still waits for a's blocks
    expect(s.settle(a1).map((u) => [u.requestId, u.finishReason])).toEqual([['a', STOP]]);
    expect(s.status('a')).toBeUndefined();                    // gone, its blocks free
    expect(s.next(1)!.seqs.length).toBe(1);
    expect(s.status('b')).toBe(RUNNING);
  });

  it('the last allowed token finishes at apply; a stop string only at settle, while planned ahead', () => {
    const s = new Scheduler(64, 16, tok, 256, 16, 512);
    submit(s, 'len', { maxTokens: 1 });
    submit(s, 'str', { stop: [tok.decode([word()])] });
    const p1 = s.next(1)!;
    const p2 = s.nextAhead(p1)!;                              // planned while p1 runs: only 'str' (len's one token is in p1)
    expect(p2.seqs.length).toBe(1);
    const a1 = s.apply(p1, Int32Array.of(500, word()));
    expect([s.status('len'), s.status('str')]).toEqual([FINISHED, RUNNING]);
    s.settle(a1);
    expect([s.status('len'), s.status('str')]).toEqual([undefined, FINISHED]);  // str still in p2: kept until p2 completes
    expect(s.settle(s.apply(p2, Int32Array.of(501)))).toEqual([]);            // p2's token for it is dropped
    expect(s.status('str')).toBeUndefined();
    expect(s.idle).toBe(true);
  });

  it('cancel: a running sequence is cancelled; a finished one stays finished until it leaves', () => {
    const s = new Scheduler(64, 16, tok, 256, 16, 512);
    submit(s, 'run');
    submit(s, 'end', { maxTokens: 1 });
    const p1 = s.next(1)!;
    const p2 = s.nextAhead(p1)!;                              // 'run' planned twice
    s.cancel('run');
    expect(s.status('run')).toBe(CANCELLED);
    const a1 = s.apply(p1, Int32Array.of(600, 601));
    expect(s.status('end')).toBe(FINISHED);
    s.cancel('end');                                          // its end is certain already: finished stays finished (its report goes out; the coordinator, which sent the cancel, drops it)
    expect(s.status('end')).toBe(FINISHED);
    expect(s.settle(a1).map((u) => [u.requestId, u.finishReason])).toEqual([['end', LENGTH]]);
    expect(s.status('run')).toBe(CANCELLED);                  // p2 still uses its blocks
    s.settle(s.apply(p2, Int32Array.of(602)));
    expect([s.status('run'), s.status('end'), s.idle]).toEqual([undefined, undefined, true]);
    s.cancel('nobody');                                       // unknown ids are ignored
  });
});

describe('step frames', () => {
  it('small metadata rides inside the fixed frame, larger metadata follows it; tokenFrom survives both', () => {
    const seq = (n: number, blocks: number) => ({ tokens: Int32Array.from({ length: n }, (_, i) => i + 5), pos: 3,
      blockTable: Int32Array.from({ length: blocks }, (_, i) => i), sample: true, temperature: 0.5, topK: 7, topP: 0.75, seed: 42n });
    for (const [nSeqs, inline] of [[2, true], [64, false]] as const) {
      const seqs = Array.from({ length: nSeqs }, () => seq(1, 40));
      const tokenFrom = Int32Array.from(seqs, (_, i) => (i % 2 ? i : -1));
      const body = encodeStep({ step: 9, seqs, tokenFrom });
      const f = readFrame(frame(KIND_STEP, body));
      expect(f.kind).toBe(KIND_STEP);
      expect(f.bytes).toBe(body.byteLength);
      expect(f.inline !== null).toBe(inline);
      const meta = decodeStep(f.inline ?? body);
      expect(meta.step).toBe(9);
      expect(Array.from(meta.tokenFrom!)).toEqual(Array.from(tokenFrom));
      expect(meta.seqs[1]).toEqual(seqs[1]);
    }
    expect(decodeStep(encodeStep({ step: 1, seqs: [seq(3, 2)] })).tokenFrom).toBeUndefined();
    expect(() => fillTokens([seq(1, 1)], Int32Array.of(2), Int32Array.of(1))).toThrow(/sampled token 2/);
  });
});

describe('scheduler: models that mix windowed and global layers', () => {
  it('a long sequence holds every block of the global pool and a ring of the window pool; both come back; steps carry both tables', () => {
    // 8 global blocks of 16 and a window pool of 3 (window 12): a 20-token prompt + 100 tokens
    // needs 8 global blocks, and a ring of ceil((20 + 12 - 1) / 16) = 2 window blocks.
    const s = new Scheduler(8, 16, tok, 256, 16, 512, { window: 12, windowBlocks: 3 });
    submit(s, 'long', { promptIds: Array.from({ length: 20 }, (_, i) => i + 40), maxTokens: 100 });
    const p = s.next(1)!;
    const l = s.load();
    expect([l.kvBlocksTotal, l.kvBlocksFree, l.kvWindowBlocksTotal, l.kvWindowBlocksFree]).toEqual([8, 0, 3, 1]);
    const seq = p.seqs[0]!;
    expect(seq.blockTable.length).toBe(8);
    expect(Array.from(seq.windowBlockTable!)).toEqual([0, 1, 0, 1, 0, 1, 0, 1]);  // logical block i -> ring[i mod 2]
    // Through the data plane to the other ranks unchanged.
    expect(decodeStep(encodeStep({ step: 1, seqs: p.seqs })).seqs[0]).toEqual(seq);
    // A second sequence waits for the global pool, not for the window pool.
    submit(s, 'next', { promptIds: [1, 2, 3], maxTokens: 4 });
    expect(s.next(1)).toBeNull();
    expect(s.status('next')).toBe(RequestStatus.QUEUED);
    s.cancel('long');
    s.settle(s.apply(p, Int32Array.of(7)));
    const q = s.next(1)!;
    expect(q.seqs.length).toBe(1);
    expect([q.seqs[0]!.blockTable.length, q.seqs[0]!.windowBlockTable!.length]).toEqual([1, 1]);
    s.cancel('next');
    s.settle(s.apply(q, Int32Array.of(8)));
    expect(s.load()).toMatchObject({ kvBlocksFree: 8, kvWindowBlocksFree: 3 });
  });

  it('a sequence whose ring cannot fit the window pool is refused with the windowed layers named', () => {
    const s = new Scheduler(64, 16, tok, 256, 16, 512, { window: 40, windowBlocks: 2 });
    const err = s.submit({ epoch: '1', requestId: 'w', promptIds: Array.from({ length: 30 }, (_, i) => i + 40), generatedIds: [],
      params: samplingToWire(validateSampling({ maxTokens: 10, seed: 1 })) } as Submit);
    expect(err?.error).toMatch(/needs 3 KV blocks for the windowed layers, the replica's cache has 2/);
  });
});

describe('scheduler: exclusive prefill', () => {
  function submitClass(s: Scheduler, id: string, classRank: number, exclusivePrefill: boolean): number[] {
    const promptIds = tok.encode(`def ${id}():\n`);
    const err = s.submit({ epoch: '1', requestId: id, promptIds, generatedIds: [], priority: classRank * 100, classRank, exclusivePrefill,
      params: samplingToWire(validateSampling({ maxTokens: 10, seed: 1 })) } as Submit);
    expect(err).toBeNull();
    return promptIds;
  }
  const tokensOf = (p: PlannedStep) => p.seqs.map((x) => Array.from(x.tokens));

  it('the most urgent first chunk decides the cut; a withdrawn step gives its first chunks back; a left-out stream continues from its feed', () => {
    const s = new Scheduler(64, 16, tok, 256, 16, 512);
    const b = submitClass(s, 'b', 2, false);
    const p1 = s.next(1)!;
    s.settle(s.apply(p1, new Int32Array([500])));
    const p2 = s.next(1)!;                                        // b decodes 500
    expect(tokensOf(p2)).toEqual([[500]]);
    // While p2 runs: a request of an exclusive class (rank 1) arrives; the step behind p2 leaves b out.
    const mid = submitClass(s, 'mid', 1, true);
    const p3 = s.nextAhead(p2)!;
    expect([p3.exclusive, tokensOf(p3)]).toEqual([true, [mid]]);
    // Withdrawn for a more urgent one (rank 0, exclusive): mid is owed its own step again.
    s.unplan(p3);
    expect(s.exclusiveCount).toBe(0);
    const top = submitClass(s, 'top', 0, true);
    const p3b = s.nextAhead(p2)!;
    expect([p3b.exclusive, tokensOf(p3b)]).toEqual([true, [top]]);
    s.settle(s.apply(p2, new Int32Array([501])));               // b's next input is 501, it is in no step
    // mid's first chunk: top's decode (from p3b's result) and mid's prompt; b still out.
    const p4 = s.nextAhead(p3b)!;
    expect([p4.exclusive, p4.seqs.length, Array.from(p4.tokenFrom!)]).toEqual([true, 2, [0, -1]]);
    expect(tokensOf(p4)[1]).toEqual(mid);
    s.settle(s.apply(p3b, new Int32Array([600])));
    // No first chunk left: a normal step; b's token comes from its feed (501), not from p4's result.
    const p5 = s.nextAhead(p4)!;
    expect(p5.exclusive).toBe(false);
    expect(p5.seqs.length).toBe(3);
    expect(Array.from(p5.tokenFrom!)).toEqual([0, 1, -1]);
    expect([Array.from(p5.seqs[2]!.tokens), p5.seqs[2]!.pos]).toEqual([[501], b.length + 1]);
    expect(s.exclusiveCount).toBe(2);
  });

  it('one cut per request; none for a class without exclusive prefill, nor when nothing less urgent would be left out', () => {
    const s = new Scheduler(64, 16, tok, 256, 16, 512);
    submitClass(s, 'a', 0, true);
    submitClass(s, 'c', 1, false);
    const p1 = s.next(1)!;                                        // a's first chunk; c (less urgent) waits
    expect([p1.exclusive, p1.seqs.length]).toEqual([true, 1]);
    s.settle(s.apply(p1, new Int32Array([700])));
    const p2 = s.next(1)!;
    expect([p2.exclusive, p2.seqs.length]).toEqual([false, 2]);
    s.settle(s.apply(p2, new Int32Array([701, 702])));
    submitClass(s, 'd', 0, false);
    expect(s.next(1)!.exclusive).toBe(false);
    const t = new Scheduler(64, 16, tok, 256, 16, 512);
    submitClass(t, 'alone', 0, true);
    expect(t.next(1)!.exclusive).toBe(false);                     // nothing to leave out: not counted
    expect(t.exclusiveCount).toBe(0);
  });
});
