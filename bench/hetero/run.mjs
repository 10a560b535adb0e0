#!/usr/bin/env node
// Heterogeneous serving benchmark: a fast replica (one GPU; on a CPU-only machine, a CPU replica
// with more threads) plus slow CPU replicas on the same machine, under a mixed load through the
// public gRPC API of real `nodespeed launch`es: a realtime stream at a fixed rate plus a flood of
// batch requests (load.mjs, each in a process of its own). One run measures, on one machine:
//
//   hetero   launch --config with groups fast (tp 1, 1 replica) + slow (--slow-replicas CPU
//            replicas of --slow-threads threads), classes realtime -> [fast] (TTFT p99 target
//            --ttft-target), standard -> [fast, slow], batch -> [slow, fast]:
//              1. the realtime stream alone (its TTFT p99 with no batch load: the baseline)
//              2. the realtime stream + the batch flood: realtime TTFT p99, total generated tok/s
//   fast     the fast group alone: the batch flood (its tok/s alone), then the same mixed load as 2
//            with every request in one class (FIFO: no priority, no preemption): the comparison
//   slow     the slow group alone: the batch flood (its tok/s alone)
//
// Bars: realtime TTFT p99 under the flood <= 1.5x its value
// alone, and total tok/s under the mixed load >= fast alone + 0.8 x slow alone.
//
//   npm run build && node bench/hetero/run.mjs                     # CPU: py-tiny, fast = 1 replica of 2 threads, slow = 1 of 1
//   node bench/hetero/run.mjs --device cuda --model /tmp/llama-1b  # one GPU (bf16) + 2 CPU replicas of 6 threads (int8)
//
// Writes bench/results/hetero-<device>-<commit>.json (machine, commit, every phase, the bars).
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const { values: a } = parseArgs({
  options: {
    device: { type: 'string', default: 'cpu' },
    model: { type: 'string', default: join(root, 'models', 'py-tiny') },
    'fast-threads': { type: 'string', default: '2' },
    'fast-max-seqs': { type: 'string' },
    'fast-max-batch-tokens': { type: 'string' },
    'slow-replicas': { type: 'string' },
    'slow-threads': { type: 'string' },
    'slow-precision': { type: 'string' },
    'slow-max-seqs': { type: 'string' },
    'ttft-target': { type: 'string' },
    'rt-rate': { type: 'string' },
    'rt-prompt': { type: 'string' },
    'rt-tokens': { type: 'string' },
    'batch-concurrency': { type: 'string' },
    'batch-prompt': { type: 'string' },
    'batch-tokens': { type: 'string' },
    'alone-s': { type: 'string' },
    'mixed-s': { type: 'string' },
    out: { type: 'string' },
  },
});
const gpu = a.device === 'cuda';
// Defaults per device: GPU host (one GPU, 16 cores; a 1B model) or this 2-core CPU box (py-tiny).
const d = gpu
  ? { slowReplicas: 2, slowThreads: 6, ttft: 300, rtRate: 4, rtPrompt: 128, rtTokens: 64, conc: 512, bPrompt: 256, bTokens: 128, alone: 15, mixed: 25,
    fastMaxSeqs: 128, fastMaxBatchTokens: 512, slowMaxSeqs: 16, slowPrecision: 'int8' }
  : { slowReplicas: 1, slowThreads: 1, ttft: 2000, rtRate: 2, rtPrompt: 32, rtTokens: 16, conc: 24, bPrompt: 64, bTokens: 48, alone: 20, mixed: 20,
    fastMaxSeqs: 32, fastMaxBatchTokens: 128, slowMaxSeqs: 8, slowPrecision: 'auto' };
const o = {
  slowReplicas: Number(a['slow-replicas'] ?? d.slowReplicas), slowThreads: Number(a['slow-threads'] ?? d.slowThreads),
  ttftTarget: Number(a['ttft-target'] ?? d.ttft), rtRate: Number(a['rt-rate'] ?? d.rtRate), rtPrompt: Number(a['rt-prompt'] ?? d.rtPrompt),
  rtTokens: Number(a['rt-tokens'] ?? d.rtTokens), conc: Number(a['batch-concurrency'] ?? d.conc), bPrompt: Number(a['batch-prompt'] ?? d.bPrompt),
  bTokens: Number(a['batch-tokens'] ?? d.bTokens), aloneS: Number(a['alone-s'] ?? d.alone), mixedS: Number(a['mixed-s'] ?? d.mixed),
  fastMaxSeqs: Number(a['fast-max-seqs'] ?? d.fastMaxSeqs), fastMaxBatchTokens: Number(a['fast-max-batch-tokens'] ?? d.fastMaxBatchTokens),
  slowMaxSeqs: Number(a['slow-max-seqs'] ?? d.slowMaxSeqs), slowPrecision: a['slow-precision'] ?? d.slowPrecision,
};
const config = JSON.parse(readFileSync(join(a.model, 'config.json'), 'utf8'));
const vocab = config.vocab_size;

const fastGroup = `  - name: fast
    device: ${gpu ? 'cuda' : 'cpu'}
    replicas: 1
    max_seqs: ${o.fastMaxSeqs}
    max_batch_tokens: ${o.fastMaxBatchTokens}${gpu ? '' : `\n    threads: ${a['fast-threads']}`}
`;
const slowGroup = `  - name: slow
    device: cpu
    replicas: ${o.slowReplicas}
    threads: ${o.slowThreads}
    precision: ${o.slowPrecision}
    max_seqs: ${o.slowMaxSeqs}
`;
const deployments = {
  hetero: `model: ${a.model}\ngroups:\n${fastGroup}${slowGroup}classes:\n  realtime: { groups: [fast], ttft_p99_ms: ${o.ttftTarget} }\n` +
    '  standard: { groups: [fast, slow] }\n  batch: { groups: [slow, fast] }\n',
  fast: `model: ${a.model}\ngroups:\n${fastGroup}`,
  slow: `model: ${a.model}\ngroups:\n${slowGroup}`,
};

const work = mkdtempSync(join(tmpdir(), 'nodespeed-bench-hetero-'));
const log = (line) => process.stderr.write(`bench/hetero: ${line}\n`);

function launch(name) {
  const file = join(work, `${name}.yaml`);
  writeFileSync(file, deployments[name]);
  const proc = spawn(process.execPath, [join(root, 'bin', 'nodespeed'), 'launch', '--config', file, '--port', '0', '--http-port', '0', '--bind', '127.0.0.1', '--no-progress',
    '--heartbeat-interval', '0.5', '--request-timeout', '120'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  proc.stderr.on('data', (x) => (err += x));
  return new Promise((ok, fail) => {
    let out = '';
    proc.stdout.on('data', (x) => {
      out += x;
      const line = out.split('\n').find((l) => l.startsWith('nodespeed ready '));
      if (line) ok({ address: line.split(' ')[2], readyLine: line, stop: () => new Promise((r) => (proc.once('exit', r), proc.kill('SIGINT'))) });
    });
    proc.once('exit', (code) => fail(new Error(`launch ${name} exited with ${code}:\n${err.slice(-4000)}`)));
  });
}

/** Runs load.mjs processes side by side; resolves with their results. */
function load(address, runs) {
  return Promise.all(runs.map((r) => new Promise((ok, fail) => {
    const args = [join(root, 'bench', 'hetero', 'load.mjs'), '--address', address, '--vocab', String(vocab), ...r];
    const p = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout.on('data', (x) => (out += x));
    p.once('exit', (code) => (code === 0 ? ok(JSON.parse(out)) : fail(new Error(`load ${r.join(' ')} exited with ${code}`))));
  })));
}

const realtime = (s, priority = ['--priority', 'realtime']) => ['--mode', 'realtime', '--rate', String(o.rtRate), '--duration', String(s),
  '--prompt-len', String(o.rtPrompt), '--new-tokens', String(o.rtTokens), '--salt', '1', ...priority];
const flood = (s, priority = ['--priority', 'batch']) => ['--mode', 'flood', '--concurrency', String(o.conc), '--duration', String(s),
  '--prompt-len', String(o.bPrompt), '--new-tokens', String(o.bTokens), '--salt', '2', ...priority];

function pct(values, p) {
  const v = [...values].sort((x, y) => x - y);
  return v.length ? v[Math.min(v.length - 1, Math.max(0, Math.ceil(p * v.length) - 1))] : null;
}

/** TTFT percentiles of a realtime run's completed requests. */
function ttft(r) {
  const t = r.requests.filter((q) => q.first !== null).map((q) => q.first - q.start);
  return { requests: r.requests.length, with_first_token: t.length, errors: r.requests.filter((q) => q.error).length,
    p50_ms: pct(t, 0.5), p90_ms: pct(t, 0.9), p99_ms: pct(t, 0.99), max_ms: pct(t, 1) };
}

/** Tokens per second of some runs between t0 + warm-up and the end of the shortest run. */
function tokS(runs, warmS = 3) {
  const from = Math.max(...runs.map((r) => r.t0)) + warmS * 1000;
  const to = Math.min(...runs.map((r) => r.until));
  let n = 0;
  for (const r of runs) for (const [at, k] of r.bins) if (at >= from && at < to) n += k;
  return { tok_s: (n * 1000) / (to - from), window_s: (to - from) / 1000, tokens: n };
}

async function status(address) {
  const { NodespeedClient } = await import(join(root, 'dist', 'client', 'index.js'));
  const c = new NodespeedClient(address);
  try {
    return await c.clusterStatus();
  } finally {
    c.close();
  }
}

/** A short warm-up (first steps, graphs, caches) that is not measured. */
const warm = (address) => load(address, [['--mode', 'flood', '--concurrency', '4', '--duration', '3', '--prompt-len', '16', '--new-tokens', '8', '--salt', '9']]);

function commit() {
  if (process.env.NODESPEED_COMMIT) return process.env.NODESPEED_COMMIT;
  const r = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : 'unknown';
}

const gpuName = gpu ? spawnSync('nvidia-smi', ['--query-gpu=name', '--format=csv,noheader'], { encoding: 'utf8' }).stdout?.split('\n')[0]?.trim() : undefined;
const result = {
  bench: 'hetero', date: new Date().toISOString(), commit: commit(), device: a.device, model: a.model,
  machine: { cpus: cpus().length, cpu_model: cpus()[0]?.model, mem_gib: +(totalmem() / 2 ** 30).toFixed(1), loadavg_1m_at_start: loadavg()[0], gpu: gpuName },
  command: `node bench/hetero/run.mjs ${process.argv.slice(2).join(' ')}`.trim(),
  settings: o, deployments, phases: {},
};
try {
  let c = await launch('hetero');
  log(c.readyLine);
  try {
    await warm(c.address);
    const [alone] = await load(c.address, [realtime(o.aloneS)]);
    result.phases.realtime_alone = { ttft: ttft(alone), loadavg_1m_at_end: loadavg()[0] };
    log(`realtime alone: TTFT p99 ${result.phases.realtime_alone.ttft.p99_ms} ms`);
    const [rt, fl] = await load(c.address, [realtime(o.mixedS), flood(o.mixedS)]);
    const st = await status(c.address);
    result.phases.hetero_mixed = { ttft: ttft(rt), total: tokS([rt, fl]), batch_requests: fl.requests.length,
      loadavg_1m_at_end: loadavg()[0], classes: st.classes, replicas: st.replicas.map((r) => ({ id: r.id, group: r.group, generated: r.generatedTokens, preemptions: r.preemptions, step_ms: r.stepMs })) };
    log(`hetero mixed: realtime TTFT p99 ${result.phases.hetero_mixed.ttft.p99_ms} ms, total ${result.phases.hetero_mixed.total.tok_s.toFixed(1)} tok/s`);
  } finally {
    await c.stop();
  }
  c = await launch('fast');
  try {
    await warm(c.address);
    const [fl] = await load(c.address, [flood(o.mixedS, [])]);
    result.phases.fast_alone = { total: tokS([fl]), loadavg_1m_at_end: loadavg()[0] };
    log(`fast alone: ${result.phases.fast_alone.total.tok_s.toFixed(1)} tok/s`);
    const [rt, fl2] = await load(c.address, [realtime(o.mixedS, []), flood(o.mixedS, [])]);
    result.phases.fast_fifo_mixed = { ttft: ttft(rt), total: tokS([rt, fl2]), loadavg_1m_at_end: loadavg()[0] };
    log(`fast, FIFO, mixed: realtime TTFT p99 ${result.phases.fast_fifo_mixed.ttft.p99_ms} ms, total ${result.phases.fast_fifo_mixed.total.tok_s.toFixed(1)} tok/s`);
  } finally {
    await c.stop();
  }
  c = await launch('slow');
  try {
    await warm(c.address);
    const [fl] = await load(c.address, [flood(o.mixedS, [])]);
    result.phases.slow_alone = { total: tokS([fl]), loadavg_1m_at_end: loadavg()[0] };
    log(`slow alone: ${result.phases.slow_alone.total.tok_s.toFixed(1)} tok/s`);
  } finally {
    await c.stop();
  }
  const p = result.phases;
  const ttftRatio = p.hetero_mixed.ttft.p99_ms / p.realtime_alone.ttft.p99_ms;
  const need = p.fast_alone.total.tok_s + 0.8 * p.slow_alone.total.tok_s;
  result.bars = {
    realtime_ttft_p99_ratio: ttftRatio, realtime_ttft_ok: ttftRatio <= 1.5,
    total_tok_s: p.hetero_mixed.total.tok_s, fast_plus_80pct_slow_tok_s: need, throughput_ok: p.hetero_mixed.total.tok_s >= need,
    over_fifo: { realtime_ttft_p99: p.fast_fifo_mixed.ttft.p99_ms / p.hetero_mixed.ttft.p99_ms, tok_s: p.hetero_mixed.total.tok_s / p.fast_fifo_mixed.total.tok_s },
  };
  log(`bars: realtime TTFT p99 ${ttftRatio.toFixed(2)}x its value alone (<= 1.5: ${result.bars.realtime_ttft_ok}); total ${p.hetero_mixed.total.tok_s.toFixed(1)} tok/s ` +
    `vs fast alone + 80% slow alone ${need.toFixed(1)} (${result.bars.throughput_ok}); against one fast replica with FIFO: TTFT p99 ` +
    `${p.fast_fifo_mixed.ttft.p99_ms} ms there, tok/s x${result.bars.over_fifo.tok_s.toFixed(2)}`);
} finally {
  result.machine.loadavg_at_end = loadavg();
  rmSync(work, { recursive: true, force: true });
}
const dir = join(root, 'bench', 'results');
mkdirSync(dir, { recursive: true });
const file = a.out ?? join(dir, `hetero-${gpu ? (gpuName ?? 'cuda').toLowerCase().replace(/[^a-z0-9]+/g, '-') : 'cpu'}-${result.commit}.json`);
writeFileSync(file, JSON.stringify(result, null, 2) + '\n');
log(`wrote ${file}`);
