// More faults, each with 32 seeded streams of 64 tokens compared with the fault-free run:
//   - two replicas lose a worker at the same moment while a third keeps serving;
//   - the replica driver is killed while long prompts are still being prefilled (a spare replaces it);
//   - both ranks of a replica die at once with a spare present: the re-form with the spare fails
//     (its survivor is dead too) and falls back to respawning the replica;
//   - a collective wedged on a hung peer: the step watchdog (--step-timeout) of the waiting worker
//     reports it while its heartbeats still flow (the heartbeat timeout is set far away).
import { beforeAll, describe, expect, it } from 'vitest';

import type { GenerateResult } from '../../src/engine/index.js';
import { PY_TINY, launch, workerProcesses } from '../serving/helpers.js';
import {
  STREAMS, TOKENS, alive, expectFaultFree, failoverLines, faultFree, firstTokenAfter, midStream, replicasMidStream, requests, sleep, startStreams,
  status, tokensBetween, until,
} from './helpers.js';
import type { Status } from './helpers.js';

const PROMPT = 384; // tokens per prompt in the prefill test (+64 generated stays under py-tiny's 512)
// Tokens per stream where three fast tp=1 replicas must still be mid-stream at the kill: with tp 1
// planning its steps ahead, 128 is too few (a replica finishes its 11 streams between two of the
// heartbeats that report its token count).
const LONG = 256;

let local: GenerateResult[];
let localLong: GenerateResult[];
let localLongGen: GenerateResult[];

beforeAll(async () => {
  local = await faultFree(requests());
  localLong = await faultFree(requests(PROMPT));
  localLongGen = await faultFree(requests(0, LONG));
}, 120_000);

const pidOf = (s: Status, rank: number) => s.workers.find((w) => w.rank === rank)!.pid;

describe('failover: simultaneous faults, faults during prefill, wedged steps (py-tiny, CPU workers)', () => {
  it('kill -9 of two workers of different replicas at once: both re-form while the third replica keeps serving', async () => {
    // --quarantine-after 3: the two losses are seen one after the other, so a stream replayed off the first
    // lost replica can land on the second before its loss is seen and go through both (2 losses would
    // quarantine it; that rule has its own test in test/security/attacks.test.ts).
    const cluster = await launch(PY_TINY, ['--num_cpu_workers', '3', '--heartbeat-interval', '0.2', '--heartbeat-timeout', '2',
      '--request-timeout', '30', '--kv-blocks', '256', '--quarantine-after', '3']);
    try {
      expect(cluster.readyLine).toContain('replicas=3');
      const before = await status(cluster);
      const victims = [pidOf(before, 0), pidOf(before, 1)];
      const s = startStreams(cluster.client, requests(0, LONG));
      const killedAt = await replicasMidStream(cluster, [0, 1], (STREAMS / 3) * (LONG / 8));
      for (const pid of victims) process.kill(pid, 'SIGKILL');
      await s.all;
      expectFaultFree(s.got, localLongGen);
      let st = await status(cluster);
      await until('both replicas recovered', async () => (st = await status(cluster)).failures.filter((f) => f.recovery === 'respawned').length === 2);
      const log = cluster.stderr();
      console.log(failoverLines(log));
      expect(st.failures.map((f) => [f.replica, f.rank]).sort()).toEqual([[0, 0], [1, 1]]);
      expect(st.failures.map((f) => f.pid).sort()).toEqual([...victims].sort());
      expect(st.failover).toMatchObject({ failures: 2, recoveries: 2 });
      for (const f of st.failures) expect(f.replayedRequests, `replica ${f.replica} was mid-stream`).toBeGreaterThan(0);
      expect(log).not.toMatch(/failover: replica 2 lost/);
      expect(pidOf(st, 2)).toBe(pidOf(before, 2));
      const slowest = Math.max(...st.failures.map((f) => f.recoveryMs));
      const during = tokensBetween(s.got, killedAt + 50, killedAt + Math.min(...st.failures.map((f) => f.recoveryMs)));
      console.log(`two replicas lost at once: recovered in ${st.failures.map((f) => `${f.recoveryMs} ms (replica ${f.replica})`).join(', ')}; ` +
        `${during} tokens delivered by replica 2 while both were down; first token after both recovered ${firstTokenAfter(s.got, killedAt + slowest) - killedAt} ms after the kill`);
      expect(during).toBeGreaterThan(0);
    } finally {
      expect(await cluster.stop()).toBe(0);
    }
    expect(workerProcesses()).toEqual([]);
  }, 90_000);

  it(`kill -9 of the driver while ${PROMPT}-token prompts are prefilling: a spare becomes the driver, every stream completes`, async () => {
    const cluster = await launch(PY_TINY, ['--num_cpu_workers', '2', '--tp', '2', '--spares', '1', '--heartbeat-interval', '0.2',
      '--heartbeat-timeout', '2', '--request-timeout', '60', '--kv-blocks', '1024']);
    try {
      const before = await status(cluster);
      const pid = pidOf(before, 0);
      const reqs = requests(PROMPT);
      const s = startStreams(cluster.client, reqs);
      // Prefill is running: the replica has admitted work and some streams have no token yet.
      await until('prefill under way', async () => (await status(cluster)).replicas[0]!.running > 0, 30_000, 5);
      await sleep(100);
      const atKill = s.got.map((g) => g.tokenIds.length);
      const killedAt = Date.now();
      process.kill(pid, 'SIGKILL');
      await s.all;
      expect(atKill.filter((n) => n === 0).length, `tokens per stream at the kill: ${atKill.join(',')}`).toBeGreaterThan(0);
      expectFaultFree(s.got, localLong);
      let st = await status(cluster);
      await until('recovery', async () => (st = await status(cluster)).failures[0]?.recovery === 'spare');
      console.log(failoverLines(cluster.stderr()));
      const f = st.failures[0]!;
      expect(f).toMatchObject({ rank: 0, pid, recovery: 'spare', replayedRequests: STREAMS });
      expect(pidOf(st, 1)).toBe(pidOf(before, 1)); // the follower re-formed in place
      console.log(`driver killed during prefill (${atKill.filter((n) => n === 0).length} of ${STREAMS} streams had no token yet, ` +
        `${atKill.reduce((a, b) => a + b, 0)} tokens streamed): spare serving ${f.recoveryMs} ms after the loss, ` +
        `first token after recovery ${firstTokenAfter(s.got, killedAt + f.recoveryMs) - killedAt} ms after the kill`);
    } finally {
      expect(await cluster.stop()).toBe(0);
    }
    expect(workerProcesses()).toEqual([]);
  }, 120_000);

  it('kill -9 of both ranks of a replica with a spare: the re-form falls back to a respawn, every stream completes', async () => {
    const cluster = await launch(PY_TINY, ['--num_cpu_workers', '2', '--tp', '2', '--spares', '1', '--heartbeat-interval', '0.2',
      '--heartbeat-timeout', '2', '--request-timeout', '60', '--kv-blocks', '256']);
    try {
      const before = await status(cluster);
      const victims = [pidOf(before, 0), pidOf(before, 1)];
      const s = startStreams(cluster.client, requests());
      await midStream(s);
      for (const pid of victims) process.kill(pid, 'SIGKILL');
      await s.all;
      expectFaultFree(s.got, local);
      let st = await status(cluster);
      await until('recovery and a full spare pool', async () => {
        st = await status(cluster);
        return st.replicas[0]!.state === 'serving' && st.failures[0]?.recoveryMs > 0 && st.spares === 1;
      });
      const log = cluster.stderr();
      console.log(failoverLines(log));
      // One incident; recovered by the spare if the second loss came first, else by the respawn fallback.
      expect(st.failures).toHaveLength(1);
      const f = st.failures[0]!;
      expect(['spare', 'respawned']).toContain(f.recovery);
      expect(victims).toContain(f.pid);
      expect(st.workers.map((w) => w.pid).filter((p) => victims.includes(p))).toEqual([]);
      for (const pid of victims) expect(alive(pid)).toBe(false);
      console.log(`both ranks of the replica killed with a spare present: ${f.recovery} ${f.recoveryMs} ms after the loss (${f.cause})`);
    } finally {
      expect(await cluster.stop()).toBe(0);
    }
    expect(workerProcesses()).toEqual([]);
  }, 90_000);

  it('a collective wedged on a hung peer: the step watchdog reports it before any heartbeat timeout, and the replica recovers', async () => {
    // The heartbeat timeout (20 s) is far beyond the test's reach: only the watchdog can end the wedge.
    const cluster = await launch(PY_TINY, ['--num_cpu_workers', '2', '--tp', '2', '--heartbeat-interval', '0.2', '--heartbeat-timeout', '20',
      '--step-timeout', '1', '--request-timeout', '60', '--kv-blocks', '256']);
    let pid = 0;
    try {
      const before = await status(cluster);
      pid = pidOf(before, 1);
      const s = startStreams(cluster.client, requests());
      const stoppedAt = await midStream(s);
      process.kill(pid, 'SIGSTOP');
      await s.all;
      expectFaultFree(s.got, local);
      let st = await status(cluster);
      await until('recovery', async () => (st = await status(cluster)).failures[0]?.recovery === 'respawned');
      const log = cluster.stderr();
      console.log(failoverLines(log));
      const f = st.failures[0]!;
      // Rank 0's all-reduce waited on the stopped rank 1: rank 0's watchdog fired.
      expect(f.cause).toMatch(/step watchdog: a step has been running for \d+ ms \(--step-timeout 1 s\)/);
      expect(f.rank).toBe(0);
      expect(log).not.toMatch(/no heartbeat for/);
      const detectedMs = f.atUnixMs - stoppedAt;
      expect(detectedMs).toBeLessThan(15_000);
      expect(alive(pid), 'the hung process was killed by the respawn').toBe(false);
      console.log(`wedged collective: reported by the step watchdog ${detectedMs} ms after the SIGSTOP, serving again ${f.recoveryMs} ms later; ` +
        `${STREAMS * TOKENS} tokens, all equal to the fault-free run`);
    } finally {
      if (pid && alive(pid)) process.kill(pid, 'SIGCONT');
      expect(await cluster.stop()).toBe(0);
    }
    expect(workerProcesses()).toEqual([]);
  }, 90_000);
});
