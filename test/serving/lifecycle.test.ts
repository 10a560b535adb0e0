// Lifecycle of a launched cluster: bearer-token auth on the API, heartbeats visible in
// ClusterStatus, a lost worker's replica re-formed by failover (a stream that waits past
// --request-timeout answered UNAVAILABLE), workers leaving a hung coordinator, and no process left
// behind.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import * as grpc from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';

import { NodespeedClient } from '../../src/client/index.js';
import { BIN, PY_TINY, grpcError, launch, stream, workerProcesses } from './helpers.js';

/** Waits until every replica serves in a generation after `since`. */
async function serving(client: NodespeedClient, since: string): Promise<void> {
  const t0 = Date.now();
  for (;;) {
    const st = await client.clusterStatus();
    if (BigInt(st.generation) > BigInt(since) && st.replicas.every((r) => r.state === 'serving')) return;
    if (Date.now() - t0 > 20_000) throw new Error(`no replica re-formed after 20 s: ${JSON.stringify(st.replicas)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('cluster lifecycle', () => {
  it('requires the bearer token when --auth-token-file is set', async () => {
    const tokenFile = join(mkdtempSync(join(tmpdir(), 'nodespeed-token-')), 'token');
    writeFileSync(tokenFile, 's3cret\n', { mode: 0o600 });
    const cluster = await launch(PY_TINY, ['--num_cpu_workers', '1', '--auth-token-file', tokenFile, '--heartbeat-interval', '0.2', '--kv-blocks', '16']);
    try {
      const anon = await grpcError(cluster.client.complete({ prompt: 'x', maxTokens: 2 }));
      expect(anon.code).toBe(grpc.status.UNAUTHENTICATED);
      expect((await grpcError(cluster.client.clusterStatus())).code).toBe(grpc.status.UNAUTHENTICATED);
      const wrong = new NodespeedClient(cluster.address, { authToken: 'guess' });
      expect((await grpcError(stream(wrong, { prompt: 'x', maxTokens: 2 }))).code).toBe(grpc.status.UNAUTHENTICATED);
      wrong.close();
      const authed = new NodespeedClient(cluster.address, { authToken: 's3cret' });
      const c = await authed.complete({ prompt: 'import os\n\n', maxTokens: 5, ignoreEos: true });
      expect(c.tokenIds).toEqual([200, 333, 361, 414, 64]);
      // 16 KV blocks of 16 tokens: 4 prompt + 300 tokens need 19, so the request can never run.
      const big = await grpcError(authed.complete({ prompt: 'import os\n\n', maxTokens: 300 }));
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

  it('a killed worker whose replica is not back within --request-timeout fails its streams UNAVAILABLE; the replica still recovers', async () => {
    // Respawning a rank takes far more than 0.2 s, so the in-flight stream outlives its timeout.
    const cluster = await launch(PY_TINY, ['--num_cpu_workers', '2', '--tp', '2', '--request-timeout', '0.2']);
    try {
      const st = await cluster.client.clusterStatus();
      const victim = st.workers[1]!.pid;
      const inflight = grpcError(stream(cluster.client, { prompt: 'def main():\n', maxTokens: 450, ignoreEos: true }));
      await new Promise((r) => setTimeout(r, 300));
      process.kill(victim, 'SIGKILL');
      const err = await inflight;
      expect(err.code).toBe(grpc.status.UNAVAILABLE);
      // Either the coordinator sees rank 1's stream close first, or the driver's collective fails
      // naming its dead peer: both name rank 1.
      expect(err.details).toMatch(/^no replica could serve the request within --request-timeout \(0.2 s\); last failure: (rank 1 lost|rank 0 lost: .*peer rank 1)/);
      // The replica is re-formed in a new generation and serves again.
      await serving(cluster.client, st.generation);
      const c = await cluster.client.complete({ prompt: 'import os\n\n', maxTokens: 5, ignoreEos: true });
      expect(c.tokenIds).toEqual([200, 333, 361, 414, 64]);
      const after = await cluster.client.clusterStatus();
      expect(BigInt(after.generation)).toBeGreaterThan(BigInt(st.generation));
      expect(after.workers.map((w) => w.pid)).not.toContain(victim);
    } finally {
      expect(await cluster.stop()).toBe(0);
    }
    expect(workerProcesses()).toEqual([]);
  }, 60_000);

  it('workers stop on their own when the coordinator hangs (SIGSTOP) past the heartbeat timeout; back, it re-forms the replica', async () => {
    const cluster = await launch(PY_TINY, ['--num_cpu_workers', '2', '--tp', '2', '--heartbeat-interval', '0.2', '--heartbeat-timeout', '1.5']);
    try {
      const before = await cluster.client.clusterStatus();
      const pids = before.workers.map((w) => w.pid);
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
      // Back from the stop, the coordinator finds its workers gone and respawns them (failover).
      await serving(cluster.client, before.generation);
      expect(cluster.stderr()).toContain('no message from the coordinator');
      const after = await cluster.client.clusterStatus();
      for (const p of pids) expect(after.workers.map((w) => w.pid)).not.toContain(p);
      const c = await cluster.client.complete({ prompt: 'import os\n\n', maxTokens: 5, ignoreEos: true });
      expect(c.tokenIds).toEqual([200, 333, 361, 414, 64]);
    } finally {
      if (cluster.proc.exitCode === null) process.kill(cluster.proc.pid!, 'SIGCONT');
      expect(await cluster.stop()).toBe(0);
    }
    expect(workerProcesses()).toEqual([]);
  }, 60_000);
});
