// A quantized replica through a real `nodespeed launch` (docs/QUANTIZATION.md): --quantize int8 on
// CPU workers at tp 2 serves the tokens of the single-process int8 engine, and its precision shows
// on the ready line, in ClusterStatus, in `nodespeed status` and in the Prometheus metrics; a
// replica of int8 weights lost mid-stream hands its seeded streams to another int8 replica with the
// tokens of a fault-free int8 run; fp8 on CPU workers is refused before any worker starts.
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';

import { Engine, generateAll } from '../../src/engine/index.js';
import { loadTokenizer } from '../../src/model/index.js';
import { BIN, launch, PY_TINY, reference, root, stream, workerProcesses } from './helpers.js';
import { expectFaultFree, faultFree, replicasMidStream, requests, startStreams } from '../failover/helpers.js';
import type { Status } from '../failover/helpers.js';
import type { PyTinyCase } from './helpers.js';

const { cases } = reference<PyTinyCase>(PY_TINY);

describe('--quantize int8 through the gRPC API', () => {
  it('tp 2 serves the int8 engine\'s greedy tokens; the ready line, ClusterStatus, status and metrics state the precision', async () => {
    const [engine, tok] = await Promise.all([Engine.load(PY_TINY, { device: 'cpu', quantize: 'int8' }), loadTokenizer(PY_TINY)]);
    let local;
    try {
      local = await generateAll(engine, tok, cases.map((c) => ({ promptIds: c.ids, maxTokens: 24, ignoreEos: true, temperature: 0 })));
    } finally {
      engine.dispose();
    }
    const cluster = await launch(PY_TINY, ['--num_cpu_workers', '2', '--tp', '2', '--quantize', 'int8', '--metrics-port', '0']);
    try {
      expect(cluster.readyLine).toMatch(/ tp=2 world=2 weights=int8 activations=f32 kv-cache=f32 http=127\.0\.0\.1:\d+ metrics=127\.0\.0\.1:\d+ tls=/);
      for (const [i, c] of cases.entries()) {
        const r = await stream(cluster.client, { promptIds: c.ids, maxTokens: 24, ignoreEos: true, temperature: 0 });
        expect(r.tokenIds, c.text).toEqual(local[i]!.tokenIds);
      }
      const status = await cluster.client.clusterStatus();
      expect(status.replicas[0]!.precision).toEqual({ weights: 'int8', activations: 'f32', kvCache: 'f32' });
      expect(status.workers.every((w) => /int8 W8A16/.test(w.engine))).toBe(true);
      const st = spawnSync(process.execPath, [BIN, 'status', '--server', cluster.address], { cwd: root, encoding: 'utf8' });
      expect(st.status).toBe(0);
      expect(st.stdout).toMatch(/REPLICA\s+STATE\s+LAYOUT\s+PRECISION/);
      expect(st.stdout).toMatch(/tp 2 x pp 1\s+int8\/f32\/f32/);
      const metrics = await (await fetch(`http://${cluster.readyLine.match(/metrics=(\S+)/)![1]}/metrics`)).text();
      expect(metrics).toMatch(/^nodespeed_replica_precision_info\{replica="0",weights="int8",activations="f32",kv_cache="f32"\} 1$/m);
    } finally {
      expect(await cluster.stop()).toBe(0);
    }
    expect(workerProcesses()).toEqual([]);
  });

  it('equal numerics keep the failover promise: an int8 replica killed mid-stream, its seeded streams finish on the other int8 replica with the fault-free int8 tokens', async () => {
    const reqs = requests(0, 256);  // long enough that replica 0 is seen mid-way (py-tiny decodes thousands of tokens a second)
    const local = await faultFree(reqs, 'int8');
    const cluster = await launch(PY_TINY, ['--num_cpu_workers', '2', '--tp', '1', '--quantize', 'int8', '--heartbeat-interval', '0.2',
      '--heartbeat-timeout', '2', '--request-timeout', '30', '--kv-blocks', '512']);
    try {
      expect(cluster.readyLine).toContain('replicas=2');
      const pid = (await cluster.client.clusterStatus()).workers.find((w) => w.rank === 0)!.pid;
      const streams = startStreams(cluster.client, reqs);
      // Mid-way as the coordinator sees it (a starved test process may receive its tokens late).
      await replicasMidStream(cluster, [0], 64);
      process.kill(pid, 'SIGKILL');
      await streams.all;
      expectFaultFree(streams.got, local);
      const after = await cluster.client.clusterStatus() as Status;
      expect(after.failover.replayedRequests, 'streams were moved mid-way').toBeGreaterThan(0);
      expect(after.replicas.every((r) => r.precision?.weights === 'int8')).toBe(true);
    } finally {
      expect(await cluster.stop()).toBe(0);
    }
    expect(workerProcesses()).toEqual([]);
  }, 90_000);

  it('fp8 on CPU workers is refused before any worker starts', () => {
    const fp8 = spawnSync(process.execPath, [BIN, 'launch', '--model', PY_TINY, '--device', 'cpu', '--quantize', 'fp8', '--port', '0',
      '--http-port', '0', '--bind', '127.0.0.1', '--no-progress'], { cwd: root, encoding: 'utf8', timeout: 60_000 });
    expect(fp8.status).toBe(1);
    expect(fp8.stderr).toMatch(/--quantize fp8: needs a CUDA GPU with FP8 tensor cores/);
    const kv = spawnSync(process.execPath, [BIN, 'launch', '--model', PY_TINY, '--device', 'cpu', '--kv-cache-dtype', 'fp8', '--port', '0',
      '--http-port', '0', '--bind', '127.0.0.1', '--no-progress'], { cwd: root, encoding: 'utf8', timeout: 60_000 });
    expect(kv.status).toBe(1);
    expect(kv.stderr).toMatch(/--kv-cache-dtype fp8: needs a CUDA GPU/);
    expect(workerProcesses()).toEqual([]);
  });
});
