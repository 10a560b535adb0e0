// Ranks that fail before they join: after a kill -9 the launcher restarts the replica's
// ranks, but rank 1's new process exits at start-up (a bad host, a broken device) or hangs there.
// The coordinator must fail that re-form attempt (at the exit; after --join-timeout for a hang,
// killing the process) and try again: a transient failure recovers on the next attempt with every
// stream equal to the fault-free run; a permanent one retires the replica after its attempts while
// the other replica serves every stream. At launch, a rank that never joins fails the launch after
// --join-timeout with an error naming it, and nothing is left running.
//
// The failures are real: the workers run under `--node <wrapper>`, a shell script that execs node,
// except for RANK 1 while a flag file exists: it then exits 3 ("exit"), sleeps ("hang") instead, or
// starts node 2 s late ("delay").
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import * as grpc from '@grpc/grpc-js';

import type { NodespeedError } from '../../src/client/index.js';
import type { GenerateResult } from '../../src/engine/index.js';
import { BIN, PY_TINY, launch, processesWhere, root, workerProcesses } from '../serving/helpers.js';
import type { LaunchedCluster } from '../serving/helpers.js';
import { STREAMS, TOKENS, expectFaultFree, failoverLines, faultFree, follow, midStream, requests, startStreams, status, until } from './helpers.js';
import type { Received } from './helpers.js';

let local: GenerateResult[];
const dir = mkdtempSync(join(tmpdir(), 'ns-restart-fails-'));
const wrapper = join(dir, 'node');
const failFlag = join(dir, 'fail-rank-1');
const onceFlag = join(dir, 'once');
const HANG_SECONDS = 613; // a hung start-up: `sleep 613`, found in /proc by that argument

const hungSleeps = () => processesWhere((cmd) => cmd === `sleep\0${HANG_SECONDS}\0`);

beforeAll(async () => {
  writeFileSync(wrapper, `#!/bin/sh
if [ "$RANK" = 1 ] && [ -f '${failFlag}' ]; then
  mode=$(cat '${failFlag}')
  [ -f '${onceFlag}' ] && rm -f '${failFlag}'
  if [ "$mode" = hang ]; then exec sleep ${HANG_SECONDS}; fi
  if [ "$mode" = delay ]; then sleep 2; exec '${process.execPath}' "$@"; fi
  echo "test wrapper: rank 1 exits before it starts node" >&2
  exit 3
fi
exec '${process.execPath}' "$@"
`);
  chmodSync(wrapper, 0o755);
  local = await faultFree(requests());
}, 60_000);

afterAll(() => rmSync(dir, { recursive: true, force: true }));

function environOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/environ`, 'utf8');
  } catch {
    return ''; // exited meanwhile
  }
}

/** A cluster of `workers` CPU workers (tp 2) under the wrapper, flags cleared before and after; nothing may be left running. */
async function onWrapperCluster(workers: number, extra: string[], body: (cluster: LaunchedCluster) => Promise<void>): Promise<void> {
  rmSync(failFlag, { force: true });
  rmSync(onceFlag, { force: true });
  const cluster = await launch(PY_TINY, ['--num_cpu_workers', String(workers), '--tp', '2', '--node', wrapper, '--heartbeat-interval', '0.2',
    '--heartbeat-timeout', '2', '--request-timeout', '60', '--kv-blocks', '256', ...extra]);
  try {
    await body(cluster);
  } finally {
    rmSync(failFlag, { force: true });
    rmSync(onceFlag, { force: true });
    expect(await cluster.stop()).toBe(0);
  }
  expect(workerProcesses()).toEqual([]);
}

const pidOf = async (cluster: LaunchedCluster, rank: number) => (await status(cluster)).workers.find((w) => w.rank === rank)!.pid;

/**
 * Mid-way through 32 seeded streams, rank 1's next start is made to fail (`mode`; `once`: only that
 * start) and rank 1 (TP rank 1 of replica 0) is killed -9. Every stream must equal the fault-free
 * run; `check` then looks at the log and status.
 */
async function killRank1WithFailingRestart(workers: number, mode: 'exit' | 'hang', once: boolean, extra: string[],
  check: (cluster: LaunchedCluster, log: string) => Promise<void>): Promise<void> {
  await onWrapperCluster(workers, extra, async (cluster) => {
    const pid = await pidOf(cluster, 1);
    const streams = startStreams(cluster.client, requests());
    await midStream(streams);
    if (once) writeFileSync(onceFlag, '');
    writeFileSync(failFlag, mode);
    process.kill(pid, 'SIGKILL');
    await streams.all;
    expectFaultFree(streams.got, local);
    await check(cluster, cluster.stderr());
  });
}

describe('ranks that fail before they join (py-tiny, CPU workers, --node wrapper)', () => {
  it('once: the re-form fails at that exit, the next attempt serves, every stream equals the fault-free run', async () => {
    await killRank1WithFailingRestart(2, 'exit', true, [], async (cluster, log) => {
      console.log(failoverLines(log));
      expect(log).toMatch(/coordinator: rank 1 of replica 0 \(generation \d+\) process exited \(code 3\) before it joined/);
      expect(log).toMatch(/failover: replica 0 lost \(rank 1 lost: process exited \(code 3\) before it joined;.*\(attempt 2\)/);
      const after = await status(cluster);
      expect(after.failures).toHaveLength(1);
      const f = after.failures[0]!;
      expect(f.recovery).toBe('respawned');
      expect(f.cause).toMatch(/while re-forming: rank 1 lost: process exited \(code 3\) before it joined/);
      expect(f.replayedRequests).toBeGreaterThanOrEqual(STREAMS);
      console.log(`restart failed once: serving again ${f.recoveryMs} ms after the loss`);
    });
  }, 90_000);

  it('always: replica 0 is retired after its attempts, replica 1 serves every stream with the fault-free tokens', async () => {
    await killRank1WithFailingRestart(4, 'exit', false, [], async (cluster) => {
      expect(cluster.readyLine).toContain('replicas=2');
      await until('replica 0 retired', async () => (await status(cluster)).failures[0]?.recovery === 'retired', 30_000, 100);
      const log = cluster.stderr();
      console.log(failoverLines(log));
      expect(log).toMatch(/failover: replica 0 retired: failed 4 times in a row while re-forming/);
      expect((log.match(/coordinator: rank 1 of replica 0 \(generation \d+\) process exited \(code 3\) before it joined/g) ?? []).length).toBe(3);
      const after = await status(cluster);
      expect(after.replicas[0]!.state).toBe('lost');
      expect(after.replicas[1]!.state).toBe('serving');
      expect(after.failures.map((f) => f.recovery)).toEqual(['retired']);
      // Nothing of replica 0 is left running: its ranks show lost, only replica 1's two workers run.
      expect(after.workers.filter((w) => w.replica === 0).map((w) => w.state)).toEqual(['lost', 'lost']);
      // (each worker shows twice: the launcher's shell and the node the wrapper execs)
      await until('replica 0\'s processes gone', () => workerProcesses().every((p) => !/(^|\0)RANK=[01]\0/.test(environOf(p))), 10_000, 50);
    });
  }, 90_000);

  it('hang once: the restarted rank is killed after --join-timeout, the next attempt serves, every stream equals the fault-free run', async () => {
    await killRank1WithFailingRestart(2, 'hang', true, ['--join-timeout', '3'], async (cluster, log) => {
      console.log(failoverLines(log));
      expect(log).toMatch(/coordinator: rank 1 of replica 0 \(generation \d+\) did not join within 3 s of its restart \(--join-timeout\)/);
      const f = (await status(cluster)).failures[0]!;
      expect(f.recovery).toBe('respawned');
      expect(f.recoveryMs).toBeGreaterThanOrEqual(3000);
      expect(hungSleeps(), 'the hung start-up was killed').toEqual([]);
      console.log(`restart hung once: serving again ${f.recoveryMs} ms after the loss`);
    });
  }, 90_000);

  it('at launch: a rank that never joins fails the launch after --join-timeout, naming it, and nothing is left running', () => {
    rmSync(onceFlag, { force: true });
    writeFileSync(failFlag, 'hang');
    try {
      const t0 = Date.now();
      const r = spawnSync(process.execPath, [BIN, 'launch', '--model', PY_TINY, '--port', '0', '--http-port', '0', '--bind', '127.0.0.1', '--no-progress',
        '--num_cpu_workers', '2', '--tp', '2', '--node', wrapper, '--join-timeout', '2'], { cwd: root, encoding: 'utf8', timeout: 60_000 });
      expect(r.status, r.stderr).toBe(1);
      expect(r.stdout).not.toContain('nodespeed ready');
      expect(r.stderr).toMatch(/rank 1 on localhost did not join the coordinator at \S+ within 2 s \(--join-timeout\)/);
      expect(Date.now() - t0).toBeLessThan(30_000);
    } finally {
      rmSync(failFlag, { force: true });
    }
    expect(hungSleeps()).toEqual([]);
    expect(workerProcesses()).toEqual([]);
  }, 90_000);

  it('a second replica fails while the first one\'s restarted ranks join: each replica re-forms in one generation of its own', async () => {
    // Replica 0's rank 0 joins its re-form at once, its rank 1 starts 2 s late; meanwhile replica 1
    // fails and the membership generation moves on. Both ranks of replica 0 must still get the
    // same generation (their communicator rendezvous is per generation) and the replica must serve.
    // Both replicas are killed here, so a stream moved from replica 0 to replica 1 lives through two
    // losses, which the default --quarantine-after 2 treats as a poison request (attacks.test.ts tests
    // that); this test is about generations, so the streams may be replayed once more.
    await onWrapperCluster(4, ['--quarantine-after', '3'], async (cluster) => {
      const before = await status(cluster);
      const pid = (rank: number, st = before) => st.workers.find((w) => w.rank === rank)!.pid;
      const streams = startStreams(cluster.client, requests());
      await midStream(streams);
      writeFileSync(onceFlag, '');
      writeFileSync(failFlag, 'delay');
      process.kill(pid(1), 'SIGKILL');
      // Replica 0's rank 0 has joined its new generation (a new process, known to the coordinator).
      await until('replica 0 rank 0 rejoined', async () => ![0, pid(0)].includes(pid(0, await status(cluster))), 20_000, 20);
      process.kill(pid(3), 'SIGKILL');
      await streams.all;
      expectFaultFree(streams.got, local);
      await until('both replicas respawned', async () => (await status(cluster)).failures.filter((f) => f.recovery === 'respawned').length === 2, 30_000, 100);
      const log = cluster.stderr();
      console.log(failoverLines(log));
      const st = await status(cluster);
      expect(st.replicas.map((r) => r.state)).toEqual(['serving', 'serving']);
      // Each record names the generation its replica serves in: two different ones.
      expect(new Set(st.failures.map((f) => f.generation)).size).toBe(2);
    });
  }, 90_000);

  it('streams cancelled and requests past their deadline while the replica is down are not replayed; the rest complete, KV all free', async () => {
    await onWrapperCluster(2, [], async (cluster) => {
      const reqs = requests();
      const cancel = reqs.map(() => new AbortController());
      const got: Received[] = reqs.map(() => ({ tokenIds: [], arrivals: [] }));
      const ends = reqs.map((r, i) => follow(cluster.client, r, got[i]!, { signal: cancel[i]!.signal }).then(() => null, (e: unknown) => e as NodespeedError));
      await until('a quarter of the tokens', () => got.reduce((n, g) => n + g.tokenIds.length, 0) >= STREAMS * TOKENS / 4, 30_000, 5);
      writeFileSync(onceFlag, '');
      writeFileSync(failFlag, 'delay'); // the replica stays down ~2 s
      process.kill(await pidOf(cluster, 1), 'SIGKILL');
      await until('the replica down', async () => (await status(cluster)).replicas[0]!.state !== 'serving', 10_000, 10);
      for (const c of cancel.slice(0, 8)) c.abort();
      const late = await Promise.all(reqs.slice(0, 4).map((r) => follow(cluster.client, r, { tokenIds: [], arrivals: [] }, { timeoutMs: 300 })
        .then(() => null, (e: unknown) => e as NodespeedError)));
      const errors = await Promise.all(ends);
      expect(errors.slice(0, 8).map((e) => e?.code)).toEqual(Array(8).fill(grpc.status.CANCELLED));
      expect(late.map((e) => e?.code)).toEqual(Array(4).fill(grpc.status.DEADLINE_EXCEEDED));
      expect(errors.slice(8)).toEqual(Array(STREAMS - 8).fill(null));
      got.slice(8).forEach((g, i) => expect(g.tokenIds, `stream ${i + 8}`).toEqual(local[i + 8]!.tokenIds));
      // Nothing left: no request pending or running, every KV block free, the replica serving.
      await until('idle', async () => {
        const st = await status(cluster);
        const r = st.replicas[0]!;
        return st.activeRequests === 0 && st.pendingRequests === 0 && r.state === 'serving' && r.requests === 0 && r.kvBlocksFree === r.kvBlocksTotal;
      }, 20_000, 50);
      expect((await status(cluster)).failures[0]!.recovery).toBe('respawned');
    });
  }, 90_000);
});
