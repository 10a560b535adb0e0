// The control stream under a burst: what the coordinator sends a worker while a write is in flight
// goes out as one batch after it, so a message sent last (a realtime request's submit behind
// hundreds of batch ones) is not written one event-loop turn per message after the others. A real
// gRPC server and client over loopback, the control proto, the coordinator's WorkerConn.
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it, vi } from 'vitest';

import { WorkerConn, urgentFirst } from '../../src/coordinator/worker-conn.js';
import type { ControlCall } from '../../src/coordinator/worker-conn.js';
import { mergeResponses } from '../../src/coordinator/api.js';
import type { CoordinatorMessage, Join, OutgoingCoordinatorMessage } from '../../src/protocol/control.js';
import { CONTROL_SERVICE, clientConstructor, controlPackageDefinition, serviceDefinition } from '../../src/protocol/proto.js';
import type { RankPlan } from '../../src/coordinator/layout.js';
import { FinishReason } from '../../src/protocol/lifecycle.js';
import { CoalescingWriter, batches, upperBytes } from '../../src/protocol/coalesce.js';
import { packWorkerMessages } from '../../src/worker/control-client.js';
import type { OutgoingWorkerMessage, TokenUpdateIn } from '../../src/protocol/control.js';

const N = 400;
const submit = (i: number): OutgoingCoordinatorMessage => ({
  submit: { epoch: '1', requestId: `r${i}`, promptIds: Array.from({ length: 32 }, (_, k) => k + i), generatedIds: [], priority: i === N - 1 ? -100 : 100,
    classRank: i === N - 1 ? 0 : 2 },
});

let server: grpc.Server | undefined;
let client: grpc.Client | undefined;
afterEach(() => {
  client?.close();
  server?.forceShutdown();
});

/**
 * The server writes N submits in one tick, `send` being how; resolves with what the worker end
 * received: each top-level message's member, and the submits' ids in order.
 */
async function burst(send: (call: ControlCall, m: OutgoingCoordinatorMessage) => void): Promise<{ top: string[]; ids: string[] }> {
  const def = controlPackageDefinition();
  server = new grpc.Server();
  server.addService(serviceDefinition(def, CONTROL_SERVICE), {
    Connect: (call: ControlCall) => {
      call.once('data', () => {
        for (let i = 0; i < N; i++) send(call, submit(i));
        const conn = (call as unknown as { conn?: WorkerConn }).conn;
        if (conn) conn.close();
        else call.end();
      });
    },
  });
  const port = await new Promise<number>((ok, fail) => server!.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? fail(e) : ok(p))));
  const Ctor = clientConstructor(def, CONTROL_SERVICE);
  client = new Ctor(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  const call = (client as unknown as { Connect(): grpc.ClientDuplexStream<unknown, CoordinatorMessage> }).Connect();
  call.write({ heartbeat: { epoch: '1', sentAtMs: 0 } });
  const top: string[] = [];
  const ids: string[] = [];
  const take = (m: CoordinatorMessage): void => {
    if (m.msg === 'batch') for (const x of m.batch.messages) take(x as CoordinatorMessage);
    else if (m.msg === 'submit') ids.push(m.submit.requestId);
  };
  await new Promise<void>((ok, fail) => {
    call.on('data', (m: CoordinatorMessage) => {
      top.push(m.msg);
      take(m);
    });
    call.on('end', ok);
    call.on('error', fail);
  });
  call.end();
  return { top, ids };
}

const plan = { rank: 0, replica: 0 } as unknown as RankPlan;

describe('control stream coalescing', () => {
  it('a burst goes out as the first message and one batch, the realtime submit sent last first in it, the others in order', async () => {
    const { top, ids } = await burst((call, m) => {
      const conn = ((call as unknown as { conn?: WorkerConn }).conn ??= new WorkerConn(plan, {} as Join, call, '1'));
      conn.send(m);
    });
    expect(ids).toEqual(['r0', `r${N - 1}`, ...Array.from({ length: N - 2 }, (_, i) => `r${i + 1}`)]);
    // The first write goes alone; the N - 1 sent while it was in flight follow in one batch.
    expect(top).toEqual(['submit', 'batch']);
  });

  it('written one by one (the stream without coalescing), the last submit is the N-th message', async () => {
    const { top, ids } = await burst((call, m) => call.write(m));
    expect(ids).toEqual(Array.from({ length: N }, (_, i) => `r${i}`));
    expect(top.length).toBe(N);
  });
});

describe('urgent submits first', () => {
  it('reorders only runs of submits, by priority and then arrival; cancels, starts and other epochs keep their place', () => {
    const sub = (id: string, priority: number, epoch = '1'): OutgoingCoordinatorMessage => ({ submit: { epoch, requestId: id, priority } });
    const out = urgentFirst([sub('b1', 100), sub('b2', 100), sub('s1', 0), sub('rt1', -100), { cancel: { epoch: '1', requestId: 'rt1' } },
      sub('b3', 100), sub('rt2', -100), { start: { epoch: '2' } }, sub('b4', 100, '2'), sub('rt3', -100, '2'), sub('b5', 100, '2')]);
    expect(out.map((m) => m.submit?.requestId ?? Object.keys(m)[0])).toEqual(['rt1', 's1', 'b1', 'b2', 'cancel', 'rt2', 'b3', 'start', 'rt3', 'b4', 'b5']);
  });
});

describe('Generate stream merging', () => {
  it('each sequence\'s updates from one replica merge, interleaved ones too; a finished one ends its group, another replica opens a new one', () => {
    const m = (choice: number, index: number, ids: number[], extra: object = {}) => ({ choice, index, tokenIds: ids, text: ids.map(String).join(''),
      logprobs: [], replica: 0, group: 'fast', finishReason: FinishReason.FINISH_REASON_UNSPECIFIED, ...extra });
    const out = mergeResponses([m(0, 0, [1]), m(0, 1, [2, 3]), m(1, 0, [9]), m(1, 1, [8], { finishReason: FinishReason.FINISH_REASON_LENGTH }), m(1, 2, [7]),
      m(0, 3, [4], { replica: 1, group: 'slow' }), m(0, 4, [5], { replica: 1, group: 'slow' })]);
    expect(out.map((x) => [x.choice, x.index, x.tokenIds, x.text, x.replica])).toEqual([
      [0, 0, [1, 2, 3], '123', 0], [1, 0, [9, 8], '98', 0], [1, 2, [7], '7', 0], [0, 3, [4, 5], '45', 1],
    ]);
    expect(out[1]!.finishReason).toBe(FinishReason.FINISH_REASON_LENGTH);
    // n = 3 sequences, step by step: one message each, every sequence's tokens in order.
    const steps = Array.from({ length: 4 }, (_, k) => [0, 1, 2].map((c) => m(c, k, [10 * c + k],
      k === 3 && c === 1 ? { finishReason: FinishReason.FINISH_REASON_STOP } : {}))).flat();
    const n3 = mergeResponses(steps);
    expect(n3.map((x) => [x.choice, x.index, x.tokenIds, x.finishReason])).toEqual([
      [0, 0, [0, 1, 2, 3], FinishReason.FINISH_REASON_UNSPECIFIED], [1, 0, [10, 11, 12, 13], FinishReason.FINISH_REASON_STOP],
      [2, 0, [20, 21, 22, 23], FinishReason.FINISH_REASON_UNSPECIFIED],
    ]);
  });
});

describe('worker token merging', () => {
  it('the steps gathered during a write reach the coordinator as one update per request; notices, refusals and other epochs stay apart, in order', () => {
    const U = FinishReason.FINISH_REASON_UNSPECIFIED;
    const u = (id: string, index: number, ids: number[], extra: Partial<TokenUpdateIn> = {}): TokenUpdateIn => ({ requestId: id, tokenIds: ids,
      text: ids.map((t) => `<${t}>`).join(''), index, finishReason: U, error: '', preempted: false,
      logprobs: ids.map((t) => ({ logprob: -t, topIds: [t], topLogprobs: [-t] })), ...extra });
    const step = (epoch: string, ...updates: TokenUpdateIn[]): OutgoingWorkerMessage => ({ tokens: { epoch, updates } });
    const out = packWorkerMessages([
      step('3', u('a', 0, [1]), u('b', 4, [7])),
      step('3', u('a', 1, [2]), u('b', 5, [8]), u('c', 0, [], { error: 'replica queue full' })),
      step('3', u('a', 2, [3], { finishReason: FinishReason.FINISH_REASON_LENGTH }), u('b', 6, [], { preempted: true })),
      { heartbeat: { epoch: '3', sentAtMs: 1 } },
      step('3', u('b', 6, [9])),
      step('3', u('b', 7, [10])),
      step('4', u('b', 8, [11])),
    ]);
    expect(out.length).toBe(1);
    const msgs = out[0]!.batch!.messages!;
    expect(msgs.map((m) => Object.keys(m)[0])).toEqual(['tokens', 'heartbeat', 'tokens', 'tokens']);
    const show = (x: TokenUpdateIn) => [x.requestId, x.index, x.tokenIds, x.text, x.finishReason, x.error || x.preempted || '', x.logprobs!.map((l) => l.logprob)];
    expect(msgs[0]!.tokens!.updates!.map(show)).toEqual([
      ['a', 0, [1, 2, 3], '<1><2><3>', FinishReason.FINISH_REASON_LENGTH, '', [-1, -2, -3]],
      ['b', 4, [7, 8], '<7><8>', U, '', [-7, -8]],
      ['c', 0, [], '', U, 'replica queue full', []],
      ['b', 6, [], '', U, true, []],
    ]);
    expect(msgs[2]!.tokens!.updates!.map(show)).toEqual([['b', 6, [9, 10], '<9><10>', U, '', [-9, -10]]]);
    expect(msgs[3]!.tokens).toEqual({ epoch: '4', updates: [u('b', 8, [11])] });
  });
});

describe('batch size', () => {
  it('upperBytes bounds the encoded size, and batches() keeps each batch under its budget, in order', () => {
    const method = controlPackageDefinition()[CONTROL_SERVICE] as unknown as Record<string, { responseSerialize(v: unknown): Buffer; requestSerialize(v: unknown): Buffer }>;
    const { responseSerialize, requestSerialize } = method.Connect!;
    const big = (i: number): OutgoingCoordinatorMessage => ({
      submit: { epoch: '7', requestId: `big-${String(i).padStart(2, '0')}`, promptIds: Array.from({ length: 20_000 }, (_, k) => (k * 7919 + i) % 150_000), generatedIds: [1, 2, 3],
        priority: -5, classRank: 1, params: { temperature: 0.7, seed: '18446744073709551615', stop: ['</s>', 'ünïcødé'], maxTokens: 100, logprobs: 5 } },
    });
    const tokens = { tokens: { epoch: '7', updates: Array.from({ length: 64 }, (_, i) => ({ requestId: `r${i}`, tokenIds: [i, i + 1], text: 'ab€', index: 3 * i,
      finishReason: 'FINISH_REASON_UNSPECIFIED', error: '', preempted: false,
      logprobs: [{ logprob: -0.5, topIds: [1, 2, 3, 4, 5], topLogprobs: [-0.1, -0.2, -0.3, -0.4, -0.5] }] })) } };
    for (let i = 0; i < 3; i++) expect(upperBytes(big(i))).toBeGreaterThanOrEqual(responseSerialize(big(i)).length);
    expect(upperBytes(tokens)).toBeGreaterThanOrEqual(requestSerialize(tokens).length);
    const ms = Array.from({ length: 30 }, (_, i) => big(i));
    const limit = 4 * upperBytes(big(0));
    const out = batches(ms, (messages) => ({ batch: { messages } }), limit);
    expect(out.length).toBe(8);  // 4 a batch: 7 batches and the last 2
    expect(out.flatMap((m) => m.batch?.messages ?? [m]).map((m) => m.submit!.requestId)).toEqual(ms.map((m) => m.submit!.requestId));
    for (const b of out) expect(responseSerialize(b).length).toBeLessThanOrEqual(limit);
  });
});

describe('a paced stream (a class with a stream interval)', () => {
  /** A writer whose writes complete when the test says so; each write's text. */
  function paced() {
    const writes: string[] = [];
    const pending: (() => void)[] = [];
    const out = new CoalescingWriter<string>((m, done) => {
      writes.push(m);
      pending.push(() => done());
    }, (ms) => [ms.join('')]);
    const complete = () => pending.splice(0).forEach((f) => f());
    return { out, writes, complete };
  }
  afterEach(() => {
    vi.useRealTimers();
  });

  it('writes the first message at once, then at most one write per interval with what came meanwhile merged, in order', () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance'] });
    const { out, writes, complete } = paced();
    out.pace(100);
    out.send('a');
    expect(writes).toEqual(['a']);
    complete();
    out.send('b');
    out.send('c');
    vi.advanceTimersByTime(50);
    expect(writes).toEqual(['a']);
    expect(out.backlog).toBe(2);
    out.send('d');
    vi.advanceTimersByTime(49);
    expect(writes).toEqual(['a']);
    vi.advanceTimersByTime(1);
    expect(writes).toEqual(['a', 'bcd']);
    // A write still in flight when the interval has passed: what came meanwhile goes out when it completes.
    out.send('e');
    vi.advanceTimersByTime(150);
    expect(writes).toEqual(['a', 'bcd']);
    complete();
    expect(writes).toEqual(['a', 'bcd', 'e']);
    complete();
    // Idle for longer than the interval: the next message goes out at once.
    vi.advanceTimersByTime(300);
    out.send('f');
    expect(writes).toEqual(['a', 'bcd', 'e', 'f']);
    complete();
    expect(writes.join('')).toBe('abcdef');
  });

  it('the end does not wait: whenIdle writes what waits for the interval at once, and runs after it was written', () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance'] });
    const { out, writes, complete } = paced();
    out.pace(1000);
    out.send('a');
    complete();
    out.send('b');
    out.send('c');
    expect(writes).toEqual(['a']);
    let ended = false;
    out.whenIdle(() => (ended = true), null);
    expect(writes).toEqual(['a', 'bc']);
    expect(ended).toBe(false);
    complete();
    expect(ended).toBe(true);
    // What follows the end (an SSE stream's last chunks) does not wait either.
    out.send('d');
    expect(writes).toEqual(['a', 'bc', 'd']);
    complete();
    // Nothing is left on a timer to write again later.
    vi.advanceTimersByTime(5000);
    expect(writes).toEqual(['a', 'bc', 'd']);
  });

  it('pace() lets the next write go at once (a stream paced when its request is admitted, or after its opening chunks)', () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance'] });
    const { out, writes, complete } = paced();
    out.send('open');
    out.pace(100);
    out.send('t1');
    complete();
    expect(writes).toEqual(['open', 't1']);
    complete();
    out.send('t2');
    expect(writes).toEqual(['open', 't1']);
    vi.advanceTimersByTime(100);
    expect(writes).toEqual(['open', 't1', 't2']);
  });

  it('unpaced (interval 0): what comes during a write goes out as soon as it completes, with no timer', () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance'] });
    const { out, writes, complete } = paced();
    out.send('a');
    out.send('b');
    out.send('c');
    complete();
    expect(writes).toEqual(['a', 'bc']);
    complete();
    out.send('d');
    expect(writes).toEqual(['a', 'bc', 'd']);
    expect(vi.getTimerCount()).toBe(0);
  });
});
