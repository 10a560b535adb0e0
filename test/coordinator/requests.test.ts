// The coordinator's request store: each request's status moves only along the lifecycle's
// transitions, and finish() is the one place it ends: forgotten by the store, its client told once.
import * as grpc from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';

import { ClassTable, defaultClasses } from '../../src/coordinator/classes.js';
import { RequestRecord, RequestStore } from '../../src/coordinator/requests.js';
import type { RequestSink, RequestUpdate } from '../../src/coordinator/requests.js';
import { FinishReason, RequestStatus } from '../../src/protocol/lifecycle.js';
import { validateSampling } from '../../src/protocol/sampling.js';

const { QUEUED, RUNNING, FINISHED, FAILED, CANCELLED } = RequestStatus;
const SCHED = { ...new ClassTable(defaultClasses(['default']), ['default']).resolve(undefined), exact: false };

function record(store: RequestStore) {
  const updates: RequestUpdate[] = [];
  const failures: [number, string][] = [];
  const sink: RequestSink = { update: (u) => updates.push(u), fail: (code, message) => failures.push([code, message]) };
  const rec = new RequestRecord(store.newId(), [1, 2, 3], validateSampling({ seed: 1 }), sink, SCHED);
  store.add(rec);
  return { rec, updates, failures };
}

const last = (tokenIds: number[], index: number): RequestUpdate => ({ tokenIds, text: 'x', index, finishReason: FinishReason.FINISH_REASON_LENGTH });

describe('request store', () => {
  it('a request is queued, then running on a replica, back to queued when its replica is lost, and running again', () => {
    const store = new RequestStore();
    const { rec } = record(store);
    expect(rec.status).toBe(QUEUED);
    expect(store.pending()).toEqual([rec]);
    store.route(rec, 1);
    expect([rec.status, rec.replica, store.pending()]).toEqual([RUNNING, 1, []]);
    expect(store.onReplica(1)).toEqual([rec]);
    store.requeue(rec, 1234);
    expect([rec.status, rec.replica, rec.pendingSince, rec.replays]).toEqual([QUEUED, null, 1234, 1]);
    expect(store.pending()).toEqual([rec]);
    store.route(rec, 0);
    expect([rec.status, rec.replica, rec.pendingSince]).toEqual([RUNNING, 0, undefined]);
  });

  it('refuses a transition the lifecycle does not have', () => {
    const store = new RequestStore();
    const { rec } = record(store);
    expect(() => store.requeue(rec)).toThrow(/no transition from queued to queued/);
    store.route(rec, 0);
    expect(() => store.route(rec, 1)).toThrow(/no transition from running to running/);
    expect(rec.replica).toBe(0);
  });

  it('finish(finished) forgets the request and hands its client the last update, once', () => {
    const store = new RequestStore();
    const { rec, updates, failures } = record(store);
    store.route(rec, 0);
    expect(store.finish(rec, { status: FINISHED, last: last([7], 4) })).toBe(true);
    expect([rec.status, rec.finishReason, store.get(rec.id), store.size, store.completed]).toEqual([FINISHED, 'FINISH_REASON_LENGTH', undefined, 0, 1]);
    expect(updates).toEqual([last([7], 4)]);
    // Ending it again (a late cancel, a second final update) changes and tells nothing.
    expect(store.finish(rec, { status: CANCELLED })).toBe(false);
    expect(store.finish(rec, { status: FAILED, code: grpc.status.UNAVAILABLE, message: 'late' })).toBe(false);
    expect([rec.status, updates.length, failures.length, store.completed]).toEqual([FINISHED, 1, 0, 1]);
  });

  it('finish(failed) tells the client the status and message; finish(cancelled) tells it nothing', () => {
    const store = new RequestStore();
    const a = record(store);
    const b = record(store);
    store.route(b.rec, 0);
    expect(store.finish(a.rec, { status: FAILED, code: grpc.status.UNAVAILABLE, message: 'no replica' })).toBe(true);
    expect(store.finish(b.rec, { status: CANCELLED })).toBe(true);
    expect(a.failures).toEqual([[grpc.status.UNAVAILABLE, 'no replica']]);
    expect([a.rec.status, b.rec.status, b.failures, b.updates, store.size, store.completed]).toEqual([FAILED, CANCELLED, [], [], 0, 2]);
    expect(a.rec.finishReason).toBe(FinishReason.FINISH_REASON_UNSPECIFIED);
  });

  it('a record the store does not hold is not ended by it', () => {
    const store = new RequestStore();
    const stray = new RequestRecord('other', [1], validateSampling({ seed: 1 }), { update: () => {}, fail: () => {} }, SCHED);
    expect(store.finish(stray, { status: CANCELLED })).toBe(false);
    expect(stray.status).toBe(QUEUED);
  });

  it('the waiting requests it keeps aside are those a scan of every live request finds, in the same order', () => {
    // Random lifecycles over several classes: after each step, pending() and pendingCount() against
    // a scan of the live requests (what they were before the store kept the queued ones apart).
    const classes = new ClassTable([{ name: 'rt', priority: -100, groups: ['default'] }, { name: 'std', priority: 0, groups: ['default'] },
      { name: 'bulk', priority: 100, groups: ['default'] }], ['default']);
    const scheds = ['rt', 'std', 'bulk'].map((c) => ({ ...classes.resolve({ className: c }), exact: false }));
    let seed = 11;
    const rnd = (n: number) => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0), (seed >>> 8) % n);
    const store = new RequestStore();
    const scan = () => [...store.values()].filter((r) => r.status === QUEUED).sort((a, b) => a.sched.priority - b.sched.priority || a.order - b.order);
    const seen = new Set<string>();
    for (let step = 0; step < 3000; step++) {
      const live = [...store.values()];
      const r = live[rnd(live.length + 1)];
      const op = rnd(6);
      if (!r || op === 0) {
        const rec = new RequestRecord(store.newId(), [1], validateSampling({ seed: 1 }), { update: () => {}, fail: () => {} }, scheds[rnd(3)]!);
        store.add(rec);
      } else if (r.status === QUEUED) {
        if (op < 4) store.route(r, rnd(3));
        else store.finish(r, op === 4 ? { status: CANCELLED } : { status: FAILED, code: grpc.status.UNAVAILABLE, message: 'x' });
      } else if (r.status === RUNNING) {
        if (op === 1) store.preempt(r);
        else if (op < 4) store.requeue(r);
        else store.finish(r, op === 4 ? { status: FINISHED, last: last([1], 0) } : { status: CANCELLED });
      } else {
        if (op < 3) store.resume(r);
        else if (op === 3) store.requeue(r);
        else store.finish(r, { status: CANCELLED });
      }
      seen.add(r ? `${r.status}` : 'new');
      expect(store.pending()).toEqual(scan());
      expect(store.pendingCount()).toBe(scan().length);
    }
    // Every kind of step was taken.
    expect(seen).toEqual(new Set(['new', QUEUED, RUNNING, RequestStatus.PREEMPTED, FINISHED, FAILED, CANCELLED]));
  });
});
