// The router without a cluster: a real Membership whose replicas' drivers are WorkerConns on a
// recording stream, a real RequestStore, token reports as the drivers send them. What it must get
// right: the least-loaded serving replica, the Submit a driver receives, and on a replay after a
// failover the client sees every token once (the re-sent prefix dropped, a gap refused, a late
// report from the lost replica ignored).
import * as grpc from '@grpc/grpc-js';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

import { planLayout } from '../../src/coordinator/layout.js';
import type { Membership } from '../../src/coordinator/membership.js';
import { RequestRecord, RequestStore } from '../../src/coordinator/requests.js';
import type { RequestUpdate } from '../../src/coordinator/requests.js';
import { REPLAY_SETTLE_MS, Router } from '../../src/coordinator/router.js';
import { ClassTable, defaultClasses } from '../../src/coordinator/classes.js';
import { loadModelConfig } from '../../src/model/index.js';
import type { TokenUpdate } from '../../src/protocol/control.js';
import { FinishReason, RequestStatus } from '../../src/protocol/lifecycle.js';
import { validateSampling } from '../../src/protocol/sampling.js';
import { PY_TINY } from '../serving/helpers.js';
import { servingMembers } from './serving-members.js';

const { FINISH_REASON_UNSPECIFIED: NONE, FINISH_REASON_STOP: STOP } = FinishReason;
const CLASSES = new ClassTable(defaultClasses(['default']), ['default']);

let members: Membership | undefined;
beforeEach(() => void vi.useFakeTimers());
afterEach(() => {
  members?.stopAll('test done');
  vi.useRealTimers();
});

/** Two replicas of tp 1, both serving; what each driver is sent. */
function cluster() {
  const layout = planLayout(loadModelConfig(PY_TINY), [{ host: 'localhost', slots: 2 }], { tp: 1, pp: 1, replicas: 2 });
  const logs: string[] = [];
  const made = servingMembers(layout, 64, (l) => logs.push(l));
  members = made.members;
  const { sent } = made;
  const store = new RequestStore();
  const router = new Router(members, store, new ClassTable(defaultClasses(['default']), ['default']), { log: (l) => logs.push(l) });
  return { members, store, router, sent, logs };
}

function request(store: RequestStore, seed: number | bigint = 42) {
  const got: RequestUpdate[] = [];
  const failed: [number, string][] = [];
  const rec = new RequestRecord(store.newId(), [1, 2, 3], validateSampling({ seed, maxTokens: 8, stop: ['\n\n'] }),
    { update: (u) => got.push(u), fail: (c, m) => failed.push([c, m]) }, { ...CLASSES.resolve(undefined), exact: false });
  store.add(rec);
  return { rec, got, failed };
}

/** A driver's Tokens report for one request. */
function report(m: Membership, replica: number, u: Partial<TokenUpdate> & { requestId: string }): void {
  m.emit('tokens', m.replicas[replica]!, { epoch: '1', updates: [{ tokenIds: [], text: '', index: 0, finishReason: NONE, error: '', preempted: false, logprobs: [], ...u }] });
}

describe('router', () => {
  it('sends each request to the serving replica with the fewest unfinished requests, with its parameters', () => {
    const { store, router, sent } = cluster();
    const a = request(store, 2n ** 64n - 1n);
    const b = request(store);
    router.submit(a.rec);
    router.submit(b.rec);
    expect([a.rec.replica, b.rec.replica]).toEqual([0, 1]);
    expect([a.rec.status, b.rec.status]).toEqual([RequestStatus.RUNNING, RequestStatus.RUNNING]);
    expect(sent[0]).toEqual([{ submit: { epoch: '1', requestId: a.rec.id, promptIds: [1, 2, 3], generatedIds: [],
      params: { temperature: 0, topK: 0, topP: 1, minP: 0, seed: '18446744073709551615', maxTokens: 8, stop: ['\n\n'], ignoreEos: false,
        repetitionPenalty: 1, presencePenalty: 0, frequencyPenalty: 0, stopTokenIds: [], logitBias: [], logprobs: -1 }, priority: 0, classRank: 1,
      exclusivePrefill: false, streamIntervalMs: 0 } }]);
    // A class with exclusive prefill or a stream interval (deployment file) tells the driver with each of its requests.
    const exclusive = new ClassTable(defaultClasses(['default']).map((c) => (c.name === 'realtime' ? { ...c, exclusivePrefill: true, streamIntervalMs: 40 } : c)),
      ['default']);
    const rt = new RequestRecord(store.newId(), [1, 2, 3], validateSampling({ maxTokens: 8 }), { update: () => {}, fail: () => {} },
      { ...exclusive.resolve({ className: 'realtime' }), exact: false });
    store.add(rt);
    router.submit(rt);
    const msg = (sent.flat() as { submit?: { requestId: string; classRank: number; exclusivePrefill: boolean; streamIntervalMs: number } }[])
      .find((m) => m.submit?.requestId === rt.id);
    expect([msg?.submit?.classRank, msg?.submit?.exclusivePrefill, msg?.submit?.streamIntervalMs]).toEqual([0, true, 40]);
  });

  it('a replay after a failover: the re-sent prefix is dropped, the client sees each token once and in order', () => {
    const { members: m, store, router, sent, logs } = cluster();
    const { rec, got } = request(store);
    router.submit(rec);
    expect(rec.replica).toBe(0);
    report(m, 0, { requestId: rec.id, tokenIds: [10, 11, 12], text: 'abc', index: 0 });
    m.replicas[0]!.state = 'lost';
    expect(router.requeue(m.replicas[0]!, 2, 'rank 0 lost')).toEqual({ moved: [rec], quarantined: [] });
    expect([rec.status, rec.replica]).toEqual([RequestStatus.QUEUED, null]);
    vi.advanceTimersByTime(REPLAY_SETTLE_MS);
    // Replayed on the other replica from prompt + the 3 tokens the client has.
    expect([rec.status, rec.replica, rec.replays]).toEqual([RequestStatus.RUNNING, 1, 1]);
    expect(sent[1]!.at(-1)).toMatchObject({ submit: { requestId: rec.id, promptIds: [1, 2, 3], generatedIds: [10, 11, 12] } });
    // A late report from the lost replica is not the request's any more.
    report(m, 0, { requestId: rec.id, tokenIds: [99], text: 'z', index: 3 });
    // The new driver re-sends from an earlier index: only 13 and 14 are new.
    report(m, 1, { requestId: rec.id, tokenIds: [11, 12, 13, 14], text: 'de', index: 1 });
    // A report past the end of what the client has is a gap: refused, logged.
    report(m, 1, { requestId: rec.id, tokenIds: [20], text: 'q', index: 9 });
    expect(logs.some((l) => l.includes(`request ${rec.id}: gap in the token stream (have 5, got index 9)`))).toBe(true);
    report(m, 1, { requestId: rec.id, tokenIds: [15], text: 'f', index: 5, finishReason: STOP });
    expect(got).toEqual([
      { tokenIds: [10, 11, 12], text: 'abc', index: 0, finishReason: NONE, replica: 0, group: 'default' },
      { tokenIds: [13, 14], text: 'de', index: 3, finishReason: NONE, replica: 1, group: 'default' },
      { tokenIds: [15], text: 'f', index: 5, finishReason: STOP, replica: 1, group: 'default' },
    ]);
    expect([rec.tokens, got.map((u) => u.text).join(''), rec.status, rec.finishReason, store.size]).toEqual([[10, 11, 12, 13, 14, 15], 'abcdef', RequestStatus.FINISHED, STOP, 0]);
    // Ended: a last word from the driver changes nothing.
    report(m, 1, { requestId: rec.id, tokenIds: [16], text: 'g', index: 6 });
    expect(got).toHaveLength(3);
  });

  it('a request in flight through --quarantine-after replica losses is failed instead of replayed again', () => {
    const { members: m, store, router, sent } = cluster();
    const { rec, failed } = request(store);
    router.submit(rec);
    report(m, 0, { requestId: rec.id, tokenIds: [10], text: 'a', index: 0 });
    m.replicas[0]!.state = 'lost';
    expect(router.requeue(m.replicas[0]!, 2, 'rank 0 lost: control stream closed')).toEqual({ moved: [rec], quarantined: [] });
    vi.advanceTimersByTime(REPLAY_SETTLE_MS);
    expect(rec.replica).toBe(1);
    const submits = sent[1]!.length;
    m.replicas[1]!.state = 'lost';
    expect(router.requeue(m.replicas[1]!, 2, 'rank 1 lost: process exited (SIGKILL)')).toEqual({ moved: [], quarantined: [rec] });
    expect(failed).toEqual([[grpc.status.INTERNAL, 'request quarantined: it was in flight through 2 replica losses (the last: rank 1 lost: ' +
      'process exited (SIGKILL)); it is not replayed again in case it is what takes replicas down (--quarantine-after 2)']]);
    expect([rec.status, rec.replays, store.size, sent[1]!.length]).toEqual([RequestStatus.FAILED, 2, 0, submits]);
  });

  it('replicas lost together: a request the first loss displaced is not placed on the second, nor charged its loss', () => {
    const { members: m, store, router, sent } = cluster();
    const { rec, failed } = request(store);
    router.submit(rec);
    m.replicas[0]!.state = 'lost';
    router.requeue(m.replicas[0]!, 2, 'rank 0 lost: control stream cancelled');
    vi.advanceTimersByTime(REPLAY_SETTLE_MS / 2);
    m.replicas[1]!.state = 'lost';
    expect(router.requeue(m.replicas[1]!, 2, 'rank 1 lost: control stream cancelled')).toEqual({ moved: [], quarantined: [] });
    vi.advanceTimersByTime(REPLAY_SETTLE_MS);
    expect([rec.status, rec.replays, sent[1]!.length, failed]).toEqual([RequestStatus.QUEUED, 1, 0, []]);
    // The first replica to serve again gets it.
    m.replicas[1]!.state = 'serving';
    m.emit('replica-serving', m.replicas[1]!);
    expect([rec.status, rec.replica]).toEqual([RequestStatus.RUNNING, 1]);
  });

  it('a request that ends while a loss settles does not place the displaced request early', () => {
    const { members: m, store, router, sent } = cluster();
    const a = request(store);
    const b = request(store);
    router.submit(a.rec);
    router.submit(b.rec);
    expect([a.rec.replica, b.rec.replica]).toEqual([0, 1]);
    m.replicas[0]!.state = 'lost';
    router.requeue(m.replicas[0]!, 2, 'rank 0 lost: control stream cancelled');
    // b's end frees replica 1, which is lost too a moment later: a must not have gone there.
    report(m, 1, { requestId: b.rec.id, tokenIds: [7], text: 'x', index: 0, finishReason: STOP });
    expect([a.rec.status, sent[1]!.length]).toEqual([RequestStatus.QUEUED, 1]);
    vi.advanceTimersByTime(REPLAY_SETTLE_MS / 2);
    m.replicas[1]!.state = 'lost';
    router.requeue(m.replicas[1]!, 2, 'rank 1 lost: control stream cancelled');
    vi.advanceTimersByTime(REPLAY_SETTLE_MS);
    expect([a.rec.status, a.rec.replays, a.failed]).toEqual([RequestStatus.QUEUED, 1, []]);
  });

  it('a driver that refuses a request fails it RESOURCE_EXHAUSTED naming the replica', () => {
    const { members: m, store, router } = cluster();
    const { rec, failed } = request(store);
    router.submit(rec);
    report(m, 0, { requestId: rec.id, error: 'replica queue full (16 waiting)' });
    expect(failed).toEqual([[grpc.status.RESOURCE_EXHAUSTED, 'replica 0: replica queue full (16 waiting)']]);
    expect([rec.status, store.size]).toEqual([RequestStatus.FAILED, 0]);
  });

  it('with no serving replica a request waits; failPending ends only those that waited long enough', () => {
    const { members: m, store, router } = cluster();
    for (const r of m.replicas) r.state = 'lost';
    const old = request(store);
    const fresh = request(store);
    router.submit(old.rec);
    router.submit(fresh.rec);
    expect(store.pending()).toEqual([old.rec, fresh.rec]);
    old.rec.pendingSince = Date.now() - 10_000;
    expect(router.failPending(grpc.status.UNAVAILABLE, 'no replica in time', 5_000)).toBe(1);
    expect(old.failed).toEqual([[grpc.status.UNAVAILABLE, 'no replica in time']]);
    expect([old.rec.status, fresh.rec.status, store.pending()]).toEqual([RequestStatus.FAILED, RequestStatus.QUEUED, [fresh.rec]]);
    // A replica serves again: the one still waiting goes to it.
    m.replicas[1]!.state = 'serving';
    m.emit('replica-serving', m.replicas[1]!);
    expect([fresh.rec.status, fresh.rec.replica]).toEqual([RequestStatus.RUNNING, 1]);
  });

  it('cancel tells the request\'s driver', () => {
    const { store, router, sent } = cluster();
    const { rec } = request(store);
    router.submit(rec);
    store.finish(rec, { status: RequestStatus.CANCELLED });
    router.cancel(rec, 'client cancelled');
    expect(sent[0]!.at(-1)).toEqual({ cancel: { epoch: '1', requestId: rec.id, reason: 'client cancelled' } });
  });
});
