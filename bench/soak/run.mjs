#!/usr/bin/env node
// Soak: a real `nodespeed launch` under a long, varied load through the public gRPC API. Between
// --min-streams and --max-streams concurrent streams (the number moves every 10 s), each request a
// random prompt and a random length, --cancel-rate of them cancelled part-way. Samples the resident
// memory of the launcher and of every worker every 5 s. Passes when no request failed, every KV
// block is free at the end, no failover happened, and memory is flat after the warm-up (each
// process's RSS grows by under 1 MiB/min over the last quarter, and its peak by under 32 MiB from
// the first half to the second).
// Writes bench/results/soak-<device>-<timestamp>.json.
//
// What moves: a worker's native memory (weights, KV cache, step scratch of at most --max-batch-tokens
// tokens, malloc arenas) is flat from the first step; its RSS moves with the V8 heap. Workers run
// with a fixed young generation (WORKER_NODE_FLAGS in src/launcher/cluster.ts): V8 resizing it showed
// as RSS steps of up to 30 MiB minutes apart. What remains is old-space garbage: each request's state
// lives long enough to be promoted and dies there, and V8 collects it when the old generation passes
// its limit (live + at least 8 MiB + the young generation) or its memory reducer runs, which under
// steady load can be more than 10 minutes apart. --gc-every S tells the two apart: every worker runs a
// full GC every S seconds (gc-probe.mjs) and the result adds the JS heap in use after each one. Such a
// run is a diagnostic (params.gc_every_s, diagnostic: true), not the bar.
//
//   npm run build && node bench/soak/run.mjs [--minutes 10] [--model models/py-tiny] [--min-streams 32] [--max-streams 64]
//        [--cancel-rate 0.03] [--max-tokens 256] [--launch-args '--num_cpu_workers 2 --replicas 2'] [--seed 1] [--gc-every 0]
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, hostname, loadavg, tmpdir, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { setMaxListeners } from 'node:events';

import { launch } from '../failover/load.mjs';
import { rng } from '../lib/rng.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const { forwardedEnv } = await import(join(root, 'dist', 'settings', 'index.js'));
// The code under test is the checkout as the run starts (edits made while it runs do not count).
let commit = process.env.NODESPEED_COMMIT ?? 'unknown';
try {
  const dirty = execFileSync('git', ['-C', root, 'status', '--porcelain', '--untracked-files=no'], { encoding: 'utf8' }).trim() ? '+dirty' : '';
  commit = execFileSync('git', ['-C', root, 'rev-parse', 'HEAD'], { encoding: 'utf8' }).trim() + dirty;
} catch { /* not a git checkout */ }
const { values: a } = parseArgs({
  options: {
    minutes: { type: 'string', default: '10' },
    model: { type: 'string', default: join(root, 'models', 'py-tiny') },
    'min-streams': { type: 'string', default: '32' },
    'max-streams': { type: 'string', default: '64' },
    'cancel-rate': { type: 'string', default: '0.03' },
    'max-tokens': { type: 'string', default: '256' },
    'launch-args': { type: 'string', default: '--num_cpu_workers 2 --replicas 2' },
    seed: { type: 'string', default: '1' },
    'gc-every': { type: 'string', default: '0' },
    out: { type: 'string' },
  },
});
const minutes = Number(a.minutes);
const minStreams = Number(a['min-streams']);
const maxStreams = Number(a['max-streams']);
const cancelRate = Number(a['cancel-rate']);
const maxTokens = Number(a['max-tokens']);
const gcEvery = Number(a['gc-every']);

const rand = rng(Number(a.seed));
const PROMPTS = ['import os\n\n', 'def fib(n):\n', 'class Stack:\n    def __init__(self):\n', '# parse a CSV file\nimport csv\n',
  'for i in range(10):\n', 'async def fetch(url):\n', '"""Utilities."""\nfrom typing import List\n\n', 'x = [i * i for i in'];

function rssKiB(pid) {
  try {
    return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);
  } catch {
    return null;
  }
}

/** Least-squares slope of (t, y) in units of y per minute. */
function slopePerMin(points) {
  if (points.length < 3) return null;
  const n = points.length;
  const mt = points.reduce((s, p) => s + p.t, 0) / n;
  const my = points.reduce((s, p) => s + p.y, 0) / n;
  let num = 0;
  let den = 0;
  for (const p of points) {
    num += (p.t - mt) * (p.y - my);
    den += (p.t - mt) ** 2;
  }
  return den ? (num / den) * 60_000 : null;
}

const { NodespeedClient } = await import(join(root, 'dist', 'client', 'index.js'));
const bin = join(root, 'bin', 'nodespeed');
const launchArgs = ['--model', a.model, '--port', '0', '--bind', '127.0.0.1', '--no-progress', ...a['launch-args'].split(/\s+/).filter(Boolean)];
// --gc-every: the workers load gc-probe.mjs through the job's env file (DeepSpeed's DS_ENV_FILE).
const gcDir = gcEvery > 0 ? mkdtempSync(join(tmpdir(), 'soak-gc-')) : null;
if (gcDir) {
  writeFileSync(join(gcDir, 'env'), `NODE_OPTIONS=--import=${join(root, 'bench', 'soak', 'gc-probe.mjs')}\nSOAK_GC_EVERY_MS=${gcEvery * 1000}\nSOAK_GC_DIR=${gcDir}\n`);
  process.env.DS_ENV_FILE = join(gcDir, 'env');
}
console.error(`soak: launching ${launchArgs.join(' ')}${gcDir ? ` (workers collect every ${gcEvery} s)` : ''}`);
const cluster = await launch(bin, launchArgs);
const client = new NodespeedClient(cluster.address);
const t0 = Date.now();
const end = t0 + minutes * 60_000;
const ctl = new AbortController();
setMaxListeners(0, ctl.signal);
const stats = { requests: 0, completed: 0, cancelled: 0, tokens: 0, errors: [] };
let active = maxStreams;
const loop = async (i) => {
  while (!ctl.signal.aborted) {
    if (i >= active) {
      await new Promise((r) => setTimeout(r, 200));
      continue;
    }
    const prompt = PROMPTS[Math.floor(rand() * PROMPTS.length)];
    const n = 1 + Math.floor(rand() * maxTokens);
    const cancelAt = rand() < cancelRate ? Math.floor(rand() * n) : -1;
    const req = new AbortController();
    const stop = () => req.abort();
    ctl.signal.addEventListener('abort', stop, { once: true });
    stats.requests++;
    let got = 0;
    try {
      for await (const m of client.generate({ prompt, maxTokens: n, ignoreEos: true, temperature: 0.8, topK: 40, seed: String(Math.floor(rand() * 2 ** 31)) },
        { signal: req.signal, timeoutMs: 120_000 })) {
        if (m.index !== got) throw new Error(`gap/repeat: index ${m.index} after ${got} tokens`);
        got += m.tokenIds.length;
        if (cancelAt >= 0 && got >= cancelAt) {
          req.abort();
          break;
        }
      }
      if (req.signal.aborted && !ctl.signal.aborted) stats.cancelled++;
      else if (got !== n) throw new Error(`${got} tokens of ${n}`);
      else stats.completed++;
    } catch (err) {
      if (!ctl.signal.aborted && !req.signal.aborted) stats.errors.push(`${new Date().toISOString()} loop ${i}: ${err.message}`);
      else if (!ctl.signal.aborted) stats.cancelled++;
    } finally {
      stats.tokens += got;
      ctl.signal.removeEventListener('abort', stop);
    }
  }
};
const loops = Array.from({ length: maxStreams }, (_, i) => loop(i));
const mover = setInterval(() => {
  active = minStreams + Math.floor(rand() * (maxStreams - minStreams + 1));
}, 10_000);

const samples = [];
let lastStatus;
while (Date.now() < end) {
  await new Promise((r) => setTimeout(r, 5000));
  lastStatus = await client.clusterStatus({ timeoutMs: 10_000 }).catch((err) => ({ error: err.message }));
  const workers = (lastStatus.workers ?? []).map((w) => ({ rank: w.rank, pid: w.pid, rss_kib: rssKiB(w.pid) }));
  samples.push({ t_ms: Date.now() - t0, active, launcher_rss_kib: rssKiB(cluster.proc.pid), workers, tokens: stats.tokens, requests: stats.requests,
    failures: lastStatus.failover?.failures ?? null });
  const s = samples[samples.length - 1];
  console.error(`soak: ${(s.t_ms / 60_000).toFixed(1)} min, ${active} streams, ${stats.requests} requests (${stats.errors.length} errors), ` +
    `${stats.tokens} tokens, launcher ${(s.launcher_rss_kib / 1024).toFixed(0)} MiB, workers ${workers.map((w) => (w.rss_kib / 1024).toFixed(0)).join('/')} MiB`);
}
clearInterval(mover);
ctl.abort();
await Promise.all(loops);
// Every stream ended: give the drivers a heartbeat to report their load, then read the KV state.
await new Promise((r) => setTimeout(r, 3000));
const final = await client.clusterStatus({ timeoutMs: 10_000 });
client.close();
await cluster.stop();

// Per process: RSS series; its slope over the second half and over the last quarter, and how much
// its peak grew from the first half to the second. A one-time step (the V8 heap or malloc growing
// to a new plateau) shows in the second-half slope but not in the last quarter's.
const series = (pick) => samples.map((s) => ({ t: s.t_ms, y: pick(s) })).filter((p) => p.y !== null && p.y !== undefined);
const processes = { launcher: series((s) => s.launcher_rss_kib),
  ...Object.fromEntries([...new Set(samples.flatMap((s) => s.workers.map((w) => w.pid)))].map((pid) =>
    [`worker ${pid}`, series((s) => s.workers.find((w) => w.pid === pid)?.rss_kib ?? null)])) };
const run = minutes * 60_000;
const memory = Object.fromEntries(Object.entries(processes).map(([name, pts]) => {
  const peak = (xs) => Math.max(...xs.map((p) => p.y));
  const first = pts.filter((p) => p.t < run / 2);
  const second = pts.filter((p) => p.t >= run / 2);
  return [name, { second_half_kib_per_min: slopePerMin(second), last_quarter_kib_per_min: slopePerMin(pts.filter((p) => p.t >= (3 * run) / 4)),
    peak_growth_kib: first.length && second.length ? peak(second) - peak(first) : null, end_kib: pts.at(-1)?.y ?? null }];
}));
// --gc-every: per worker, the JS heap in use after each full GC (what it retains) and what the GCs cost.
const liveHeap = gcDir && Object.fromEntries(readdirSync(gcDir).filter((f) => f.endsWith('.jsonl')).map((f) => {
  const rows = readFileSync(join(gcDir, f), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  const span = rows.at(-1).t_ms;
  const ms = rows.map((r) => r.gc_ms).sort((x, y) => x - y);
  return [`worker ${f.replace('.jsonl', '')}`, { gcs: rows.length, first_kib: rows[0].heap_used_kib, last_kib: rows.at(-1).heap_used_kib,
    max_kib: Math.max(...rows.map((r) => r.heap_used_kib)),
    second_half_kib_per_min: slopePerMin(rows.filter((r) => r.t_ms >= span / 2).map((r) => ({ t: r.t_ms, y: r.heap_used_kib }))),
    gc_ms_median: ms[Math.floor(ms.length / 2)], gc_ms_max: ms.at(-1) }];
}));
if (gcDir) rmSync(gcDir, { recursive: true, force: true });
const kv = final.replicas.map((r) => ({ replica: r.id, total: r.kvBlocksTotal, free: r.kvBlocksFree, running: r.running, queued: r.queued }));
// Flat after warm-up: over the last quarter RSS grows by less than 1 MiB per minute, and the second
// half's peak is within 32 MiB of the first half's (a leak of one request's state per request would
// be tens of MiB per minute at these rates, and would keep growing to the end).
const FLAT_KIB_PER_MIN = 1024;
const STEP_KIB = 32 * 1024;
const flat = Object.values(memory).every((m) => m.last_quarter_kib_per_min !== null && m.last_quarter_kib_per_min < FLAT_KIB_PER_MIN &&
  m.peak_growth_kib !== null && m.peak_growth_kib < STEP_KIB);
const verdict = {
  no_errors: stats.errors.length === 0,
  kv_all_free: kv.every((r) => r.free === r.total && r.running === 0 && r.queued === 0),
  no_failover: final.failover.failures === 0,
  memory_flat_after_warmup: flat,
};
const result = {
  bench: 'soak', date: new Date().toISOString(), commit, model: a.model, launch_args: launchArgs.join(' '),
  machine: { host: hostname(), cpus: cpus().length, cpu_model: cpus()[0]?.model, mem_gib: +(totalmem() / 2 ** 30).toFixed(1), loadavg_1m: loadavg()[0] },
  // The registry's worker settings set for this run (the launch and its ranks get them), e.g. NODESPEED_HEAP_GROWING_PERCENT.
  env: forwardedEnv(),
  params: { minutes, min_streams: minStreams, max_streams: maxStreams, cancel_rate: cancelRate, max_tokens: maxTokens, seed: Number(a.seed), gc_every_s: gcEvery },
  diagnostic: gcEvery > 0,
  totals: { requests: stats.requests, completed: stats.completed, cancelled: stats.cancelled, errors: stats.errors.length, tokens: stats.tokens,
    tok_s: +(stats.tokens / (minutes * 60)).toFixed(1) },
  errors: stats.errors.slice(0, 50), kv_at_end: kv, failover: final.failover, memory, ...(liveHeap ? { live_heap_after_gc: liveHeap } : {}),
  flat_kib_per_min: FLAT_KIB_PER_MIN, step_kib: STEP_KIB,
  verdict, pass: Object.values(verdict).every(Boolean), samples,
};
const out = a.out ?? join(root, 'bench', 'results', `soak-cpu-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, JSON.stringify(result, null, 2) + '\n');
console.log(JSON.stringify({ out, totals: result.totals, verdict, pass: result.pass, memory, ...(liveHeap ? { live_heap_after_gc: liveHeap } : {}) }, null, 2));
process.exit(result.pass ? 0 : 1);
