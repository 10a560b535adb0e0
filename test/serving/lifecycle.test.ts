// Lifecycle of a launched cluster: bearer-token auth on the API, heartbeats visible in
// ClusterStatus, and a lost worker tearing the whole job down (until failover re-forms replicas)
// with the in-flight stream answered UNAVAILABLE and no process left behind.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

import * as grpc from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';

import { NodespeedClient, NodespeedError } from '../../src/client/index.js';
import { BIN, PY_TINY, launch, stream, workerProcesses } from './helpers.js';

async function failure(p: Promise<unknown>): Promise<NodespeedError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof NodespeedError) return err;
    throw err;
  }
  throw new Error('expected the call to fail');
}

describe('cluster lifecycle', () => {
  it('requires the bearer token when --auth-token is set', async () => {
    const cluster = await launch(PY_TINY, ['--num_cpu_workers', '1', '--auth-token', 's3cret', '--heartbeat-interval', '0.2', '--kv-blocks', '16']);
    try {
      const anon = await failure(cluster.client.complete({ prompt: 'x', maxTokens: 2 }));
      expect(anon.code).toBe(grpc.status.UNAUTHENTICATED);
      expect((await failure(cluster.client.clusterStatus())).code).toBe(grpc.status.UNAUTHENTICATED);
      const wrong = new NodespeedClient(cluster.address, { authToken: 'guess' });
      expect((await failure(stream(wrong, { prompt: 'x', maxTokens: 2 }))).code).toBe(grpc.status.UNAUTHENTICATED);
      wrong.close();
      const authed = new NodespeedClient(cluster.address, { authToken: 's3cret' });
      const c = await authed.complete({ prompt: 'import os\n\n', maxTokens: 5, ignoreEos: true });
      expect(c.tokenIds).toEqual([200, 333, 361, 414, 64]);
      // 16 KV blocks of 16 tokens: 4 prompt + 300 tokens need 19, so the request can never run.
      const big = await failure(authed.complete({ prompt: 'import os\n\n', maxTokens: 300 }));
      expect(big.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
      expect(big.details).toContain('needs 19 KV blocks, the replica\'s cache has 16');
      // Heartbeats flow every 0.2 s in both directions.
      const st = await authed.clusterStatus();
      expect(st.workers[0]!.lastHeartbeatMsAgo).toBeLessThan(1000);
      authed.close();
      const cli = spawnSync(process.execPath, [BIN, 'status', '--server', cluster.address, '--json'],
        { encoding: 'utf8', env: { ...process.env, NODESPEED_AUTH_TOKEN: 's3cret' } });
      expect(cli.status, cli.stderr).toBe(0);
      expect(JSON.parse(cli.stdout).workers).toHaveLength(1);
    } finally {
      expect(await cluster.stop()).toBe(0);
    }
    expect(workerProcesses()).toEqual([]);
  }, 60_000);

  it('a killed worker fails its in-flight requests with UNAVAILABLE and tears the job down', async () => {
    const cluster = await launch(PY_TINY, ['--num_cpu_workers', '2', '--tp', '2']);
    const exit = new Promise<number | null>((r) => cluster.proc.once('exit', (code) => r(code)));
    try {
      const st = await cluster.client.clusterStatus();
      const victim = st.workers[1]!.pid;
      const inflight = failure(stream(cluster.client, { prompt: 'def main():\n', maxTokens: 450, ignoreEos: true }));
      await new Promise((r) => setTimeout(r, 300));
      process.kill(victim, 'SIGKILL');
      const err = await inflight;
      expect(err.code).toBe(grpc.status.UNAVAILABLE);
      // Either the coordinator sees rank 1's stream close first, or the driver's collective fails
      // naming its dead peer: both name rank 1.
      expect(err.details).toMatch(/^replica 0 failed: (rank 1 lost|rank 0 lost: .*peer rank 1)/);
      expect(await exit).toBe(1);
      expect(cluster.stderr()).toContain('every replica is lost');
    } finally {
      await cluster.stop();
    }
    expect(workerProcesses()).toEqual([]);
  }, 60_000);

  it('workers stop on their own when the coordinator hangs (SIGSTOP) past the heartbeat timeout', async () => {
    const cluster = await launch(PY_TINY, ['--num_cpu_workers', '2', '--tp', '2', '--heartbeat-interval', '0.2', '--heartbeat-timeout', '1.5']);
    const exit = new Promise<number | null>((r) => cluster.proc.once('exit', (code) => r(code)));
    try {
      const pids = (await cluster.client.clusterStatus()).workers.map((w) => w.pid);
      process.kill(cluster.proc.pid!, 'SIGSTOP');
      const t0 = Date.now();
      // Exited workers stay zombies until the (stopped) launcher reaps them: running means not 'Z'.
      const alive = () => pids.filter((p) => {
        try {
          return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${p}/stat`, 'utf8'));
        } catch {
          return false;
        }
      });
      while (alive().length && Date.now() - t0 < 10_000) await new Promise((r) => setTimeout(r, 100));
      const waited = Date.now() - t0;
      process.kill(cluster.proc.pid!, 'SIGCONT');
      expect(alive()).toEqual([]);
      expect(waited).toBeGreaterThan(1000); // not before the timeout...
      expect(waited).toBeLessThan(6000); // ...and soon after it
      // Back from the stop, the coordinator finds its workers gone and tears the job down.
      expect(await exit).toBe(1);
      expect(cluster.stderr()).toContain('no message from the coordinator');
    } finally {
      if (cluster.proc.exitCode === null) process.kill(cluster.proc.pid!, 'SIGCONT');
      await cluster.stop();
    }
    expect(workerProcesses()).toEqual([]);
  }, 60_000);
});
