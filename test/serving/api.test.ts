// The public API of one shared cluster (py-tiny, TP=2 on 2 CPU workers): 64 concurrent streams,
// continuous batching, cancellation and deadlines freeing KV blocks, request validation, queue
// limits, health, reflection, a worker with a wrong job token, and the CLI clients.
import { spawn, spawnSync } from 'node:child_process';
import { setMaxListeners } from 'node:events';
import { join } from 'node:path';

import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { NodespeedError } from '../../src/client/index.js';
import type { GenerateRequestMsg } from '../../src/client/index.js';
import { Engine, generateAll } from '../../src/engine/index.js';
import type { GenerateRequest } from '../../src/engine/index.js';
import { loadTokenizer } from '../../src/model/index.js';
import { BIN, PY_TINY, grpcError, launch, reference, root, stream, workerProcesses } from './helpers.js';
import type { LaunchedCluster, PyTinyCase } from './helpers.js';

const MAX_QUEUE = 80;
let cluster: LaunchedCluster;

beforeAll(async () => {
  cluster = await launch(PY_TINY, ['--num_cpu_workers', '2', '--tp', '2', '--kv-blocks', '1024', '--max-queue', String(MAX_QUEUE),
    '--heartbeat-interval', '0.25']);
}, 90_000);

afterAll(async () => {
  if (cluster) expect(await cluster.stop()).toBe(0);
  expect(workerProcesses()).toEqual([]);
});

async function until<T>(what: string, probe: () => Promise<T>, ok: (v: T) => boolean, timeoutMs = 10_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (ok(v)) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(v)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const idle = () => until('the replica to be idle with every KV block free', () => cluster.client.clusterStatus(),
  (s) => s.replicas[0]!.running === 0 && s.replicas[0]!.kvBlocksFree === s.replicas[0]!.kvBlocksTotal && s.activeRequests === 0);

describe('serving py-tiny with tp=2', () => {
  it('serves the reference greedy continuations', async () => {
    const { cases } = reference<PyTinyCase>(PY_TINY);
    const got = await Promise.all(cases.map((c) => stream(cluster.client, { promptIds: c.ids, maxTokens: 48, ignoreEos: true })));
    got.forEach((g, i) => expect(g.tokenIds, cases[i]!.text).toEqual(cases[i]!.greedy_48));
  });

  it('runs 64 concurrent streams of different lengths, each equal to the single-process engine, with continuous batching', async () => {
    const { cases } = reference<PyTinyCase>(PY_TINY);
    const reqs: GenerateRequest[] = Array.from({ length: 64 }, (_, i) => ({
      prompt: `${cases[i % cases.length]!.text}${'    '.repeat(i % 3)}# ${i}\n`, maxTokens: 4 + ((i * 13) % 61),
      ...(i % 4 === 3 ? { temperature: 0.8, topP: 0.9, seed: 99 + i } : { temperature: 0 }),
    }));
    const [engine, tok] = await Promise.all([Engine.load(PY_TINY, { device: 'cpu', kvBlocks: 1024 }), loadTokenizer(PY_TINY)]);
    let local;
    try {
      local = await generateAll(engine, tok, reqs);
    } finally {
      engine.dispose();
    }
    const before = await cluster.client.clusterStatus();
    const msgs: GenerateRequestMsg[] = reqs.map((r) => ({ prompt: r.prompt!, maxTokens: r.maxTokens!, temperature: r.temperature!,
      ...(r.topP ? { topP: r.topP } : {}), ...(r.seed !== undefined ? { seed: String(r.seed) } : {}) }));
    const got = await Promise.all(msgs.map((m) => stream(cluster.client, m)));
    got.forEach((g, i) => {
      expect(g.tokenIds, `stream ${i}`).toEqual(local[i]!.tokenIds);
      expect(g.text, `stream ${i}`).toBe(local[i]!.text);
      expect(g.finishReason).toBe(local[i]!.finishReason);
    });
    // Different lengths really: the streams ended at many different steps.
    expect(new Set(got.map((g) => g.tokenIds.length)).size).toBeGreaterThan(20);
    const st = await until('the driver to report the batch', () => cluster.client.clusterStatus(),
      (s) => Number(s.replicas[0]!.steps) > Number(before.replicas[0]!.steps) && s.replicas[0]!.running === 0);
    const r = st.replicas[0]!;
    // Several requests per step, and batch sizes that change as requests join and leave.
    expect(r.maxStepBatch).toBeGreaterThanOrEqual(32);
    expect(new Set(r.recentStepBatch).size).toBeGreaterThan(5);
    // Far fewer steps than tokens: the 64 streams shared steps.
    const tokens = got.reduce((n, g) => n + g.tokenIds.length, 0);
    expect(Number(r.steps) - Number(before.replicas[0]!.steps)).toBeLessThan(tokens / 8);
    await idle();
  }, 180_000);

  it('chunks a prompt longer than a step\'s token budget, and honours stop strings, like the single-process engine', async () => {
    const long = 'def f(x):\n    return x + 1\n\n'.repeat(40); // ~400 tokens: two prefill chunks of at most 256
    const reqs: GenerateRequest[] = [
      { prompt: long, maxTokens: 40, temperature: 0 },
      { prompt: 'class Stack:\n    def __init__(self):\n', maxTokens: 60, temperature: 0, stop: ['self.stack'] },
      { prompt: 'import os\n\n', maxTokens: 60, temperature: 0.7, seed: 5, stop: ['(', 'return'] },
    ];
    const [engine, tok] = await Promise.all([Engine.load(PY_TINY, { device: 'cpu' }), loadTokenizer(PY_TINY)]);
    const local = await generateAll(engine, tok, reqs).finally(() => engine.dispose());
    expect(local[0]!.promptIds.length).toBeGreaterThan(256);
    expect(local[1]!.finishReason).toBe('FINISH_REASON_STOP');
    const got = await Promise.all(reqs.map((r) => stream(cluster.client, { prompt: r.prompt!, maxTokens: r.maxTokens!, temperature: r.temperature!,
      ...(r.stop ? { stop: r.stop } : {}), ...(r.seed !== undefined ? { seed: String(r.seed) } : {}) })));
    got.forEach((g, i) => {
      expect(g.tokenIds, `request ${i}`).toEqual(local[i]!.tokenIds);
      expect(g.text, `request ${i}`).toBe(local[i]!.text);
      expect(g.usage?.promptTokens).toBe(local[i]!.promptIds.length);
    });
    expect(got[1]!.finishReason).toBe('FINISH_REASON_STOP');
    expect(got[1]!.text).not.toContain('self.stack');
  }, 60_000);

  it('a cancelled stream frees its KV blocks', async () => {
    await idle();
    let seen = 0;
    let heldBlocks = 0;
    for await (const m of cluster.client.generate({ prompt: 'def main():\n', maxTokens: 400, ignoreEos: true })) {
      seen += m.tokenIds.length;
      if (seen >= 3) {
        const s = await until('the request to hold KV blocks', () => cluster.client.clusterStatus(), (x) => x.replicas[0]!.kvBlocksFree < x.replicas[0]!.kvBlocksTotal);
        heldBlocks = s.replicas[0]!.kvBlocksTotal - s.replicas[0]!.kvBlocksFree;
        break; // leaving the loop cancels the call
      }
    }
    expect(heldBlocks).toBeGreaterThan(0);
    const s = await idle();
    expect(s.replicas[0]!.kvBlocksFree).toBe(s.replicas[0]!.kvBlocksTotal);
    expect(Number(s.replicas[0]!.generatedTokens)).toBeGreaterThan(0);
  }, 30_000);

  it('a deadline stops the work and frees the KV blocks', async () => {
    const err = await grpcError(stream(cluster.client, { prompt: 'import os\n', maxTokens: 450, ignoreEos: true }, { timeoutMs: 300 }));
    expect(err.code).toBe(grpc.status.DEADLINE_EXCEEDED);
    await idle();
  }, 30_000);

  it('answers each invalid request with INVALID_ARGUMENT naming the field', async () => {
    const cases: [GenerateRequestMsg, string][] = [
      [{ prompt: '' }, 'prompt'],
      [{ promptIds: Array.from({ length: 600 }, () => 5) }, 'prompt_ids'],
      [{ prompt: 'x = 1\n'.repeat(400) }, 'prompt'],
      [{ prompt: 'x', maxTokens: 0 }, 'max_tokens'],
      [{ prompt: 'x', maxTokens: -3 }, 'max_tokens'],
      [{ prompt: 'x', temperature: -0.5 }, 'temperature'],
      [{ prompt: 'x', topP: 0 }, 'top_p'],
      [{ prompt: 'x', topP: 1.5 }, 'top_p'],
      [{ prompt: 'x', model: 'gpt-5' }, 'model'],
      [{ promptIds: [1, 99999] }, 'prompt_ids[1]'],
    ];
    for (const [req, field] of cases) {
      const e1 = await grpcError(cluster.client.complete(req));
      expect(e1.code, JSON.stringify(req).slice(0, 80)).toBe(grpc.status.INVALID_ARGUMENT);
      expect(e1.details.startsWith(`${field}:`), e1.details).toBe(true);
      const e2 = await grpcError(stream(cluster.client, req));
      expect(e2.code).toBe(grpc.status.INVALID_ARGUMENT);
    }
    // The context-length error says how long the prompt is and how long the context.
    const long = await grpcError(cluster.client.complete({ promptIds: Array.from({ length: 600 }, () => 5) }));
    expect(long.details).toContain('600 tokens');
    expect(long.details).toContain('512');
  });

  it('answers RESOURCE_EXHAUSTED when the queue is full, and recovers', async () => {
    await idle();
    const ctl = new AbortController();
    setMaxListeners(MAX_QUEUE + 20, ctl.signal); // one listener per call
    const calls = Array.from({ length: MAX_QUEUE + 10 }, () =>
      cluster.client.complete({ prompt: 'class A:\n', maxTokens: 300, ignoreEos: true }, { signal: ctl.signal }).then(() => null, (e: unknown) => e));
    const first = await Promise.race(calls.map((c) => c.then((e) => (e instanceof NodespeedError && e.code === grpc.status.RESOURCE_EXHAUSTED ? e : new Promise(() => {})))));
    expect((first as NodespeedError).details).toContain('queue full');
    ctl.abort();
    const results = await Promise.all(calls);
    // Calls still on their way when the first refusal came back were cancelled by the abort.
    const codes = results.map((e) => (e instanceof NodespeedError ? e.code : 'ok'));
    expect(codes.filter((c) => c === grpc.status.RESOURCE_EXHAUSTED).length).toBeGreaterThanOrEqual(1);
    expect(codes.every((c) => c === grpc.status.RESOURCE_EXHAUSTED || c === grpc.status.CANCELLED)).toBe(true);
    await idle();
    const ok = await cluster.client.complete({ prompt: 'x = ', maxTokens: 3, ignoreEos: true });
    expect(ok.tokenIds).toHaveLength(3);
  }, 60_000);

  it('Complete and ListModels answer', async () => {
    const models = await cluster.client.listModels();
    expect(models).toEqual([expect.objectContaining({ name: 'py-tiny', contextLength: 512, vocabSize: 2048, numLayers: 6 })]);
    const c = await cluster.client.complete({ prompt: 'import os\n\n', maxTokens: 48, ignoreEos: true });
    const ref = reference<PyTinyCase>(PY_TINY).cases.find((x) => x.text === 'import os\n\n')!;
    expect(c.promptIds).toEqual(ref.ids);
    expect(c.tokenIds).toEqual(ref.greedy_48);
    expect(c.text).toBe(ref.greedy_48_text);
    expect(c.usage).toEqual({ promptTokens: ref.ids.length, completionTokens: 48 });
  });

  it('serves grpc.health.v1 and server reflection', async () => {
    const health = grpc.loadPackageDefinition(protoLoader.loadSync(join(root, 'node_modules/grpc-health-check/proto/health/v1/health.proto'), { enums: String }));
    const Health = (health.grpc as never as { health: { v1: { Health: grpc.ServiceClientConstructor } } }).health.v1.Health;
    const hc = new Health(cluster.address, grpc.credentials.createInsecure());
    for (const service of ['', 'nodespeed.v1.Inference']) {
      const res = await new Promise<{ status: string }>((resolve, reject) =>
        (hc as never as { check: (r: object, cb: (e: Error | null, r: { status: string }) => void) => void })
          .check({ service }, (e, r) => (e ? reject(e) : resolve(r))));
      expect(res.status).toBe('SERVING');
    }
    hc.close();
    const refl = grpc.loadPackageDefinition(protoLoader.loadSync(join(root, 'node_modules/@grpc/reflection/build/proto/grpc/reflection/v1/reflection.proto'), { keepCase: true }));
    const Reflection = (refl.grpc as never as { reflection: { v1: { ServerReflection: grpc.ServiceClientConstructor } } }).reflection.v1.ServerReflection;
    const rc = new Reflection(cluster.address, grpc.credentials.createInsecure());
    const call = (rc as never as { ServerReflectionInfo: () => grpc.ClientDuplexStream<object, Record<string, unknown>> }).ServerReflectionInfo();
    const answers: Record<string, unknown>[] = [];
    const done = new Promise<void>((resolve, reject) => {
      call.on('data', (d) => {
        answers.push(d);
        if (answers.length === 2) call.end();
      });
      call.on('end', () => resolve());
      call.on('error', reject);
    });
    call.write({ list_services: '*' });
    call.write({ file_containing_symbol: 'nodespeed.v1.Inference' });
    await done;
    rc.close();
    const services = (answers[0]!.list_services_response as { service: { name: string }[] }).service.map((s) => s.name);
    expect(services).toContain('nodespeed.v1.Inference');
    const files = (answers[1]!.file_descriptor_response as { file_descriptor_proto: Buffer[] }).file_descriptor_proto;
    expect(files.length).toBeGreaterThan(0);
    expect(Buffer.concat(files).toString('latin1')).toContain('GenerateRequest');
  });

  it('a worker started without the job\'s certificate cannot join; the cluster is untouched', async () => {
    const r = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
      const p = spawn(process.execPath, [join(root, 'dist/worker/main.js')], {
        env: { ...process.env, NODESPEED_JOB_TOKEN: 'not-the-token', NODESPEED_COORDINATOR: cluster.address, RANK: '0' },
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      let err = '';
      p.stderr!.on('data', (d: Buffer) => (err += d.toString()));
      p.on('exit', (code) => resolve({ code, stderr: err }));
    });
    expect(r.code).not.toBe(0);
    // Joining takes this job's client certificate (test/security/attacks.test.ts tries without one).
    expect(r.stderr).toContain('NODESPEED_JOB_SECRETS is not set');
    // The cluster is untouched.
    const s = await cluster.client.clusterStatus();
    expect(s.workers.map((w) => w.state)).toEqual(['serving', 'serving']);
  });

  it('nodespeed status --json lists every worker; generate --server equals generate --model', () => {
    const st = spawnSync(process.execPath, [BIN, 'status', '--server', cluster.address, '--json'], { encoding: 'utf8' });
    expect(st.status, st.stderr).toBe(0);
    const s = JSON.parse(st.stdout) as { workers: Record<string, unknown>[]; tp: number };
    expect(s.tp).toBe(2);
    expect(s.workers).toHaveLength(2);
    s.workers.forEach((w, i) => {
      expect(w).toMatchObject({ rank: i, replica: 0, stage: 0, tpRank: i, host: 'localhost', state: 'serving' });
      expect(w.pid).toBeGreaterThan(0);
      expect(w.engine).toMatch(new RegExp(`^cpu.*tp ${i}/2`));  // the engine's own description, from its Ready
    });
    const human = spawnSync(process.execPath, [BIN, 'status', '--server', cluster.address], { encoding: 'utf8' });
    expect(human.stdout).toMatch(/RANK\s+REPLICA\s+STAGE\s+TP/);
    const args = ['--json', '--max-tokens', '20', '--temperature', '0.7', '--seed', '7', 'def add(a, b):\n'];
    const remote = spawnSync(process.execPath, [BIN, 'generate', '--server', cluster.address, ...args], { encoding: 'utf8' });
    const local = spawnSync(process.execPath, [BIN, 'generate', '--model', PY_TINY, '--device', 'cpu', ...args], { encoding: 'utf8' });
    expect(remote.status, remote.stderr).toBe(0);
    expect(local.status, local.stderr).toBe(0);
    const a = JSON.parse(remote.stdout) as Record<string, unknown>;
    const b = JSON.parse(local.stdout) as Record<string, unknown>;
    for (const k of ['prompt_ids', 'token_ids', 'text', 'finish_reason']) expect(a[k], k).toEqual(b[k]);
  }, 60_000);
});
