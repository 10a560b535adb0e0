// Heterogeneous serving end to end, real processes: a deployment file of two CPU groups (fast: tp 2
// on one "host", slow: f32 replicas elsewhere, each of its own thread count) over a hostfile whose
// "hosts" 127.0.0.2-3 are reached through a real sshd; each class routed by its groups' order and
// overflowing down it under load; RESOURCE_EXHAUSTED only when no allowed replica can take a
// request; and, on a one-seat replica, a realtime request preempting a batch stream that then
// finishes with exactly the tokens it would have produced (seeded); and a class with a stream
// interval, whose Generate and SSE streams carry the same tokens in one message per interval; and a
// class with exclusive prefill, whose prompt gets a step without the batch streams.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

import * as grpc from '@grpc/grpc-js';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import type { NodespeedClient } from '../../src/client/index.js';
import type { GenerateRequest } from '../../src/engine/index.js';
import { sshdAvailable, startSshd } from '../helpers/sshd.js';
import type { SshdHarness } from '../helpers/sshd.js';
import { BIN, PY_TINY, grpcError, launch, reference, root, workerProcesses } from '../serving/helpers.js';
import type { PyTinyCase } from '../serving/helpers.js';
import { faultFree, follow, path, seeded, until, workdir } from './helpers.js';
import type { Followed, Workdir } from './helpers.js';

const suite = sshdAvailable() ? describe : describe.skip;

/** 16-token prompts (py-tiny's reference prompts, repeated and cut), so that every budget is 16 + max tokens. */
function prompt16(i: number): number[] {
  const { cases } = reference<PyTinyCase>(PY_TINY);
  const all = cases.flatMap((c) => c.ids.slice(1));
  return [0, ...Array.from({ length: 15 }, (_, k) => all[(k + 5 * i) % all.length]!)];
}

suite('a mixed deployment over ssh hosts: placement, class routing, overflow', () => {
  let sshd: SshdHarness;
  let w: Workdir;
  beforeAll(async () => {
    sshd = await startSshd({ hosts: ['127.0.0.2', '127.0.0.3'] });
    w = workdir();
  });
  afterAll(async () => {
    await sshd?.stop();
    w?.remove();
  });

  it('places each group on its hosts; batch fills slow then overflows to fast, standard and realtime take fast; too big is refused', async () => {
    w.file('hostfile', 'localhost slots=1 device=cpu\n127.0.0.2 slots=2 device=cpu\n127.0.0.3 slots=1 device=cpu\n');
    const config = w.file('deploy.yaml', `model: ${PY_TINY}
hostfile: hostfile
groups:
  - name: fast
    device: cpu
    tp: 2
    hosts: [127.0.0.2]
    threads: 1
    kv_blocks: 24
  - name: slow
    device: cpu
    replicas: auto
    precision: f32
    threads: 1
    kv_blocks: 16
classes:
  realtime: { groups: [fast], ttft_p99_ms: 2000 }
  standard: { groups: [fast, slow] }
  batch: { groups: [slow, fast] }
`);
    // 64-token budgets: 4 blocks of 16; a slow replica (16 blocks) holds 4, the two hold 8.
    const batch = seeded(12, 48).map((r, i) => ({ ...r, promptIds: prompt16(i) }));
    const std = seeded(2, 24, 9100).map((r, i) => ({ ...r, promptIds: prompt16(20 + i) }));
    const local = await faultFree([...batch, ...std]);
    const cluster = await launch(PY_TINY, ['--config', config, '--heartbeat-interval', '0.25', '--metrics-port', '0'], { env: sshd.env, timeoutMs: 120_000 });
    try {
      expect(cluster.readyLine).toContain(' groups=fast:cpu/bf16-f32-f32/tp2xpp1x1,slow:cpu/f32-f32-f32/tp1xpp1x2 classes=realtime:fast,standard:fast+slow,batch:slow+fast');
      const st = await cluster.client.clusterStatus();
      // fast: py-tiny's bf16 weights as stored; the CPU computes and caches in f32.
      expect(st.groups.map((g) => [g.name, g.device, g.precision?.weights, g.precision?.kvCache, g.tp, g.replicas, g.threads])).toEqual([
        ['fast', 'cpu', 'bf16', 'f32', 2, [0], 1], ['slow', 'cpu', 'f32', 'f32', 1, [1, 2], 1]]);
      expect(st.workers.map((x) => [x.rank, x.replica, x.host, x.tpRank])).toEqual([
        [0, 0, '127.0.0.2', 0], [1, 0, '127.0.0.2', 1], [2, 1, 'localhost', 0], [3, 2, '127.0.0.3', 0]]);
      expect(st.replicas.map((r) => [r.id, r.group, r.kvBlocksTotal])).toEqual([[0, 'fast', 24], [1, 'slow', 16], [2, 'slow', 16]]);
      const json = spawnSync(process.execPath, [BIN, 'status', '--server', cluster.address, '--json'], { cwd: root, encoding: 'utf8' });
      expect(JSON.parse(json.stdout).groups.map((g: { name: string }) => g.name)).toEqual(['fast', 'slow']);

      // The whole flood at once: the first 8 batch requests fill slow, the other 4 overflow to fast.
      const batchRuns = batch.map((r) => follow(cluster.client, r, { priority: 'batch' }));
      const stdRuns = std.map((r) => follow(cluster.client, r, { priority: 0 }));
      const got = await Promise.all([...batchRuns, ...stdRuns]);
      got.forEach((g, i) => expect(g.tokenIds, `stream ${i}`).toEqual(local[i]!.tokenIds));
      const firstGroup = got.map((g) => path(g)[0]);
      expect(firstGroup.slice(0, 12).filter((g) => g === 'slow')).toHaveLength(8);
      expect(firstGroup.slice(0, 12).filter((g) => g === 'fast')).toHaveLength(4);
      expect(firstGroup.slice(12)).toEqual(['fast', 'fast']);
      const after = await cluster.client.clusterStatus();
      const cls = Object.fromEntries(after.classes.map((c) => [c.name, c]));
      expect([cls.batch!.routed, cls.batch!.overflowed, cls.batch!.routedByGroup]).toEqual(['12', '4', { slow: '8', fast: '4' }]);
      expect([cls.standard!.routed, cls.standard!.overflowed]).toEqual(['2', '0']);
      expect(cls.batch!.ttft!.count).toBe(12);
      expect(cls.batch!.itl!.count).toBeGreaterThan(12 * 40);

      // Realtime may only use fast: a budget larger than fast's cache is refused, naming the class and the replica.
      const big = await grpcError(cluster.client.complete({ promptIds: prompt16(30), maxTokens: 450, ignoreEos: true, priority: 'realtime' }));
      expect(big.details).toMatch(/^class realtime: no replica of groups fast can take the request: needs 30 KV blocks, replica 0 \(fast\) has 24$/);
      // ... while standard, which may overflow, takes fast too (30 blocks fit neither group here either).
      const rt = await follow(cluster.client, { ...std[0]!, maxTokens: 8 }, { priority: 'realtime' });
      expect(path(rt)).toEqual(['fast']);
      const m = await (await fetch(`http://${/ metrics=(\S+)/.exec(cluster.readyLine)![1]}/metrics`)).text();
      expect(m).toMatch(/^nodespeed_class_routed_total\{class="batch",group="slow"\} 8$/m);
      expect(m).toMatch(/^nodespeed_class_overflow_total\{class="batch",group="fast"\} 4$/m);
      expect(m).toMatch(/^nodespeed_class_rejected_total\{class="realtime"\} 1$/m);
      expect(m).toMatch(/^nodespeed_class_ttft_seconds\{class="batch",quantile="0.99"\} [\d.e-]+$/m);
      expect(m).toMatch(/^nodespeed_replica_info\{replica="1",group="slow",device="cpu",layout="tp 1 x pp 1"\} 1$/m);
      expect(m).toMatch(/^nodespeed_replica_precision_info\{replica="1",weights="f32",activations="f32",kv_cache="f32"\} 1$/m);

      // A class name the deployment does not have is refused, naming the field and the classes there are.
      const unknown = await grpcError(cluster.client.complete({ promptIds: prompt16(31), maxTokens: 4, priority: 'urgent' }));
      expect([unknown.code, unknown.details]).toEqual([grpc.status.INVALID_ARGUMENT, 'priority_class: unknown class "urgent" (this server has realtime, standard, batch)']);
      // The CLI: `generate --server --priority 150` falls in batch (the class with the largest priority <= 150), which goes to slow.
      const cli = (args: string[]) => spawnSync(process.execPath, [BIN, ...args], { cwd: root, encoding: 'utf8' });
      const gen = cli(['generate', '--server', cluster.address, '--priority', '150', '--max-tokens', '4', '--json', 'The quick brown fox']);
      expect(gen.status, gen.stderr).toBe(0);
      expect(JSON.parse(gen.stdout).token_ids.length).toBeGreaterThan(0);
      expect(cli(['generate', '--server', cluster.address, '--priority', 'not one', 'x']).stderr).toContain('--priority must be a class name');
      // `nodespeed status` (text): one row per group and per class, with its routings by group and overflows.
      const text = cli(['status', '--server', cluster.address]).stdout;
      expect(text).toMatch(/^GROUP +DEVICE +PRECISION +LAYOUT +REPLICAS +THREADS +MAX SEQS$/m);
      expect(text).toMatch(/^fast +cpu +bf16\/f32\/f32 +tp 2 x pp 1 +0 +1 +\d+$/m);
      expect(text).toMatch(/^slow +cpu +f32\/f32\/f32 +tp 1 x pp 1 +1,2 +1 +\d+$/m);
      expect(text).toMatch(/^batch +100 +slow>fast +- +0 +0 +0 +13 \(slow 9, fast 4\) +4 +0 +0 +[\d./]+ +[\d./]+$/m);
      expect(text).toMatch(/^realtime +-100 +fast +p99 <= 2000 ms +0 +0 +0 +1 \(fast 1\) +0 +1 +0 /m);
    } finally {
      expect(await cluster.stop()).toBe(0);
    }
    expect(workerProcesses()).toEqual([]);
  }, 240_000);
});

const PACED_MS = 50;

interface Messages {
  /** Per message: when it arrived and how many tokens it carried. */
  at: number[];
  counts: number[];
}

/** A Generate stream's messages; fails on a gap or a repeat. */
async function messages(client: NodespeedClient, r: GenerateRequest, priority: string): Promise<Messages & { tokenIds: number[] }> {
  const out = { tokenIds: [] as number[], at: [] as number[], counts: [] as number[] };
  for await (const m of client.generate({ promptIds: r.promptIds!, maxTokens: r.maxTokens!, ignoreEos: true, temperature: r.temperature!,
    topK: r.topK!, topP: r.topP!, seed: String(r.seed), priority })) {
    if (m.index !== out.tokenIds.length) throw new Error(`stream gap/repeat: message index ${m.index}, ${out.tokenIds.length} tokens received`);
    out.tokenIds.push(...m.tokenIds);
    out.at.push(performance.now());
    out.counts.push(m.tokenIds.length);
  }
  return out;
}

/** A /v1/completions SSE stream's events with tokens (each a write of the stream: one choice, so one event a write), their tokens by their logprobs. */
async function sse(base: string, model: string, r: GenerateRequest, priority: string): Promise<Messages & { text: string }> {
  const res = await fetch(`${base}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({
    model, prompt: r.promptIds, max_tokens: r.maxTokens, ignore_eos: true, temperature: r.temperature, top_k: r.topK, top_p: r.topP, seed: r.seed,
    logprobs: 1, stream: true, priority }) });
  expect(res.status, res.status === 200 ? '' : await res.text()).toBe(200);
  const out = { text: '', at: [] as number[], counts: [] as number[] };
  const decoder = new TextDecoder();
  let buf = '';
  for await (const chunk of res.body!) {
    buf += decoder.decode(chunk as Uint8Array, { stream: true });
    let end;
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const line = buf.slice(0, end);
      buf = buf.slice(end + 2);
      if (line === 'data: [DONE]') continue;
      const c = JSON.parse(line.slice('data: '.length)) as { choices: { text: string; logprobs: { tokens: string[] } | null }[] };
      const tokens = c.choices[0]?.logprobs?.tokens.length ?? 0;
      if (!tokens) continue;
      out.text += c.choices[0]!.text;
      out.at.push(performance.now());
      out.counts.push(tokens);
    }
  }
  return out;
}

/**
 * A paced stream: the first token at once (not held back for the interval), then one message per
 * interval at most, each with the tokens that came meanwhile, and the end at once; the same
 * request unpaced came in many more messages.
 */
function expectPaced(paced: Messages, unpaced: Messages): void {
  const n = paced.counts.length;
  const span = paced.at[n - 1]! - paced.at[0]!;
  const what = `tokens per message ${paced.counts.join(',')} over ${span.toFixed(0)} ms`;
  expect(n, what).toBeGreaterThanOrEqual(3);
  // Held back for an interval, the first message would carry dozens of tokens; a busy machine may
  // still put a few in it.
  expect(paced.counts[0], what).toBeLessThanOrEqual(10);
  const middle = paced.counts.slice(1, -1);
  expect(middle.reduce((x, y) => x + y, 0) / middle.length, what).toBeGreaterThanOrEqual(3);
  // Arrivals jitter (the 2 cores are shared): two messages of slack.
  expect(n, what).toBeLessThanOrEqual(4 + Math.floor(span / PACED_MS));
  expect(unpaced.counts.length, `unpaced: ${unpaced.counts.length} messages`).toBeGreaterThan(2 * n);
}

describe('preemption inside a replica', () => {
  let w: Workdir;
  beforeAll(() => {
    w = workdir();
  });
  afterAll(() => w?.remove());

  it('a realtime request at a full replica preempts the batch stream, which pauses and finishes with the tokens it would have produced; ' +
    'a class with a stream interval gets the same tokens in few messages', async () => {
    const config = w.file('deploy.yaml', `model: ${PY_TINY}
groups:
  - name: one
    device: cpu
    threads: 1
    max_seqs: 1
classes:
  realtime: { groups: [one] }
  batch: { groups: [one] }
  paced: { groups: [one], priority: 200, stream_interval_ms: ${PACED_MS} }
`);
    const [long, short] = [seeded(1, 400, 4242)[0]!, seeded(1, 24, 5151)[0]!];
    const local = await faultFree([long, short]);
    // The request timelines (NODESPEED_REQUEST_TRACE) of the coordinator and the replica driver.
    const trace = w.file('trace.jsonl', '');
    const cluster = await launch(PY_TINY, ['--config', config, '--heartbeat-interval', '0.25'], { timeoutMs: 90_000, env: { NODESPEED_REQUEST_TRACE: trace } });
    try {
      // Mid-stream (20 of its 400 tokens received), a realtime request arrives at the full replica (one seat).
      const seen: Followed = { tokenIds: [], at: [], groups: [] };
      const b = follow(cluster.client, long, { priority: 'batch' }, seen);
      b.catch(() => {});
      await until('the batch stream mid-way', () => seen.tokenIds.length >= 20);
      const rt = await follow(cluster.client, short, { priority: 'realtime' });
      const during = await cluster.client.clusterStatus();
      const batch = await b;
      expect(rt.tokenIds).toEqual(local[1]!.tokenIds);
      expect(batch.tokenIds).toEqual(local[0]!.tokenIds);
      // The realtime request did not wait for the batch stream's 400 tokens: it ran while batch was out of the batch.
      expect(rt.done!).toBeLessThan(batch.done!);
      const cls = Object.fromEntries(during.classes.map((c) => [c.name, c]));
      expect(cls.batch!.preemptions).toBe('1');
      expect(cls.realtime!.preemptions).toBe('0');
      // The replica's own count comes with its driver's heartbeat (every 0.25 s here), which the
      // realtime request's few tokens can outrun.
      await until('the replica reports one preemption', async () => (await cluster.client.clusterStatus()).replicas[0]!.preemptions === 1, 5_000);

      // The paced class (one stream message per 50 ms at most; py-tiny makes a token every ms or so): exactly the tokens of the same
      // seeded request unpaced, on the gRPC Generate stream and on the SSE stream alike.
      const req = seeded(1, 400, 6161)[0]!;
      const [ref] = await faultFree([req]);
      const unpaced = await messages(cluster.client, req, 'batch');
      const paced = await messages(cluster.client, req, 'paced');
      expect(unpaced.tokenIds).toEqual(ref!.tokenIds);
      expect(paced.tokenIds).toEqual(ref!.tokenIds);
      expectPaced(paced, unpaced);
      const http = `http://${/ http=(\S+)/.exec(cluster.readyLine)![1]}`;
      const model = (await cluster.client.clusterStatus()).model;
      const sseUnpaced = await sse(http, model, req, 'batch');
      const ssePaced = await sse(http, model, req, 'paced');
      expect(sseUnpaced.text).toBe(ref!.text);
      expect(ssePaced.text).toBe(ref!.text);
      expectPaced(ssePaced, sseUnpaced);
    } finally {
      expect(await cluster.stop()).toBe(0);
    }
    expect(workerProcesses()).toEqual([]);
    // Its timeline, stage by stage in time order (the two processes share the clock; 2 ms of slack
    // between them): it arrived, was routed, reached the driver while the batch stream held the one
    // seat, was admitted by preempting it, and its first token went back to the client.
    const lines = readFileSync(trace, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { t: number; p: string; id?: string; ev: string; cls?: string; running?: number; preemptions?: number });
    const rtId = lines.find((e) => e.ev === 'arrive' && e.cls === 'realtime')!.id!;
    const ev = Object.fromEntries(lines.filter((e) => e.id === rtId).map((e) => [e.ev, e]));
    const order = ['arrive', 'routed', 'recv', 'admitted', 'planned', 'sampled', 'sent', 'first_in', 'first_out', 'end'];
    for (let i = 1; i < order.length; i++) expect(ev[order[i]!]!.t - ev[order[i - 1]!]!.t).toBeGreaterThan(-2);
    expect(ev.recv!.running).toBe(1);
    expect(ev.admitted!.preemptions).toBe(1);
    // Each process's event loop, once a second, with its GC pauses in that second.
    const loops = lines.filter((e) => e.ev === 'loop') as unknown as { p: string; gc_ms: number; gc_major: number }[];
    expect(new Set(loops.map((e) => e.p))).toEqual(new Set(['coord', 'worker']));
    for (const l of loops) {
      expect(l.gc_ms).toBeGreaterThanOrEqual(0);
      expect(Number.isInteger(l.gc_major)).toBe(true);
    }
  }, 180_000);
});

describe('exclusive prefill end to end', () => {
  let w: Workdir;
  beforeAll(() => {
    w = workdir();
  });
  afterAll(() => w?.remove());

  // pp 2: the driver's micro-batches (Scheduler.next) take the same cut as its run-ahead steps.
  for (const pp of [1, 2]) it(`a class with exclusive_prefill in the deployment file (pp ${pp}): its prompt gets a step without the batch streams, every stream keeps its tokens`, async () => {
    const config = w.file(`deploy-pp${pp}.yaml`, `model: ${PY_TINY}
groups:
  - name: one
    device: cpu
    pp: ${pp}
    threads: 1
classes:
  realtime: { groups: [one], exclusive_prefill: true }
  batch: { groups: [one] }
`);
    const longs = seeded(3, 300, 8181);
    const short = seeded(1, 16, 9191)[0]!;
    const local = await faultFree([...longs, short]);
    const steps = w.file(`steps-pp${pp}.jsonl`, '');
    const cluster = await launch(PY_TINY, ['--config', config, '--heartbeat-interval', '0.25'], { timeoutMs: 90_000, env: { NODESPEED_STEP_TRACE: steps } });
    try {
      expect(cluster.readyLine).toBeTruthy();
      const seen = longs.map((): Followed => ({ tokenIds: [], at: [], groups: [] }));
      const batch = longs.map((r, i) => follow(cluster.client, r, { priority: 'batch' }, seen[i]));
      for (const b of batch) b.catch(() => {});
      await until('the batch streams decoding', () => seen.every((s) => s.tokenIds.length >= 20));
      const rt = await follow(cluster.client, short, { priority: 'realtime' });
      expect(rt.tokenIds).toEqual(local[3]!.tokenIds);
      for (const [i, b] of batch.entries()) expect((await b).tokenIds).toEqual(local[i]!.tokenIds);
    } finally {
      expect(await cluster.stop()).toBe(0);
    }
    // The driver's steps: one left the three batch streams out for the realtime prompt alone.
    const lines = readFileSync(steps, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { seqs: number; decodes: number; exclusive?: boolean });
    const exclusive = lines.filter((l) => l.exclusive);
    expect(exclusive.map((l) => [l.seqs, l.decodes])).toEqual([[1, 0]]);
    // Otherwise every running stream is in a step (pp 1) or split over the pipeline's micro-batches.
    expect(lines.filter((l) => l.seqs === 4 / pp).length).toBeGreaterThan(0);
  }, 120_000);
});
