// Failover by respawn: kill -9 (or SIGSTOP) a rank of a tp=2 or pp=2 replica while 32
// seeded streams of 64 tokens are mid-way. The coordinator re-forms the replica (new generation, ranks restarted by the
// launcher, fresh rendezvous and reload) and replays every in-flight request from prompt + tokens
// already streamed: each stream completes with exactly the tokens of a fault-free run (the
// single-process engine), with no repeat and no gap, and the recovery time is printed.
import { describe, expect, it, beforeAll } from 'vitest';

import type { GenerateResult } from '../../src/engine/index.js';
import type { ClusterStatusMsg } from '../../src/client/index.js';
import type { FailoverStatusMsg } from '../../src/coordinator/failover.js';
import { PY_TINY, launch, workerProcesses } from '../serving/helpers.js';
import { STREAMS, TOKENS, expectFaultFree, faultFree, midStream, requests, signalMidStream, startStreams } from './helpers.js';

let local: GenerateResult[];

beforeAll(async () => {
  local = await faultFree(requests());
}, 60_000);

describe('failover by respawn (py-tiny, 2 CPU workers per replica)', () => {
  const faults = [
    { rank: 1, what: 'kill -9 of a TP rank (rank 1)', layout: ['--tp', '2'], signal: 'SIGKILL', timeout: '2' },
    { rank: 0, what: 'kill -9 of the replica driver (rank 0)', layout: ['--tp', '2'], signal: 'SIGKILL', timeout: '2' },
    { rank: 1, what: 'kill -9 of PP stage 1 (rank 1, pp=2)', layout: ['--pp', '2'], signal: 'SIGKILL', timeout: '2' },
    // A hang: the stream stays open and the peer's collective just waits; only the heartbeat
    // timeout can tell. The stopped process is killed by the launcher, never back in any generation.
    { rank: 1, what: 'SIGSTOP (hang) of a TP rank (rank 1)', layout: ['--tp', '2'], signal: 'SIGSTOP', timeout: '1' },
  ] as const;
  for (const victim of faults) {
    it(`${victim.what} mid-stream: every stream completes with the fault-free tokens`, async () => {
      const cluster = await launch(PY_TINY, ['--num_cpu_workers', '2', ...victim.layout, '--heartbeat-interval', '0.2',
        '--heartbeat-timeout', victim.timeout, '--request-timeout', '30', '--kv-blocks', '256']);
      let pid = 0;
      try {
        const before = await cluster.client.clusterStatus();
        pid = before.workers.find((w) => w.rank === victim.rank)!.pid;
        // Mid-stream: a quarter of all tokens delivered, none of the streams finished.
        const streams = startStreams(cluster.client, requests());
        const { got } = streams;
        const { at: killedAt, counts: atKill } = await signalMidStream(streams, pid, victim.signal);
        await streams.all;
        expect(atKill.some((n) => n === TOKENS), 'every stream was still running at the kill').toBe(false);
        expectFaultFree(got, local);
        // The replica really was re-formed: a new generation, new worker processes.
        const after = await cluster.client.clusterStatus() as ClusterStatusMsg & FailoverStatusMsg;
        expect(BigInt(after.generation)).toBeGreaterThan(BigInt(before.generation));
        expect(after.workers.map((w) => w.pid)).not.toContain(pid);
        expect(() => process.kill(pid, 0), 'the lost process is gone').toThrow();
        const log = cluster.stderr();
        expect(log).toMatch(/failover: replica 0 lost .*requests re-queued/);
        expect(log).toContain('launcher: restarted ranks 0, 1 of replica 0');
        const m = /failover: replica 0 serving again in generation \d+, (\d+) ms after rank (\d+) was lost/.exec(log);
        expect(m, log).not.toBeNull();
        // ClusterStatus: the failure (who, when, cause, recovery, time to recover) and the counters.
        console.log(log.split('\n').filter((l) => /lost|failover|launcher: restarted/.test(l)).join('\n'));
        expect(after.failures).toHaveLength(1);
        const f = after.failures[0]!;
        console.log(`failure as ClusterStatus reports it: ${JSON.stringify(f)}`);
        // Who: the victim (its stream closed, it missed heartbeats, or its exit was seen), even when
        // a survivor's collective failed on it first (the coordinator waits briefly for the
        // victim's own loss before it believes a survivor's report).
        expect(f.rank, f.cause).toBe(victim.rank);
        expect(f.pid).toBe(pid);
        if (victim.signal === 'SIGSTOP') expect(f.cause).toMatch(/no heartbeat for \d+ ms/);
        expect(f).toMatchObject({ replica: 0, recovery: 'respawned', recoveryMs: Number(m![1]), generation: after.generation, replayedRequests: STREAMS });
        expect(f.atUnixMs).toBeGreaterThanOrEqual(killedAt);
        expect(f.replayedTokens).toBeGreaterThanOrEqual(atKill.reduce((a, b) => a + b, 0));
        expect(f.replayedTokens).toBeLessThan(STREAMS * TOKENS);
        expect(after.failover).toEqual({ failures: 1, recoveries: 1, replayedRequests: STREAMS, replayedTokens: f.replayedTokens, quarantinedRequests: 0 });
        // The first token any client got after the kill and after the replica serves again.
        const resumed = Math.min(...got.flatMap((g) => g.arrivals.filter((t) => t > killedAt + Number(m![1]))));
        console.log(`failover (${victim.what}): replica serving again ${m![1]} ms after the loss; ` +
          `first token after recovery ${resumed - killedAt} ms after the kill; ${atKill.reduce((a, b) => a + b, 0)} of ${STREAMS * TOKENS} tokens streamed before it`);
      } finally {
        if (victim.signal === 'SIGSTOP' && pid) try { process.kill(pid, 'SIGCONT'); } catch { /* killed by the launcher, as it should be */ }
        expect(await cluster.stop()).toBe(0);
      }
      expect(workerProcesses()).toEqual([]);
    }, 60_000);
  }

  it('2 replicas: the healthy replica keeps serving, takes the lost replica\'s streams, and every stream equals the fault-free run', async () => {
    const cluster = await launch(PY_TINY, ['--num_cpu_workers', '4', '--tp', '2', '--heartbeat-interval', '0.2', '--heartbeat-timeout', '2',
      '--request-timeout', '30', '--kv-blocks', '256']);
    try {
      expect(cluster.readyLine).toContain('replicas=2');
      const before = await cluster.client.clusterStatus();
      const pid = before.workers.find((w) => w.rank === 1)!.pid; // TP rank 1 of replica 0
      const streams = startStreams(cluster.client, requests());
      const { got } = streams;
      const killedAt = await midStream(streams);
      process.kill(pid, 'SIGKILL');
      await streams.all;
      expectFaultFree(got, local);
      // The streams may all finish on replica 1 before replica 0 is back: wait for its recovery.
      let after = await cluster.client.clusterStatus() as ClusterStatusMsg & FailoverStatusMsg;
      while (after.failures[0]?.recovery !== 'respawned' && Date.now() - killedAt < 20_000) {
        await new Promise((r) => setTimeout(r, 100));
        after = await cluster.client.clusterStatus() as ClusterStatusMsg & FailoverStatusMsg;
      }
      const log = cluster.stderr();
      expect(log).not.toMatch(/failover: replica 1 lost/);
      expect(after.failures.map((f) => f.replica)).toEqual([0]);
      const f = after.failures[0]!;
      expect(f.recovery).toBe('respawned');
      // Replica 1 kept its workers (same processes) and served during replica 0's recovery.
      const pids1 = (s: ClusterStatusMsg) => s.workers.filter((w) => w.replica === 1).map((w) => w.pid);
      expect(pids1(after)).toEqual(pids1(before));
      const during = got.flatMap((g) => g.arrivals.filter((t) => t > killedAt + 50 && t < killedAt + f.recoveryMs)).length;
      console.log(`failover with 2 replicas: replica 0 serving again ${f.recoveryMs} ms after the loss; ${f.replayedRequests} streams moved, ` +
        `${during} tokens delivered by replica 1 during the recovery`);
      expect(during).toBeGreaterThan(0);
    } finally {
      expect(await cluster.stop()).toBe(0);
    }
    expect(workerProcesses()).toEqual([]);
  }, 60_000);
});
