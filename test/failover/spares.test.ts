// Failover with a spare (recovery (a)): `--spares 1` keeps one extra worker joined with no
// weights loaded. When a rank of the tp=2 replica is lost mid-stream, the spare takes that rank, the
// surviving rank keeps its process and shard and re-forms in place (new generation, new
// communicators), every in-flight stream is replayed and ends with exactly the fault-free tokens,
// and the lost rank's slot is started again as a spare. Also: a hung worker (SIGSTOP) declared
// dead and resumed (SIGCONT) is not let back into any generation.
import { beforeAll, describe, expect, it } from 'vitest';

import type { GenerateResult } from '../../src/engine/index.js';
import { PY_TINY, launch, workerProcesses } from '../serving/helpers.js';
import {
  STREAMS, TOKENS, alive, expectFaultFree, failoverLines, faultFree, firstTokenAfter, midStream, requests, startStreams, status, until,
} from './helpers.js';
import type { Status } from './helpers.js';

let local: GenerateResult[];

beforeAll(async () => {
  local = await faultFree(requests());
}, 60_000);

const BASE = ['--num_cpu_workers', '2', '--heartbeat-interval', '0.2', '--request-timeout', '30', '--kv-blocks', '256'];

/** kill -9 of TP rank 1 mid-stream; returns the failure record and the status before and after. */
async function killRank1(args: string[]): Promise<{ f: Status['failures'][number]; before: Status; after: Status; log: string; firstAfterMs: number }> {
  const cluster = await launch(PY_TINY, [...BASE, '--heartbeat-timeout', '2', ...args]);
  try {
    const before = await status(cluster);
    const pid = before.workers.find((w) => w.rank === 1)!.pid;
    const s = startStreams(cluster.client, requests());
    // An eighth of the way in: each test counts on every one of the 32 streams being unfinished when
    // the kill lands (replayedRequests = STREAMS), and a starved test process receives tokens late.
    const killedAt = await midStream(s, 1 / 8);
    process.kill(pid, 'SIGKILL');
    await s.all;
    expectFaultFree(s.got, local);
    // The streams can end before the top-up: wait until the failure is closed and, with a spare,
    // the pool is full again.
    const want = args.includes('--spares') ? 'spare' : 'respawned';
    let after = await status(cluster);
    await until('recovery and top-up', async () => {
      after = await status(cluster);
      return after.failures[0]?.recovery === want && after.spares === before.spares;
    }).catch((err: Error) => {
      throw new Error(`${err.message}\nstatus: ${JSON.stringify({ failures: after.failures, spares: after.spares })}\n${cluster.stderr()}`);
    });
    const log = cluster.stderr();
    return { f: after.failures[0]!, before, after, log, firstAfterMs: firstTokenAfter(s.got, killedAt + after.failures[0]!.recoveryMs) - killedAt };
  } finally {
    expect(await cluster.stop()).toBe(0);
    expect(workerProcesses()).toEqual([]);
  }
}

describe('failover with a spare (py-tiny, 2 CPU workers + 1 spare)', () => {
  it('kill -9 of a TP rank: the spare takes it, the survivor re-forms in place, faster than a respawn, and the pool is topped up', async () => {
    const spare = await killRank1(['--tp', '2', '--spares', '1']);
    console.log(failoverLines(spare.log));
    console.log(`failure as ClusterStatus reports it (spare): ${JSON.stringify(spare.f)}`);
    expect(spare.before.spares).toBe(1);
    expect(spare.f).toMatchObject({ rank: 1, replica: 0, recovery: 'spare', replayedRequests: STREAMS, generation: spare.after.generation });
    expect(spare.f.pid).toBe(spare.before.workers.find((w) => w.rank === 1)!.pid);
    expect(spare.after.failover).toMatchObject({ failures: 1, recoveries: 1, replayedRequests: STREAMS });
    // The survivor kept its process (re-formed in place); rank 1 is a different process now (the spare).
    const pid = (s: Status, r: number) => s.workers.find((w) => w.rank === r)!.pid;
    expect(pid(spare.after, 0)).toBe(pid(spare.before, 0));
    expect(pid(spare.after, 1)).not.toBe(pid(spare.before, 1));
    expect(spare.log).toMatch(/coordinator: the spare in slot 2 \(.* pid \d+\) takes rank 1 of replica 0; survivors 0 re-form in place in generation 2/);
    expect(spare.log).toMatch(/launcher: restarted slot 1 as a spare/);
    expect(spare.log).not.toContain('launcher: restarted ranks');
    // The same fault without a spare: the replica is respawned (every rank restarted and reloaded).
    const respawn = await killRank1(['--tp', '2']);
    expect(respawn.before.spares).toBe(0);
    expect(respawn.f.recovery).toBe('respawned');
    console.log(`failover recovery, kill -9 of rank 1 (tp=2, py-tiny, CPU): with a spare ${spare.f.recoveryMs} ms ` +
      `(first token ${spare.firstAfterMs} ms after the kill), by respawn ${respawn.f.recoveryMs} ms (first token ${respawn.firstAfterMs} ms after the kill)`);
    expect(spare.f.recoveryMs).toBeLessThan(respawn.f.recoveryMs);
  }, 120_000);

  it('kill -9 of pipeline stage 1 (pp=2): the spare loads stage 1\'s layers, stage 0 re-forms in place', async () => {
    const r = await killRank1(['--pp', '2', '--spares', '1']);
    console.log(failoverLines(r.log));
    expect(r.f).toMatchObject({ rank: 1, replica: 0, recovery: 'spare', replayedRequests: STREAMS });
    const w = (s: Status, rank: number) => s.workers.find((x) => x.rank === rank)!;
    expect(w(r.after, 0).pid).toBe(w(r.before, 0).pid);
    expect(w(r.after, 1)).toMatchObject({ stage: 1, layerStart: w(r.before, 1).layerStart, layerEnd: w(r.before, 1).layerEnd, state: 'serving' });
    expect(w(r.after, 1).pid).not.toBe(w(r.before, 1).pid);
    console.log(`pp=2, stage 1 killed: the spare serving ${r.f.recoveryMs} ms after the loss (first token ${r.firstAfterMs} ms after the kill)`);
  }, 60_000);

  it('a spare that dies is started again, and a spare that hangs is dropped, killed and started again', async () => {
    const cluster = await launch(PY_TINY, [...BASE, '--tp', '2', '--heartbeat-timeout', '1', '--spares', '1']);
    try {
      // The spare's pid, as it joined (the newest join of slot 2).
      const sparePid = () => Number([...cluster.stderr().matchAll(/spare joined in slot 2 from .* \(pid (\d+)\)/g)].at(-1)?.[1] ?? 0);
      let st = await status(cluster);
      const first = sparePid();
      expect(alive(first), 'the spare process').toBe(true);
      process.kill(first, 'SIGKILL');
      await until('a new spare', async () => (st = await status(cluster)).spares === 1 && sparePid() !== first, 20_000);
      const second = sparePid();
      process.kill(second, 'SIGSTOP');
      await until('the hung spare dropped', async () => (st = await status(cluster)).spares === 0, 20_000);
      await until('a third spare', async () => (st = await status(cluster)).spares === 1 && sparePid() !== second, 20_000);
      expect(alive(second), 'the hung spare was killed').toBe(false);
      const log = cluster.stderr();
      console.log(failoverLines(log));
      expect(log).toMatch(new RegExp(`spare in slot 2 \\(pid ${first}\\) process exited \\(SIGKILL\\)|spare in slot 2 gone`));
      expect(log).toMatch(new RegExp(`spare in slot 2 \\(pid ${second}\\) dropped: no heartbeat for \\d+ ms`));
      expect(log.match(/launcher: restarted slot 2 as a spare/g)).toHaveLength(2);
      // The serving replica was never touched.
      expect(st.failures).toEqual([]);
      expect(st.replicas[0]!.state).toBe('serving');
    } finally {
      expect(await cluster.stop()).toBe(0);
    }
    expect(workerProcesses()).toEqual([]);
  }, 90_000);

  it('SIGSTOP of a TP rank, SIGCONT once it was declared dead: the spare serves in its place and the resumed process never rejoins', async () => {
    const cluster = await launch(PY_TINY, [...BASE, '--tp', '2', '--heartbeat-timeout', '1', '--spares', '1']);
    let pid = 0;
    try {
      const before = await status(cluster);
      pid = before.workers.find((w) => w.rank === 1)!.pid;
      const s = startStreams(cluster.client, requests());
      const stoppedAt = await midStream(s);
      const atStop = s.received();
      process.kill(pid, 'SIGSTOP');
      // Declared dead by the heartbeat timeout; resume it at once, while the spare is taking over.
      let st = await status(cluster);
      await until('the failure record', async () => (st = await status(cluster)).failures.length > 0, 30_000, 5);
      process.kill(pid, 'SIGCONT');
      const resumedAt = Date.now();
      await s.all;
      expectFaultFree(s.got, local);
      await until('the resumed process to be gone', () => !alive(pid), 20_000);
      await until('the spare pool topped up', async () => (st = await status(cluster)).spares === 1 && st.failures[0]!.recovery === 'spare');
      const log = cluster.stderr();
      console.log(failoverLines(log));
      const f = st.failures[0]!;
      expect(f).toMatchObject({ rank: 1, pid, recovery: 'spare', replayedRequests: STREAMS });
      expect(f.cause).toMatch(/no heartbeat for \d+ ms/);
      expect(st.workers.map((w) => w.pid)).not.toContain(pid);
      expect(BigInt(st.generation)).toBeGreaterThan(BigInt(before.generation));
      // It did not get back in: either it spoke and the coordinator ended its stream, or it saw the
      // coordinator silent past the timeout and left by itself. Either way no Join, no assignment.
      const refused = log.includes(`rank 1 (pid ${pid}) spoke after it was declared lost`);
      const leftAlone = /\[[^\]]+:1\] worker 1: control stream closed: (no message from the coordinator|.*cannot rejoin)/.test(log);
      expect(refused || leftAlone, log).toBe(true);
      const afterLoss = log.slice(log.indexOf(`rank 1 (`));
      expect(afterLoss).toMatch(/rank 1 \(.* lost: no heartbeat/);
      expect(afterLoss).not.toContain(`(pid ${pid},`);
      console.log(`SIGSTOP/SIGCONT with a spare: serving again ${f.recoveryMs} ms after the loss was declared; ` +
        `${atStop} of ${STREAMS * TOKENS} tokens streamed before the stop, resumed ${resumedAt - stoppedAt} ms after it; ` +
        `${refused ? 'its late messages were refused' : 'it left on its own'}`);
    } finally {
      if (pid && alive(pid)) process.kill(pid, 'SIGCONT');
      expect(await cluster.stop()).toBe(0);
    }
    expect(workerProcesses()).toEqual([]);
  }, 90_000);
});
