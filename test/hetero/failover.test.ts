// Failover across kinds, real processes: two CPU groups of different precision and thread count
// (a: as stored, b: f32), one class that may use both. The worker of a's replica is killed
// mid-stream: its streams move to b at once and continue with no gap and no repeat, with the tokens
// of a fault-free run (bf16 weights widen exactly to f32, so b computes the same numbers); a stream
// that asked for `exact` waits for a's replica to be re-formed and continues there.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { PY_TINY, launch, workerProcesses } from '../serving/helpers.js';
import { follow, path, seeded, singleProcess, until, workdir } from './helpers.js';
import type { Followed, Workdir } from './helpers.js';

describe('failover across groups', () => {
  let w: Workdir;
  beforeAll(() => {
    w = workdir();
  });
  afterAll(() => w?.remove());

  it('a replica killed mid-stream: its streams continue on the other group, the exact one on its own group once re-formed', async () => {
    const config = w.file('deploy.yaml', `model: ${PY_TINY}
groups:
  - name: a
    device: cpu
    threads: 1
  - name: b
    device: cpu
    precision: f32
    threads: 2
classes:
  standard: { groups: [a, b] }
`);
    const reqs = seeded(6, 128, 8800);
    const local = await singleProcess(reqs);
    const cluster = await launch(PY_TINY, ['--config', config, '--heartbeat-interval', '0.2', '--heartbeat-timeout', '2', '--request-timeout', '60'],
      { timeoutMs: 90_000 });
    try {
      const before = await cluster.client.clusterStatus();
      const victim = before.workers.find((x) => x.replica === 0)!.pid;
      const outs: Followed[] = reqs.map(() => ({ tokenIds: [], at: [], groups: [] }));
      const runs = Promise.all(reqs.map((r, i) => follow(cluster.client, r, { exact: i === 5 }, outs[i])));
      runs.catch(() => {});
      // Every stream is on a (the first group, with room) until a is lost.
      await until('a mid-stream', async () => {
        const st = await cluster.client.clusterStatus();
        return st.replicas[0]!.requests === 6 && Number(st.replicas[0]!.generatedTokens) >= 6 * 24;
      });
      process.kill(victim, 'SIGKILL');
      const killedAt = Date.now();
      // While a re-forms, the exact request waits in the coordinator (b serves, and could take it).
      await until('the exact request waiting for a', async () => {
        const st = await cluster.client.clusterStatus();
        return st.pendingRequests === 1 && st.replicas[0]!.state !== 'serving' && st.replicas[1]!.requests >= 1;
      });
      const got = await runs;
      got.forEach((g, i) => expect(g.tokenIds, `stream ${i}`).toEqual(local[i]!.tokenIds));
      for (let i = 0; i < 5; i++) expect(path(got[i]!), `stream ${i}`).toEqual(['a', 'b']);
      // The exact stream never ran on b: it waited for a's re-formed replica.
      expect(path(got[5]!)).toEqual(['a']);
      // Its longest pause between two tokens spans the re-form; the moved streams' pauses are their move to b.
      const pause = (g: Followed) => Math.max(...g.at.slice(1).map((t, k) => t - g.at[k]!));
      const st = await cluster.client.clusterStatus();
      expect(st.failures).toHaveLength(1);
      expect(st.failures[0]!.replica).toBe(0);
      expect(st.failures[0]!.replayedRequests).toBe(6);
      const std = st.classes.find((c) => c.name === 'standard')!;
      // 6 first routings plus 6 replays; the 5 replays to b overflowed past a.
      expect([std.routed, std.overflowed, std.routedByGroup]).toEqual(['12', '5', { a: '7', b: '5' }]);
      console.log(`a lost ${killedAt - got[0]!.at[0]!} ms into the streams: the moved streams paused at most ${Math.max(...got.slice(0, 5).map(pause))} ms; ` +
        `the exact one ${pause(got[5]!)} ms (a re-formed: ${st.failures[0]!.recovery} in ${st.failures[0]!.recoveryMs} ms)`);
    } finally {
      expect(await cluster.stop()).toBe(0);
    }
    expect(workerProcesses()).toEqual([]);
  }, 180_000);
});
