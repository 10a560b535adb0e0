// `nodespeed status` prints each failure on one line whatever its state: recovered (with the ms it
// took), still re-forming (with the ms so far), or retired. The recovered case on a real launch is
// in visibility.test.ts; these are the states a healthy CI run does not reach.
import { describe, expect, it } from 'vitest';

import { formatFailure, formatStatus } from '../../src/cli/status.js';
import type { ClusterStatusMsg, FailureStatusMsg } from '../../src/client/index.js';

const base: FailureStatusMsg = {
  rank: 3, host: 'gpu-b', pid: 4242, replica: 1, cause: 'rank 3 lost: no heartbeat for 5003 ms', atUnixMs: Date.UTC(2026, 10, 23, 13, 0, 0),
  recovery: 'respawned', recoveryMs: 8123, generation: '4', replayedRequests: 12, replayedTokens: 345,
};

describe('nodespeed status: failures', () => {
  it('one line per failure state: recovered, re-forming, retired', () => {
    expect(formatFailure({ ...base, recovery: 'spare', recoveryMs: 912 })).toContain('-> spare in 912 ms (generation 4)');
    expect(formatFailure({ ...base, recovery: 'replacing', recoveryMs: 0 }, base.atUnixMs + 300)).toContain('-> replacing (300 ms so far)');
    expect(formatFailure(base)).toBe('2026-11-23T13:00:00.000Z rank 3 @gpu-b pid 4242 (replica 1): rank 3 lost: no heartbeat for 5003 ms ' +
      '-> respawned in 8123 ms (generation 4); replayed 12 requests, 345 tokens');
    expect(formatFailure({ ...base, recovery: 'respawning', recoveryMs: 0 }, base.atUnixMs + 2500))
      .toContain('-> respawning (2500 ms so far) (generation 4)');
    expect(formatFailure({ ...base, recovery: 'retired', recoveryMs: 0 })).toContain('-> retired (generation 4)');
    expect(formatFailure({ ...base, recovery: 'shrinking', recoveryMs: 0 }, base.atUnixMs + 700)).toContain('-> shrinking (700 ms so far) (generation 4)');
    expect(formatFailure({ ...base, recovery: 'shrunk', recoveryMs: 640 })).toContain('-> shrunk in 640 ms (generation 4)');
  });

  it('the status text lists every failure, oldest first, under the counters', () => {
    const s: ClusterStatusMsg = {
      model: 'm', tp: 1, pp: 1, replicaCount: 2, generation: '5', replicas: [], workers: [], hosts: ['a'], pendingRequests: 0,
      activeRequests: 0, state: 'serving', failures: [base, { ...base, rank: 0, replica: 0, atUnixMs: base.atUnixMs + 60_000, generation: '5' }],
      failover: { failures: 2, recoveries: 2, replayedRequests: 24, replayedTokens: 690, quarantinedRequests: 0 }, spares: 1,
      quarantined: [], groups: [], classes: [],
    };
    const lines = formatStatus(s).split('\n');
    const head = lines.findIndex((l) => l === 'failover: 2 failure(s), 2 recovered, 24 request(s) replayed (690 tokens already streamed), 1 spare(s) waiting');
    expect(head).toBeGreaterThan(0);
    expect(lines[head + 1]).toBe('failures (oldest first):');
    expect(lines[head + 2]).toBe(`  ${formatFailure(s.failures[0]!)}`);
    expect(lines[head + 3]).toBe(`  ${formatFailure(s.failures[1]!)}`);
  });

  it('the replicas table shows each replica\'s own layout and ranks (a shrunk one is smaller than the job\'s)', () => {
    const replica = { id: 0, state: 'serving', running: 2, queued: 0, kvBlocksTotal: 256, kvBlocksFree: 200, kvBlockSize: 16, steps: '40',
      generatedTokens: '80', recentStepBatch: [], maxStepBatch: 2, ranks: [0, 1], maxInFlight: 1, requests: 2, tp: 2, pp: 1, group: 'default',
      preemptions: 0, stepMs: 0, precision: { weights: 'fp8', activations: 'fp8', kvCache: 'fp8' } };
    const s: ClusterStatusMsg = {
      model: 'm', tp: 2, pp: 1, replicaCount: 2, generation: '3', workers: [], hosts: ['a'], pendingRequests: 0, activeRequests: 2, state: 'serving',
      replicas: [replica, { ...replica, id: 1, ranks: [2], tp: 1, kvWindowBlocksTotal: 24, kvWindowBlocksFree: 21 }], failures: [], failover: { failures: 1, recoveries: 1, replayedRequests: 0, replayedTokens: 0, quarantinedRequests: 0 },
      spares: 0, quarantined: [], groups: [{ name: 'default', device: 'cuda', precision: { weights: 'fp8', activations: 'fp8', kvCache: 'fp8' }, tp: 2, pp: 1, threads: 0, replicas: [0, 1], maxSeqs: 256 }], classes: [],
    };
    const lines = formatStatus(s).split('\n');
    const head = lines.findIndex((l) => l.startsWith('REPLICA'));
    // PRECISION: weights / matrix-product inputs / KV cache (docs/QUANTIZATION.md)
    expect(lines[head]).toMatch(/^REPLICA +GROUP +STATE +LAYOUT +PRECISION +RANKS +RUNNING/);
    expect(lines[head + 1]).toMatch(/^0 +default +serving +tp 2 x pp 1 +fp8\/fp8\/fp8 +0,1 +2 /);
    expect(lines[head + 2]).toMatch(/^1 +default +serving +tp 1 x pp 1 +fp8\/fp8\/fp8 +2 +2 /);
    // KV FREE: the main pool's free/total, and a windowed layers' own pool after it where the model keeps one.
    expect(lines[head + 1]).toMatch(/ 200\/256 /);
    expect(lines[head + 1]).not.toMatch(/\+ \d+\/\d+/);
    expect(lines[head + 2]).toMatch(/ 200\/256 \+ 21\/24 /);
  });
});
