// Failover of remote workers through a real OpenSSH sshd on loopback: replica 0 (tp=2)
// runs on "host" 127.0.0.2 over SSH, replica 1 (tp=2) on this machine. 32 seeded streams of 128
// tokens, each compared with the fault-free run.
//   - The SSH connection of a remote worker drops (its sshd session process is killed): the host
//     still answers, so the launcher restarts the replica's ranks there; replica 1 serves meanwhile.
//   - The host is gone (its sshd and everything under it killed): the ranks cannot be restarted, the
//     replica is retired with a clear ClusterStatus record, and replica 1 finishes every stream.
import { beforeAll, describe, expect, it } from 'vitest';

import type { GenerateResult } from '../../src/engine/index.js';
import { sshdAvailable } from '../helpers/sshd.js';
import type { SshdHarness } from '../helpers/sshd.js';
import type { LaunchedCluster } from '../serving/helpers.js';
import {
  STREAMS, alive, commOf, expectFaultFree, failoverLines, faultFree, firstTokenAfter, onSshHosts, parentOf, replicasMidStream, requests, startStreams,
  status, tokensBetween, until,
} from './helpers.js';
import type { Status } from './helpers.js';

const suite = sshdAvailable() ? describe : describe.skip;
/** Longer streams than elsewhere: the fault must land while replica 0 is mid-stream, and the
 * replica's generated-token count reaches the test a heartbeat (0.2 s) late. At 128 tokens the 16
 * streams of a replica took ~0.4 s once the driver overlapped detokenizing with the next step, and
 * the drop sometimes found them all finished; 384 tokens (prompts of 5-15) stay under py-tiny's 512. */
const LONG = 384;

let local: GenerateResult[];

beforeAll(async () => {
  local = await faultFree(requests(0, LONG));
}, 60_000);

/** Runs `body` on a fresh two-host cluster (replica 0 on 127.0.0.2, replica 1 here), then checks no worker is left. */
async function onTwoHosts(body: (cluster: LaunchedCluster, sshd: SshdHarness) => Promise<void>): Promise<void> {
  await onSshHosts('127.0.0.2 slots=2 device=cpu\nlocalhost slots=2 device=cpu\n', ['--tp', '2', '--heartbeat-interval', '0.2',
    '--heartbeat-timeout', '2', '--request-timeout', '60', '--kv-blocks', '512'], async (cluster, sshd) => {
    expect(cluster.readyLine).toContain('replicas=2');
    await body(cluster, sshd);
  });
}

/** The sshd session process that serves a remote worker: its nearest sshd ancestor (never the listener). */
function sshdSessionOf(pid: number): number {
  for (let p = parentOf(pid); p > 1; p = parentOf(p)) if (commOf(p).startsWith('sshd')) return p;
  throw new Error(`pid ${pid} has no sshd ancestor`);
}

suite('failover of remote workers over SSH (real sshd, py-tiny)', () => {
  it('the SSH connection of a remote worker drops: its replica is restarted on the host, the local replica serves meanwhile', async () => {
    await onTwoHosts(async (cluster) => {
      const before = await status(cluster);
      const w1 = before.workers.find((w) => w.rank === 1)!;
      expect(w1.host).toBe('127.0.0.2');
      const session = sshdSessionOf(w1.pid);
      const s = startStreams(cluster.client, requests(0, LONG));
      const droppedAt = await replicasMidStream(cluster, [0], (STREAMS / 2) * (LONG / 8));
      process.kill(session, 'SIGKILL');
      await s.all;
      expectFaultFree(s.got, local);
      let st: Status = await status(cluster);
      await until('replica 0 respawned', async () => (st = await status(cluster)).failures[0]?.recovery === 'respawned', 60_000);
      const log = cluster.stderr();
      console.log(failoverLines(log));
      const f = st.failures[0]!;
      expect(f).toMatchObject({ replica: 0, host: '127.0.0.2' });
      expect(f).toMatchObject({ rank: 1, pid: w1.pid });
      expect(log).toContain('launcher: restarted ranks 0, 1 of replica 0');
      expect(log).not.toMatch(/failover: replica 1 lost/);
      // The old remote worker is gone (the watchdog in its process group saw the channel close).
      await until('the disconnected worker to exit', () => !alive(w1.pid), 10_000);
      const now = st.workers.filter((w) => w.replica === 0);
      expect(now.every((w) => w.host === '127.0.0.2' && w.state === 'serving' && w.pid !== w1.pid)).toBe(true);
      const during = tokensBetween(s.got, f.atUnixMs, f.atUnixMs + f.recoveryMs);
      const first = firstTokenAfter(s.got, f.atUnixMs + f.recoveryMs);
      console.log(`SSH connection dropped: loss detected ${f.atUnixMs - droppedAt} ms after the drop (${f.cause}); ` +
        `replica 0 restarted on 127.0.0.2 and serving ${f.recoveryMs} ms after the loss ` +
        `(${Number.isFinite(first) ? `first token after it ${first - droppedAt} ms after the drop` : 'every stream had already finished on replica 1'}); ` +
        `${f.replayedRequests} streams moved, ${during} tokens delivered by replica 1 meanwhile`);
      expect(f.replayedRequests, 'the drop hit replica 0 mid-stream').toBeGreaterThan(0);
      expect(during).toBeGreaterThan(0);
    });
  }, 150_000);

  it('the remote host is gone: its replica is retired and the local replica finishes every stream', async () => {
    await onTwoHosts(async (cluster, sshd) => {
      const before = await status(cluster);
      const remote = before.workers.filter((w) => w.replica === 0).map((w) => w.pid);
      const s = startStreams(cluster.client, requests(0, LONG));
      const goneAt = await replicasMidStream(cluster, [0], (STREAMS / 2) * (LONG / 8));
      await sshd.stop(); // sshd and every process under it: the workers die, and nothing can be started there
      await s.all;
      expectFaultFree(s.got, local);
      let st: Status = await status(cluster);
      await until('replica 0 retired', async () => (st = await status(cluster)).failures[0]?.recovery === 'retired', 60_000);
      const log = cluster.stderr();
      console.log(failoverLines(log));
      const f = st.failures[0]!;
      expect(f).toMatchObject({ replica: 0, host: '127.0.0.2', recovery: 'retired', recoveryMs: 0, replayedRequests: expect.any(Number) });
      expect(f.replayedRequests).toBeGreaterThan(0);
      expect(f.replayedRequests).toBeLessThanOrEqual(STREAMS);
      expect(log).toMatch(/failover: replica 0 retired: .*127\.0\.0\.2.*; the other replicas carry its load/);
      expect(st.replicas.map((r) => r.state)).toEqual(['lost', 'serving']);
      expect(st.state).toBe('serving');
      await until('the remote workers to be gone', () => remote.every((pid) => !alive(pid)), 10_000);
      console.log(`remote host gone: loss recorded ${f.atUnixMs - goneAt} ms after the host went away, replica 0 retired when the restart over SSH failed; ` +
        `${f.replayedRequests} streams replayed on replica 1, all ${STREAMS} equal to the fault-free run`);
    });
  }, 150_000);
});
