// Failover by a smaller layout (recovery (c)) through a real OpenSSH sshd on loopback: a
// replica has one rank on "host" 127.0.0.2 (over SSH) and the others on this machine, and there is
// no spare. The host goes away mid-stream (its sshd and every process under it killed, as in
// remote.test.ts): the rank dies, the respawn cannot restart it there, and the replica is re-formed
// on the ranks that were restarted with the largest smaller layout that fits them. Seeded streams
// all complete with exactly the fault-free tokens (no gap, no repeat); ClusterStatus, `nodespeed
// status`, the metrics and the log show the recovery `shrunk` and the replica's new layout.
//   - tp=2 (TP across hosts) -> tp=1 on the rank left, the only replica;
//   - 2 replicas, replica 1 pp=2 (stage 1 remote) -> pp=1 on its stage-0 rank, which now holds every
//     layer; replica 0 serves meanwhile;
//   - tp=2 x pp=2 (rank 3 remote) -> tp=2 x pp=1 on ranks 0, 1; rank 2, left out, becomes a spare.
import { beforeAll, describe, expect, it } from 'vitest';

import { formatFailure } from '../../src/cli/status.js';
import type { GenerateResult } from '../../src/engine/index.js';
import { sshdAvailable } from '../helpers/sshd.js';
import type { SshdHarness } from '../helpers/sshd.js';
import type { LaunchedCluster } from '../serving/helpers.js';
import {
  STREAMS, TOKENS, cli, expectFaultFree, failoverLines, faultFree, firstTokenAfter, midStream, onSshHosts, replicasMidStream, requests, scrape,
  startStreams, status, tokensBetween, until,
} from './helpers.js';
import type { Status, Streams } from './helpers.js';

const suite = sshdAvailable() ? describe : describe.skip;
const BASE = ['--heartbeat-interval', '0.2', '--heartbeat-timeout', '2', '--request-timeout', '60', '--kv-blocks', '256'];
/** Streams of the 2-replica case: long enough that replica 1 is mid-stream when its host goes (with tp 1
 * planning its steps ahead, 128-token streams end between heartbeats: faults.test.ts). */
const LONG = 256;
/** localhost first: the layout numbers ranks host by host, so the last rank is the remote one. */
const hostfile = (local: number) => `localhost slots=${local} device=cpu\n127.0.0.2 slots=1 device=cpu\n`;

let local: GenerateResult[];
let localLong: GenerateResult[];

beforeAll(async () => {
  local = await faultFree(requests());
  localLong = await faultFree(requests(0, LONG));
}, 120_000);

/**
 * Takes 127.0.0.2 away once `mid` says the streams are under way, checks every stream against
 * `expected`, waits for the recovery `shrunk` (and `spares` spares), and returns the status then.
 */
async function loseHost(cluster: LaunchedCluster, sshd: SshdHarness, s: Streams, expected: GenerateResult[], mid: () => Promise<number>,
  spares = 0): Promise<{ st: Status; f: Status['failures'][number]; log: string; goneAt: number }> {
  const goneAt = await mid();
  await sshd.stop();
  await s.all;
  expectFaultFree(s.got, expected);
  let st = await status(cluster);
  await until('the recovery shrunk', async () => {
    st = await status(cluster);
    return st.failures[0]?.recovery === 'shrunk' && st.spares === spares;
  }, 60_000).catch((err: Error) => {
    throw new Error(`${err.message}\nstatus: ${JSON.stringify({ failures: st.failures, spares: st.spares })}\n${cluster.stderr()}`);
  });
  const log = cluster.stderr();
  console.log(failoverLines(log));
  expect(st.failures).toHaveLength(1);
  const f = st.failures[0]!;
  console.log(`failure as ClusterStatus reports it: ${JSON.stringify(f)}`);
  expect(f).toMatchObject({ host: '127.0.0.2', recovery: 'shrunk', generation: st.generation });
  expect(f.recoveryMs).toBeGreaterThan(0);
  expect(st.failover).toMatchObject({ failures: 1, recoveries: 1 });
  expect(st.hosts).toEqual(['localhost']);
  // One line per event: the loss (respawn first) and the recovery, which names the new layout.
  const events = log.split('\n').filter((l) => /^failover: replica \d+ (lost|serving again|retired)/.test(l));
  expect(events, log).toHaveLength(2);
  expect(events[0]).toMatch(new RegExp(`^failover: replica ${f.replica} lost \\(rank ${f.rank} lost: .*; pid ${f.pid} on 127\\.0\\.0\\.2\\); ` +
    `${f.replayedRequests} requests re-queued .*respawning its ranks in generation \\d+ \\(attempt 1\\)$`));
  expect(log).toMatch(new RegExp(`launcher: rank ${f.rank} of replica ${f.replica} \\(slot ${f.rank}\\) not restarted: ssh 127\\.0\\.0\\.2`));
  expect(log).not.toContain(`launcher: restarted ranks`);
  return { st, f, log, goneAt };
}

suite('failover by a smaller layout when a host is gone (real sshd, py-tiny, no spare)', () => {
  it('tp=2 with rank 1 on a host that goes away: the replica serves again as tp=1 on rank 0, every stream equal to the fault-free run', async () => {
    await onSshHosts(hostfile(1), ['--tp', '2', '--allow-tp-across-hosts', '--metrics-port', '0', ...BASE], async (cluster, sshd) => {
      const before = await status(cluster);
      expect(before.replicas[0]).toMatchObject({ tp: 2, pp: 1, ranks: [0, 1] });
      const remote = before.workers.find((w) => w.rank === 1)!;
      expect(remote.host).toBe('127.0.0.2');
      const s = startStreams(cluster.client, requests());
      let atGone: number[] = [];
      const { st, f, log, goneAt } = await loseHost(cluster, sshd, s, local, async () => {
        const t = await midStream(s);
        atGone = s.got.map((g) => g.tokenIds.length);
        return t;
      });
      expect(atGone.some((n) => n === TOKENS), 'a stream had finished before the host went away').toBe(false);
      expect(f).toMatchObject({ rank: 1, pid: remote.pid, replica: 0, replayedRequests: STREAMS });
      expect(f.replayedTokens).toBeGreaterThanOrEqual(atGone.reduce((a, b) => a + b, 0));
      // ClusterStatus: the job was launched tp=2; replica 0 is tp=1 now, on rank 0 alone, with every layer.
      expect(st).toMatchObject({ tp: 2, pp: 1, state: 'serving' });
      expect(st.replicas[0]).toMatchObject({ state: 'serving', tp: 1, pp: 1, ranks: [0] });
      expect(st.workers.map((w) => [w.rank, w.host, w.stage, w.tpRank, w.layerStart, w.layerEnd, w.state])).toEqual([[0, 'localhost', 0, 0, 0, 6, 'serving']]);
      expect(st.failover).toEqual({ failures: 1, recoveries: 1, replayedRequests: STREAMS, replayedTokens: f.replayedTokens, quarantinedRequests: 0 });
      expect(log).toContain(`coordinator: replica 0 re-formed as tp 1 x pp 1 on rank 0 (was tp 2 x pp 1) in generation ${f.generation}`);
      expect(log).toContain(`failover: replica 0 serving again in generation ${f.generation}, ${f.recoveryMs} ms after rank 1 was lost ` +
        `(pid ${remote.pid} on 127.0.0.2: ${f.cause}); recovery: shrunk to tp 1 x pp 1 on rank 0 (was tp 2 x pp 1), ${STREAMS} requests replayed`);
      // `nodespeed status`: the failure line and the replica's layout; --json: ReplicaStatus tp/pp/ranks.
      const human = cli(['status', '--server', cluster.address]);
      expect(human.status, human.stderr).toBe(0);
      expect(human.stdout).toContain(`  ${formatFailure(f)}\n`);
      expect(formatFailure(f)).toContain(`-> shrunk in ${f.recoveryMs} ms (generation ${f.generation})`);
      expect(human.stdout).toMatch(/^REPLICA +GROUP +STATE +LAYOUT +PRECISION +RANKS .*\n0 +default +serving +tp 1 x pp 1 +bf16\/f32\/f32 +0 /m);
      const json = cli(['status', '--server', cluster.address, '--json']);
      expect(json.status, json.stderr).toBe(0);
      expect((JSON.parse(json.stdout) as Status).replicas[0]).toMatchObject({ tp: 1, pp: 1, ranks: [0] });
      const m = await scrape(/ metrics=(\S+)/.exec(cluster.readyLine)![1]!);
      expect(m.get('nodespeed_replicas_shrunk_total')).toBe(1);
      expect(m.get('nodespeed_recoveries_total')).toBe(1);
      expect(m.get('nodespeed_replica_ranks{replica="0"}')).toBe(1);
      const first = firstTokenAfter(s.got, f.atUnixMs + f.recoveryMs);
      console.log(`shrink tp=2 -> tp=1 (1 replica): loss recorded ${f.atUnixMs - goneAt} ms after the host went away; serving again as tp=1 ` +
        `${f.recoveryMs} ms after the loss, first token after it ${first - goneAt} ms after the host went away; ` +
        `${atGone.reduce((a, b) => a + b, 0)} of ${STREAMS * TOKENS} tokens streamed before, all ${STREAMS} streams replayed`);
    });
  }, 150_000);

  it('2 replicas, replica 1 pp=2 with stage 1 on a host that goes away: it serves again as pp=1 on its stage-0 rank, replica 0 serving meanwhile', async () => {
    await onSshHosts(hostfile(3), ['--pp', '2', ...BASE], async (cluster, sshd) => {
      expect(cluster.readyLine).toContain('replicas=2');
      const before = await status(cluster);
      expect(before.workers.find((w) => w.rank === 3)).toMatchObject({ host: '127.0.0.2', replica: 1, stage: 1 });
      const s = startStreams(cluster.client, requests(0, LONG));
      const { st, f } = await loseHost(cluster, sshd, s, localLong, () => replicasMidStream(cluster, [1], (STREAMS / 2) * (LONG / 8)));
      expect(f).toMatchObject({ rank: 3, replica: 1 });
      expect(f.replayedRequests, 'the host went away while replica 1 was mid-stream').toBeGreaterThan(0);
      expect(st.replicas.map((r) => [r.id, r.state, r.tp, r.pp, r.ranks])).toEqual([[0, 'serving', 1, 2, [0, 1]], [1, 'serving', 1, 1, [2]]]);
      expect(st.workers.find((w) => w.rank === 2)).toMatchObject({ replica: 1, stage: 0, tpRank: 0, layerStart: 0, layerEnd: 6, state: 'serving' });
      expect(st.workers.map((w) => w.rank)).toEqual([0, 1, 2]);
      // Replica 0 kept its processes and served while replica 1 was re-formed.
      const pids0 = (x: Status) => x.workers.filter((w) => w.replica === 0).map((w) => w.pid);
      expect(pids0(st)).toEqual(pids0(before));
      const during = tokensBetween(s.got, f.atUnixMs, f.atUnixMs + f.recoveryMs);
      expect(during).toBeGreaterThan(0);
      // The shrunk replica takes new work: of 4 concurrent streams the router gives it some.
      const more = startStreams(cluster.client, requests().slice(0, 4));
      await more.all;
      expectFaultFree(more.got, local.slice(0, 4));
      await until('replica 1 generating again', async () => Number((await status(cluster)).replicas[1]!.generatedTokens) >= TOKENS, 10_000);
      console.log(`shrink pp=2 -> pp=1 (replica 1 of 2): serving again ${f.recoveryMs} ms after the loss; ${f.replayedRequests} streams replayed, ` +
        `${during} tokens delivered by replica 0 meanwhile`);
    });
  }, 150_000);

  it('tp=2 x pp=2 with rank 3 on a host that goes away: tp=2 x pp=1 on ranks 0 and 1, and rank 2, left out, becomes a spare', async () => {
    await onSshHosts(hostfile(3), ['--tp', '2', '--pp', '2', '--allow-tp-across-hosts', ...BASE], async (cluster, sshd) => {
      const before = await status(cluster);
      expect(before.spares).toBe(0);
      expect(before.workers.find((w) => w.rank === 3)).toMatchObject({ host: '127.0.0.2', stage: 1, tpRank: 1 });
      const s = startStreams(cluster.client, requests());
      const { st, f, log } = await loseHost(cluster, sshd, s, local, () => midStream(s), 1);
      expect(f).toMatchObject({ rank: 3, replica: 0, replayedRequests: STREAMS });
      expect(st.replicas[0]).toMatchObject({ state: 'serving', tp: 2, pp: 1, ranks: [0, 1] });
      expect(st.workers.map((w) => [w.rank, w.stage, w.tpRank, w.layerStart, w.layerEnd])).toEqual([[0, 0, 0, 0, 6], [1, 0, 1, 0, 6]]);
      expect(log).toContain(`coordinator: replica 0 re-formed as tp 2 x pp 1 on ranks 0, 1 (was tp 2 x pp 2) in generation ${f.generation}; ` +
        'rank(s) 2 left out, their slots become spares once it serves');
      expect(log).toMatch(/coordinator: spare joined in slot 2 from /);
      expect(log).toContain('launcher: restarted slot 2 as a spare');
      console.log(`shrink tp=2 x pp=2 -> tp=2 x pp=1: serving again ${f.recoveryMs} ms after the loss, ${STREAMS} streams replayed; rank 2's slot is a spare`);
    });
  }, 150_000);
});
