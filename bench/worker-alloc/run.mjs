#!/usr/bin/env node
// What a replica driver allocates per sampled token under a flood: a real launch (one CPU replica
// of --model, --max-seqs sequences, enough KV blocks to fill them) fed by bench/hetero's load
// generators (a closed-loop batch flood of --concurrency streams, --prompt-len + --new-tokens each,
// paced at 50 ms, and 4 realtime requests a second), the worker's heap sampled (hook.mjs) over a
// window in the middle of the load, its steps counted from NODESPEED_STEP_TRACE. Reports bytes
// allocated per step and per sampled token, the top allocating functions, and the worker's
// event-loop utilization (on a shared 2-core machine that also counts waits for a core: compare
// the bytes). The engine's speed does not change the bytes per token, so the figure stands for a
// GPU driver too, where 60k+ tokens a second make each KB a token ~60 MB/s of garbage.
//   npm run build && node bench/worker-alloc/run.mjs [--survivors] [--runs 2] [--out FILE]
import { spawn } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, hostname, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '..', '..');
const { values: a } = parseArgs({ options: {
  model: { type: 'string', default: join(root, 'models', 'py-tiny') },
  'max-seqs': { type: 'string', default: '128' },
  concurrency: { type: 'string', default: '256' },
  'prompt-len': { type: 'string', default: '32' },
  'new-tokens': { type: 'string', default: '128' },
  runs: { type: 'string', default: '1' },
  survivors: { type: 'boolean', default: false },
  port: { type: 'string', default: '50611' },
  out: { type: 'string' },
} });
const LOAD_S = 26, START_S = 14, END_S = 24;
let commit = 'unknown';
try {
  const dirty = execFileSync('git', ['-C', root, 'status', '--porcelain', '--untracked-files=no'], { encoding: 'utf8' }).trim() ? '+dirty' : '';
  commit = execFileSync('git', ['-C', root, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim() + dirty;
} catch { /* not a checkout */ }

const exited = (p) => new Promise((r) => (p.exitCode !== null ? r() : p.once('exit', () => r())));

async function once(work) {
  const seqs = Number(a['max-seqs']);
  const blocks = Math.ceil(seqs * 2 * (Number(a['prompt-len']) + Number(a['new-tokens'])) / 16);
  writeFileSync(join(work, 'deploy.yaml'), `model: ${resolve(a.model)}\ngroups:\n  - name: cpu\n    device: cpu\n    replicas: 1\n    max_seqs: ${seqs}\n    threads: 1\n` +
    `classes:\n  realtime: { groups: [cpu], exclusive_prefill: true }\n  batch: { groups: [cpu], stream_interval_ms: 50 }\n`);
  const env = { ...process.env, NODESPEED_STEP_TRACE: join(work, 'steps.jsonl'), WORKER_ALLOC_DIR: work, WORKER_ALLOC_START_S: String(START_S),
    WORKER_ALLOC_END_S: String(END_S), WORKER_ALLOC_SURVIVORS: a.survivors ? '1' : '0', NODE_OPTIONS: `--import ${join(here, 'hook.mjs')}` };
  const launch = spawn(process.execPath, [join(root, 'bin', 'nodespeed'), 'launch', '--config', join(work, 'deploy.yaml'), '--port', a.port,
    '--bind', '127.0.0.1', '--kv-blocks', String(blocks)], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  launch.stdout.on('data', (d) => (log += d));
  launch.stderr.on('data', (d) => (log += d));
  try {
    for (let i = 0; !/nodespeed ready/.test(log); i++) {
      if (i > 240 || launch.exitCode !== null) throw new Error(`bench/worker-alloc: the launch did not become ready:\n${log}`);
      await new Promise((r) => setTimeout(r, 250));
    }
    const load = (mode, extra) => spawn(process.execPath, [join(root, 'bench', 'hetero', 'load.mjs'), '--address', `127.0.0.1:${a.port}`, '--mode', mode,
      '--duration', String(LOAD_S), ...extra], { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, NODE_OPTIONS: '' } });
    const flood = load('flood', ['--concurrency', a.concurrency, '--prompt-len', a['prompt-len'], '--new-tokens', a['new-tokens'], '--priority', 'batch']);
    const rt = load('realtime', ['--rate', '4', '--prompt-len', '128', '--new-tokens', '16', '--priority', 'realtime']);
    await Promise.all([exited(flood), exited(rt)]);
  } finally {
    launch.kill('SIGINT');
    await exited(launch);
  }
  const file = readdirSync(work).find((f) => f.endsWith('.heapprofile.json'));
  if (!file) throw new Error(`bench/worker-alloc: the worker wrote no heap profile (its window is ${START_S}-${END_S} s after it started)`);
  const { t0, ms, elu, profile } = JSON.parse(readFileSync(join(work, file), 'utf8'));
  const steps = readFileSync(join(work, 'steps.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l))
    .filter((s) => s.epochMs >= t0 && s.epochMs < t0 + ms);
  const tokens = steps.reduce((n, s) => n + (s.sampled ?? 0), 0);
  const byFn = new Map();
  let total = 0;
  const walk = (n) => {
    const f = n.callFrame;
    const fn = `${f.functionName || '(anon)'} ${f.url.replace(/^file:\/\//, '').replace(root + '/', '')}:${f.lineNumber + 1}`;
    total += n.selfSize;
    byFn.set(fn, (byFn.get(fn) ?? 0) + n.selfSize);
    for (const c of n.children) walk(c);
  };
  walk(profile.head);
  return { window_ms: Math.round(ms), steps: steps.length, sampled_tokens: tokens, sampled_per_step: Math.round((10 * tokens) / steps.length) / 10,
    bytes_per_token: Math.round(total / tokens), bytes_per_step: Math.round(total / steps.length), loop_utilization: Math.round(elu * 1000) / 1000,
    top: [...byFn].sort((x, y) => y[1] - x[1]).slice(0, 15).map(([name, b]) => ({ name, bytes_per_token: Math.round(b / tokens), pct: Math.round((1000 * b) / total) / 10 })) };
}

const runs = [];
for (let i = 0; i < Number(a.runs); i++) {
  const work = mkdtempSync(join(tmpdir(), 'nodespeed-worker-alloc-'));
  try {
    const r = await once(work);
    runs.push(r);
    console.log(`run ${i + 1}: ${r.bytes_per_token} B a sampled token (${r.bytes_per_step} a step of ${r.sampled_per_step}; ${r.steps} steps in ${r.window_ms} ms), ` +
      `worker loop ${(100 * r.loop_utilization).toFixed(1)}% busy${a.survivors ? ' (survivors of the scavenges only)' : ''}`);
    for (const t of r.top.slice(0, 10)) console.log(`  ${String(t.bytes_per_token).padStart(6)} B/token ${String(t.pct).padStart(5)}%  ${t.name}`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
const out = { bench: 'worker-alloc', date: new Date().toISOString(), commit, machine: `${hostname()}: ${cpus().length} x ${cpus()[0]?.model}`,
  command: `node bench/worker-alloc/run.mjs ${process.argv.slice(2).join(' ')}`.trim(), survivors: a.survivors, runs };
const file = a.out ?? join(root, 'bench', 'results', `worker-alloc-vm-${commit}-${out.date.replace(/[:.]/g, '-')}.json`);
mkdirSync(dirname(file), { recursive: true });
writeFileSync(file, JSON.stringify(out, null, 2) + '\n');
console.log(`wrote ${file}`);
