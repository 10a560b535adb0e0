// Class routing without a cluster: the TTFT estimate (a replica's queue, batch, KV cache and
// measured step time), and the router over two groups of different numerics (fast: cpu auto,
// slow: cpu f32): each class's order of groups, overflow when the preferred group cannot meet the
// class (its target, or room at once), lower classes not standing in a higher one's way,
// RESOURCE_EXHAUSTED only when no allowed replica can take it, and an exact replay waiting for
// its numerics.
import { afterEach, describe, expect, it, vi } from 'vitest';

import { ClassTable } from '../../src/coordinator/classes.js';
import type { ClassSpec } from '../../src/coordinator/classes.js';
import { estimateTtft } from '../../src/coordinator/estimate.js';
import type { Job, ReplicaModel } from '../../src/coordinator/estimate.js';
import { DEFAULT_SERVING, planGroups } from '../../src/coordinator/layout.js';
import type { Membership } from '../../src/coordinator/membership.js';
import { RequestRecord, RequestStore } from '../../src/coordinator/requests.js';
import { REPLAY_SETTLE_MS, Router } from '../../src/coordinator/router.js';
import { loadModelConfig } from '../../src/model/index.js';
import type { TokenUpdate } from '../../src/protocol/control.js';
import { FinishReason, RequestStatus } from '../../src/protocol/lifecycle.js';
import { validateSampling } from '../../src/protocol/sampling.js';
import { PY_TINY } from '../serving/helpers.js';
import { servingMembers } from './serving-members.js';

const model: ReplicaModel = { kvBlocks: 10, blockSize: 16, maxSeqs: 0, maxQueue: 100, maxBatchTokens: 256, stepMsBase: 10, stepMsPerToken: 0.1 };
const job = (o: Partial<Job>): Job => ({ priority: 0, classRank: 1, order: 0, budgetTokens: 32, prefillTokens: 16, remainingTokens: 16, started: false, ...o });

describe('TTFT estimate', () => {
  it('an idle replica: the step under way, then the prompt\'s prefill chunks', () => {
    const e = estimateTtft(model, [], job({ prefillTokens: 300 }));
    // 10 (a decode step of an empty batch) + 10 + 25.6 (256 tokens) + 10 + 4.4 (44 tokens).
    expect(e.ttftMs).toBeCloseTo(60, 6);
    expect([e.admitNow, e.fits, e.queueFull]).toEqual([true, true, false]);
  });

  it('a full cache: it waits for the running request closest to its end, at one decode step a token', () => {
    // 9 + 1 of 10 blocks taken; the new request needs 1.
    const running = [job({ order: 1, budgetTokens: 144, remainingTokens: 50, started: true }), job({ order: 2, budgetTokens: 16, remainingTokens: 5, started: true })];
    const e = estimateTtft(model, running, job({ order: 9, budgetTokens: 16 }));
    // The 1-block request ends after 5 decode steps of 10.2 ms (a batch of 2); then a step under way and its prefill beside 1 decode.
    expect(e.admitNow).toBe(false);
    expect(e.ttftMs).toBeCloseTo(5 * 10.2 + 10.2 + 10 + 0.1 * 17, 6);
  });

  it('requests of a less urgent class do not count (they would be preempted); more urgent queued ones go first', () => {
    const batch = [job({ order: 1, classRank: 2, priority: 100, budgetTokens: 160, remainingTokens: 500, started: true })];
    expect(estimateTtft(model, batch, job({ order: 9, classRank: 0, priority: -100 })).admitNow).toBe(true);
    expect(estimateTtft(model, batch, job({ order: 9, classRank: 2, priority: 100 })).admitNow).toBe(false);
    expect(estimateTtft(model, [], job({ budgetTokens: 160 })).fits).toBe(true);
    expect(estimateTtft(model, [], job({ budgetTokens: 161 })).fits).toBe(false);
    expect(estimateTtft({ ...model, maxQueue: 1 }, [job({ order: 1 })], job({ order: 2 })).queueFull).toBe(true);
  });

  it('a batch limit (max seqs) holds a request back like a full cache', () => {
    const running = [job({ order: 1, remainingTokens: 3, started: true })];
    expect(estimateTtft({ ...model, maxSeqs: 1 }, running, job({ order: 2 })).admitNow).toBe(false);
    expect(estimateTtft({ ...model, maxSeqs: 2 }, running, job({ order: 2 })).admitNow).toBe(true);
  });

  it('a request record is its own job: the same estimates as its fields copied into plain jobs, whatever was estimated before', () => {
    // Random replicas (priorities out of routing order, replays, past the scratch arrays' first size)
    // estimated from the records themselves and from plain copies of their fields, twice, in opposite orders.
    let seed = 7;
    const rnd = (n: number) => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0), (seed >>> 8) % n);
    const classes = new ClassTable(CLASSES, ['fast', 'slow']);
    const names = ['realtime', 'standard', 'batch'];
    const record = () => {
      const r = new RequestRecord(`r${rnd(1e9)}`, Array.from({ length: 1 + rnd(300) }, () => 1), validateSampling({ seed: 1, maxTokens: 1 + rnd(500) }),
        { update: () => {}, fail: () => {} }, { ...classes.resolve({ className: names[rnd(3)]! }), exact: false });
      for (let i = rnd(r.params.maxTokens + 1); i > 0; i--) r.tokens.push(1);
      r.started = rnd(2) === 0;
      return r;
    };
    const plain = (r: RequestRecord): Job => ({ priority: r.sched.priority, classRank: r.sched.cls.rank, order: r.order,
      budgetTokens: r.promptIds.length + r.params.maxTokens, prefillTokens: r.promptIds.length + r.tokens.length,
      remainingTokens: Math.max(0, r.params.maxTokens - r.tokens.length), started: r.started });
    const cases = Array.from({ length: 60 }, (_, k) => {
      const on = new Set(Array.from({ length: rnd(k % 10 === 0 ? 3000 : 400) }, record));
      // Records routed out of their arrival order, as replays and classes leave them.
      const shuffled = [...on].sort(() => rnd(3) - 1);
      const m: ReplicaModel = { kvBlocks: [0, 30 + rnd(30), 100 + rnd(20000)][rnd(3)]!, blockSize: 16, maxSeqs: rnd(3) * 64, maxQueue: 50 + rnd(3000),
        maxBatchTokens: 64 + rnd(512), stepMsBase: rnd(4) === 0 ? 0 : rnd(20), stepMsPerToken: rnd(3) === 0 ? 0 : rnd(100) / 1000 };
      return { on: new Set(shuffled), m, q: record() };
    });
    const fromRecords = cases.map((c) => estimateTtft(c.m, c.on, c.q));
    const fromPlain = [...cases].reverse().map((c) => estimateTtft(c.m, [...c.on].map(plain), plain(c.q))).reverse();
    expect(fromRecords).toEqual(fromPlain);
    expect(cases.map((c) => estimateTtft(c.m, c.on, c.q))).toEqual(fromRecords);
    // Not a degenerate sample: requests admitted at once, after waiting, and never.
    expect(new Set(fromRecords.map((e) => (e.ttftMs === Infinity ? 'never' : e.admitNow ? 'now' : 'later')))).toEqual(new Set(['now', 'later', 'never']));
  });
});

let members: Membership | undefined;
afterEach(() => {
  members?.stopAll('test done');
  vi.useRealTimers();
});

const CLASSES: ClassSpec[] = [
  { name: 'realtime', priority: -100, groups: ['fast'], ttftP99Ms: 100 },
  { name: 'standard', priority: 0, groups: ['fast', 'slow'] },
  { name: 'batch', priority: 100, groups: ['slow', 'fast'] },
];

/** Replica 0 in group fast (cpu, as stored), replica 1 in group slow (cpu f32), both serving with 10 KV blocks of 16 tokens. */
function cluster(classSpecs: ClassSpec[] = CLASSES) {
  const slots = [{ host: 'localhost', localRank: 0 }, { host: 'localhost', localRank: 1 }];
  const { layout } = planGroups(loadModelConfig(PY_TINY), slots, [
    { name: 'fast', tp: 1, pp: 1, replicas: 1, serving: { ...DEFAULT_SERVING } },
    { name: 'slow', tp: 1, pp: 1, replicas: 1, serving: { ...DEFAULT_SERVING, dtype: 'f32' } },
  ]);
  const made = servingMembers(layout, 10);
  members = made.members;
  const { sent } = made;
  const store = new RequestStore();
  const classes = new ClassTable(classSpecs, ['fast', 'slow']);
  const router = new Router(members, store, classes, { log: () => {} });
  const add = (cls: string, maxTokens = 28, exact = false) => {
    const failed: string[] = [];
    const rec = new RequestRecord(store.newId(), [1, 2, 3, 4], validateSampling({ seed: 1, maxTokens }),
      { update: () => {}, fail: (_, m) => failed.push(m) }, { ...classes.resolve({ className: cls }), exact });
    const route = router.choose(rec);
    if (!('exhausted' in route)) {
      store.add(rec);
      router.submit(rec, route);
    }
    return { rec, route, failed };
  };
  const report = (replica: number, u: Partial<TokenUpdate> & { requestId: string }) => members!.emit('tokens', members!.replicas[replica]!,
    { epoch: '1', updates: [{ tokenIds: [], text: '', index: 0, finishReason: FinishReason.FINISH_REASON_UNSPECIFIED, error: '', preempted: false, logprobs: [], ...u }] });
  return { members, store, router, sent, add, report };
}

describe('class routing', () => {
  it('each class takes its first group while it has room, and overflows down its list when it has none', () => {
    const { router, add, sent } = cluster();
    // 32-token budgets (2 blocks): 5 fit one replica's 10 blocks.
    const batch = Array.from({ length: 7 }, () => add('batch'));
    expect(batch.map((b) => b.rec.replica)).toEqual([1, 1, 1, 1, 1, 0, 0]);
    expect(batch.map((b) => 'overflow' in b.route && b.route.overflow)).toEqual([false, false, false, false, false, true, true]);
    // standard prefers fast: the batch requests there would be preempted, so it fits at once.
    const std = add('standard');
    expect([std.rec.replica, 'replica' in std.route && std.route.overflow]).toEqual([0, false]);
    expect(sent[0]!.at(-1)).toMatchObject({ submit: { requestId: std.rec.id, priority: 0, classRank: 1 } });
    const k = router.stats.all().map((c) => [c.cls.name, c.routed, c.overflowed, Object.fromEntries(c.routedByGroup)]);
    expect(k).toEqual([['realtime', 0, 0, {}], ['standard', 1, 0, { fast: 1 }], ['batch', 7, 2, { slow: 5, fast: 2 }]]);
  });

  it('standard overflows to slow once fast is full of its own class; realtime never leaves fast, queuing past its target when it must', () => {
    const { add, members: m } = cluster();
    const std = Array.from({ length: 6 }, () => add('standard'));
    expect(std.map((s) => s.rec.replica)).toEqual([0, 0, 0, 0, 0, 1]);
    // fast: 10 ms steps; 5 running standard requests of 28 tokens: realtime (more urgent) would preempt them, 1 step away.
    m.replicas[0]!.load = { running: 5, queued: 0, kvBlocksTotal: 10, kvBlocksFree: 0, kvBlockSize: 16, steps: '10', generatedTokens: '0',
      recentStepBatch: [], maxStepBatch: 5, maxInFlight: 1, preemptions: 0, stepMsBase: 10, stepMsPerToken: 0 };
    const rt = add('realtime');
    expect(rt.rec.replica).toBe(0);
    expect('replica' in rt.route && rt.route.ttftMs).toBeCloseTo(20, 6);
    // Four more fill the cache (the standard ones make way); a sixth waits for one to end: past its 100 ms target, and realtime has no other group.
    for (let i = 0; i < 4; i++) add('realtime');
    const late = add('realtime');
    expect(late.rec.replica).toBe(0);
    expect('replica' in late.route && late.route.ttftMs).toBeGreaterThan(100);
  });

  it('a class with a TTFT target overflows when its first group\'s estimate misses it, and takes the shortest estimate when no group meets it', () => {
    const { add, members: m } = cluster([...CLASSES, { name: 'interactive', priority: -50, groups: ['fast', 'slow'], ttftP99Ms: 100 }]);
    const idle = (stepMsBase: number) => ({ running: 0, queued: 0, kvBlocksTotal: 10, kvBlocksFree: 10, kvBlockSize: 16, steps: '10', generatedTokens: '0',
      recentStepBatch: [], maxStepBatch: 1, maxInFlight: 1, preemptions: 0, stepMsBase, stepMsPerToken: 0 });
    // Both idle: fast's steps take 80 ms (a step under way + the prefill step = 160 ms > 100), slow's 20 ms (40 ms).
    m.replicas[0]!.load = idle(80);
    m.replicas[1]!.load = idle(20);
    const first = add('interactive');
    expect([first.rec.replica, 'replica' in first.route && first.route.overflow, 'replica' in first.route && first.route.ttftMs]).toEqual([1, true, 40]);
    // Now slow's steps take 200 ms and it holds the first request: neither meets 100 ms, fast's 160 ms is the shorter.
    m.replicas[1]!.load = idle(200);
    const second = add('interactive');
    expect([second.rec.replica, 'replica' in second.route && second.route.overflow, 'replica' in second.route && second.route.ttftMs]).toEqual([0, false, 160]);
  });

  it('RESOURCE_EXHAUSTED only when no replica the class may use can take the request', () => {
    const { add, store } = cluster();
    const huge = add('batch', 200);   // 204 tokens: 13 blocks, more than either cache
    expect(huge.route).toEqual({ exhausted: expect.stringMatching(/^class batch: no replica of groups slow, fast can take the request: needs 13 KV blocks, replica 1 \(slow\) has 10; needs 13 KV blocks, replica 0 \(fast\) has 10$/) });
    expect(store.size).toBe(0);
  });

  it('failover: a replay goes to any group its class allows; with exact, only to the numerics it started on, else it waits', () => {
    vi.useFakeTimers();
    const { add, report, router, members: m, store } = cluster();
    const free = add('standard');
    const exact = add('standard', 28, true);
    expect([free.rec.replica, exact.rec.replica]).toEqual([0, 0]);
    report(0, { requestId: free.rec.id, tokenIds: [7, 8], index: 0 });
    report(0, { requestId: exact.rec.id, tokenIds: [7], index: 0 });
    expect(exact.rec.numerics).toBe('cpu w=bf16,a=f32,kv=f32');   // py-tiny's bf16 weights as stored
    m.replicas[0]!.state = 'lost';
    router.requeue(m.replicas[0]!, 2, 'rank 0 lost');
    vi.advanceTimersByTime(REPLAY_SETTLE_MS);
    expect([free.rec.status, free.rec.replica]).toEqual([RequestStatus.RUNNING, 1]);   // on slow (f32 weights), from its 2 tokens
    expect([exact.rec.status, exact.rec.replica]).toEqual([RequestStatus.QUEUED, null]);
    m.replicas[0]!.state = 'serving';
    m.emit('replica-serving', m.replicas[0]!);
    expect([exact.rec.status, exact.rec.replica]).toEqual([RequestStatus.RUNNING, 0]);
    expect(store.size).toBe(2);
  });

  it('a preempted notice: preempted in the store and the class counters; its next tokens resume it', () => {
    const { add, report, router } = cluster();
    const b = add('batch');
    report(1, { requestId: b.rec.id, tokenIds: [5], index: 0 });
    report(1, { requestId: b.rec.id, index: 1, preempted: true });
    expect([b.rec.status, b.rec.started]).toEqual([RequestStatus.PREEMPTED, false]);
    expect(router.stats.all().find((c) => c.cls.name === 'batch')!.preemptions).toBe(1);
    report(1, { requestId: b.rec.id, tokenIds: [6], index: 1 });
    expect([b.rec.status, b.rec.tokens]).toEqual([RequestStatus.RUNNING, [5, 6]]);
  });
});
