// Failover across kinds, real processes: two CPU groups of different numerics and thread count
// (a: int8 weights, W8A16; b: the checkpoint's bf16 weights as stored), one class that may use both.
// The worker of a's replica is killed mid-stream: its greedy streams move to b at once and
// continue with no gap and no repeat: the tokens a produced are the fault-free int8 run's, the
// tokens after the move are what b computes from the prompt and those tokens (its own numerics);
// a stream that asked for `exact` waits for a's replica to be re-formed and continues there, with
// the fault-free int8 run's tokens throughout.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { PY_TINY, launch, workerProcesses } from '../serving/helpers.js';
import { faultFree, follow, path, seeded, until, workdir } from './helpers.js';
import type { Followed, Workdir } from './helpers.js';

describe('failover across groups of different numerics', () => {
  let w: Workdir;
  beforeAll(() => {
    w = workdir();
  });
  afterAll(() => w?.remove());

  it('an int8 replica killed mid-stream: its streams continue on the bf16 group, the exact one on its own group once re-formed', async () => {
    const config = w.file('deploy.yaml', `model: ${PY_TINY}
groups:
  - name: a
    device: cpu
    precision: int8
    threads: 1
  - name: b
    device: cpu
    threads: 2
classes:
  standard: { groups: [a, b] }
`);
    // Greedy: what b continues with depends only on the tokens before the move, so it can be recomputed.
    const reqs = seeded(6, 128, 8800).map((r) => ({ ...r, temperature: 0 }));
    const int8 = await faultFree(reqs, 'int8');
    const cluster = await launch(PY_TINY, ['--config', config, '--heartbeat-interval', '0.2', '--heartbeat-timeout', '2', '--request-timeout', '60'],
      { timeoutMs: 90_000 });
    try {
      const before = await cluster.client.clusterStatus();
      expect(before.groups.map((g) => [g.name, g.precision])).toEqual([
        ['a', { weights: 'int8', activations: 'f32', kvCache: 'f32' }], ['b', { weights: 'bf16', activations: 'f32', kvCache: 'f32' }]]);
      expect(cluster.readyLine).toContain(' groups=a:cpu/int8-f32-f32/tp1xpp1x1,b:cpu/bf16-f32-f32/tp1xpp1x1 ');
      const victim = before.workers.find((x) => x.replica === 0)!.pid;
      const outs: Followed[] = reqs.map(() => ({ tokenIds: [], at: [], groups: [] }));
      const runs = Promise.all(reqs.map((r, i) => follow(cluster.client, r, { exact: i === 5 }, outs[i])));
      runs.catch(() => {});
      // Every stream is on a (the first group, with room) until a is lost. Mid-stream as the client
      // sees it, token by token (the replica's generated count comes with its heartbeats, which six
      // 128-token streams on py-tiny can outrun: on a loaded machine the poll saw them end first).
      await until('a mid-stream', () => outs.every((o) => o.tokenIds.length >= 24));
      expect(outs.every((o) => o.tokenIds.length < 128 && o.groups.every((g) => g === 'a'))).toBe(true);
      process.kill(victim, 'SIGKILL');
      const killedAt = Date.now();
      // While a re-forms, the exact request waits in the coordinator (b serves, and could take it).
      await until('the exact request waiting for a', async () => {
        const st = await cluster.client.clusterStatus();
        return st.pendingRequests === 1 && st.replicas[0]!.state !== 'serving' && st.replicas[1]!.requests >= 1;
      });
      const got = await runs;
      const moved = got.slice(0, 5).map((g) => g.groups.indexOf('b'));
      for (let i = 0; i < 5; i++) {
        expect(path(got[i]!), `stream ${i}`).toEqual(['a', 'b']);
        expect(got[i]!.tokenIds, `stream ${i}`).toHaveLength(128);
        expect(got[i]!.tokenIds.slice(0, moved[i]), `stream ${i} on a`).toEqual(int8[i]!.tokenIds.slice(0, moved[i]));
      }
      // b's continuations: b's greedy tokens from each prompt and the int8 tokens streamed before the move.
      const onB = await faultFree(reqs.slice(0, 5).map((r, i) => ({ ...r, promptIds: [...r.promptIds!, ...got[i]!.tokenIds.slice(0, moved[i])],
        maxTokens: 128 - moved[i]! })));
      for (let i = 0; i < 5; i++) expect(got[i]!.tokenIds.slice(moved[i]), `stream ${i} on b`).toEqual(onB[i]!.tokenIds);
      // The exact stream never ran on b: it waited for a's re-formed replica, and is the int8 run's.
      expect(path(got[5]!)).toEqual(['a']);
      expect(got[5]!.tokenIds).toEqual(int8[5]!.tokenIds);
      // Its longest pause between two tokens spans the re-form; the moved streams' pauses are their move to b.
      const pause = (g: Followed) => Math.max(...g.at.slice(1).map((t, k) => t - g.at[k]!));
      const st = await cluster.client.clusterStatus();
      expect(st.failures).toHaveLength(1);
      expect(st.failures[0]!.replica).toBe(0);
      expect(st.failures[0]!.replayedRequests).toBe(6);
      const std = st.classes.find((c) => c.name === 'standard')!;
      // 6 first routings plus 6 replays; the 5 replays to b overflowed past a.
      expect([std.routed, std.overflowed, std.routedByGroup]).toEqual(['12', '5', { a: '7', b: '5' }]);
      console.log(`a lost ${killedAt - got[0]!.at[0]!} ms into the streams (moved after ${moved.join(', ')} tokens): the moved streams paused at most ` +
        `${Math.max(...got.slice(0, 5).map(pause))} ms; the exact one ${pause(got[5]!)} ms (a re-formed: ${st.failures[0]!.recovery} in ${st.failures[0]!.recoveryMs} ms)`);
    } finally {
      expect(await cluster.stop()).toBe(0);
    }
    expect(workerProcesses()).toEqual([]);
  }, 180_000);
});
