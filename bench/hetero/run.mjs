#!/usr/bin/env node
// Heterogeneous serving benchmark: a fast replica (one GPU; on a CPU-only machine, a CPU replica)
// plus slow CPU replicas on the same machine, under a mixed load through the public gRPC API of real
// `nodespeed launch`es: a realtime stream at a fixed rate plus a flood of batch requests (load.mjs,
// each in a process of its own).
//
// The slow group is pinned to --slow-cpus (default: the last 3/8 of the host's physical cores, all
// their hardware threads) with the deployment file's `cpus` key; everything else of the hetero
// launch -- the launcher with the coordinator, the fast group's worker (its `cpus`), the load
// generators (taskset) -- runs on the other cores, so the CPU replicas' compute cannot take host
// CPU from the GPU replica's side. One launch of both groups measures, on one machine:
//
//   realtime_alone   the realtime stream alone (its TTFT p99 with no batch load: the baseline)
//   fast_alone       the GPU replica alone under the mixed load: the realtime stream + the batch flood
//                    in a class that only the fast group serves (the throughput baseline: the same
//                    load, so the realtime requests' prompts and the preemptions they cause weigh on
//                    both sides; both_floods and the separate launch give the flood-only figures)
//   hetero_mixed     the realtime stream + the batch flood (batch -> [slow, fast]): realtime TTFT p99,
//                    total generated tok/s
//   slow_alone       the batch flood in a class that only the slow group serves
//   both_floods      fast_alone's and slow_alone's floods at once, no realtime stream: what the CPU
//                    replicas' work costs the fast replica, apart from the realtime stream's cost
// fast_alone and hetero_mixed are measured --repeats times each, in ABBA order (F M, M F, F M, ...:
// a drift over the run weighs on both alike); the bars use their medians, and the spread is reported.
// A second launch of the fast group alone, unpinned (the whole machine, as a GPU-only deployment
// runs), measures the same flood (fast_alone_separate: the bar is shown against it too) and the
// mixed load with every request in one class (FIFO: no priority, no preemption): the comparison.
//
// Bars: realtime TTFT p99 under the flood (the mixed phases' realtime requests pooled) <= 1.5x its
// value alone (a stream as long as the mixed phases together: as many requests), and total tok/s under
// the mixed load >= fast alone + 0.8 x slow alone (medians; each ABBA pair's margin and their mean are
// reported, since phases of one load differ by a few percent on a GPU host).
//
//   npm run build && node bench/hetero/run.mjs                     # CPU: py-tiny, slow = core(s) of the last physical core
//   node bench/hetero/run.mjs --device cuda --model /tmp/llama-1b  # one GPU (bf16) + 2 CPU replicas (int8) on 6 of 16 cores
//
// Writes bench/results/hetero-<device>-<commit>.json (machine and its core topology, commit, every
// phase with each CPU's busy share and the workers' core masks, the bars).
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const { values: a } = parseArgs({
  options: {
    device: { type: 'string', default: 'cpu' },
    model: { type: 'string', default: join(root, 'models', 'py-tiny') },
    'fast-threads': { type: 'string' },
    'fast-max-seqs': { type: 'string' },
    'fast-max-batch-tokens': { type: 'string' },
    'slow-replicas': { type: 'string' },
    'slow-threads': { type: 'string' },
    'slow-precision': { type: 'string' },
    'slow-max-seqs': { type: 'string' },
    'slow-cpus': { type: 'string' },
    repeats: { type: 'string' },
    'ttft-target': { type: 'string' },
    'rt-rate': { type: 'string' },
    'rt-prompt': { type: 'string' },
    'rt-tokens': { type: 'string' },
    'batch-concurrency': { type: 'string' },
    'batch-prompt': { type: 'string' },
    'batch-tokens': { type: 'string' },
    'batch-stream-ms': { type: 'string', default: '0' },
    'rt-exclusive': { type: 'boolean', default: false },
    'alone-s': { type: 'string' },
    'mixed-s': { type: 'string' },
    out: { type: 'string' },
    trace: { type: 'boolean', default: false },
    // Node flags of each launch's own process (the coordinator's), e.g. --launch-node-args=--max-semi-space-size=8.
    'launch-node-args': { type: 'string', default: '' },
    // NODESPEED_HEAP_GROWING_PERCENT of the launches (their coordinator and workers); the flag, else the
    // environment's, else the device's default below.
    'heap-growing-percent': { type: 'string' },
  },
});
const gpu = a.device === 'cuda';
// Defaults per device: GPU host (one GPU, 16 cores; a 1B model) or this 2-core CPU box (py-tiny).
// The GPU host's batch prompt is short (32 tokens) so the int8 CPU replicas get through a seat's
// prefill within a phase and their tokens count (at 256 tokens they spent every phase prefilling).
const d = gpu
  ? { slowReplicas: 2, ttft: 300, rtRate: 4, rtPrompt: 128, rtTokens: 64, conc: 512, bPrompt: 32, bTokens: 128, mixed: 25, repeats: 3,
    fastMaxSeqs: 128, fastMaxBatchTokens: 512, slowMaxSeqs: 16, slowPrecision: 'int8', slowShare: 3 / 8, heapGrowingPercent: '1000' }
  : { slowReplicas: 1, ttft: 2000, rtRate: 2, rtPrompt: 32, rtTokens: 16, conc: 24, bPrompt: 64, bTokens: 48, mixed: 12, repeats: 2,
    fastMaxSeqs: 32, fastMaxBatchTokens: 128, slowMaxSeqs: 8, slowPrecision: 'auto', slowShare: 1 / 2 };

/** The host's logical CPUs with their physical core (lscpu -p; without it, one core per CPU). */
function topology() {
  const r = spawnSync('lscpu', ['-p=CPU,CORE,SOCKET,NODE'], { encoding: 'utf8' });
  const rows = r.status === 0 ? r.stdout.split('\n').filter((l) => l && !l.startsWith('#')).map((l) => l.split(',').map(Number)) : [];
  // The CPUs this process may use (a container's cpuset, or a taskset around the bench).
  const allowed = parseList(/Cpus_allowed_list:\s*(\S+)/.exec(readFileSync('/proc/self/status', 'utf8'))[1]);
  return allowed.map((c) => {
    const row = rows.find((x) => x[0] === c);
    return { cpu: c, core: row ? row[2] * 100000 + row[1] : c, socket: row?.[2] ?? 0, node: row?.[3] ?? 0 };
  });
}

// The launcher's core-list syntax (0-3,8), one parser and printer for the bench and the deployment file.
const { formatCoreList: range, parseCoreList } = await import(join(root, 'dist', 'launcher', 'cores.js'));
const { firstUses, readTrace, steps, timeline } = await import('./timeline.mjs');
const { forwardedEnv, settingsEnv } = await import(join(root, 'dist', 'settings', 'index.js'));
const parseList = (spec) => parseCoreList(spec, 'bench/hetero: core list');
// The GPU deployment is a latency-critical one: its coordinator and workers collect their old
// generation at 11x its live size, not at V8's own factor, the server's default (docs/LAUNCHER.md
// "The processes' V8 heaps"). Set in this process's environment, which the launches inherit and the JSON's `env` records.
const heapGrowingPercent = a['heap-growing-percent'] ?? process.env.NODESPEED_HEAP_GROWING_PERCENT ?? d.heapGrowingPercent;
if (heapGrowingPercent !== undefined) {
  settingsEnv({ heapGrowingPercent });  // a bad value: the registry's message
  process.env.NODESPEED_HEAP_GROWING_PERCENT = heapGrowingPercent;
}

const topo = topology();
// The slow group's default cores: every hardware thread of the last slowShare of the physical
// cores (so no CPU replica shares a physical core with the GPU side's threads).
function defaultSlowCpus() {
  const cores = [...new Set(topo.map((t) => t.core))];
  const take = new Set(cores.slice(cores.length - Math.max(1, Math.round(cores.length * d.slowShare))));
  return topo.filter((t) => take.has(t.core)).map((t) => t.cpu);
}
const slowCpus = a['slow-cpus'] === 'none' ? [] : (a['slow-cpus'] ? parseList(a['slow-cpus']) : defaultSlowCpus()).sort((x, y) => x - y);
const restCpus = topo.map((t) => t.cpu).filter((c) => !slowCpus.includes(c));
const foreign = slowCpus.filter((c) => !topo.some((t) => t.cpu === c));
if (foreign.length) throw new Error(`bench/hetero: --slow-cpus: ${range(foreign)} not among the cores this process may use (${range(topo.map((t) => t.cpu))})`);
if (slowCpus.length && !restCpus.length) throw new Error(`bench/hetero: --slow-cpus ${range(slowCpus)} leaves no core for the launcher, the fast replica and the load`);
if (slowCpus.length && spawnSync('taskset', ['-V']).status !== 0) throw new Error('bench/hetero: pinning needs taskset (util-linux); or pass --slow-cpus none');

const o = {
  slowReplicas: Number(a['slow-replicas'] ?? d.slowReplicas), slowThreads: a['slow-threads'] !== undefined ? Number(a['slow-threads']) : null,
  slowCpus: slowCpus.length ? range(slowCpus) : 'none', restCpus: slowCpus.length ? range(restCpus) : 'all',
  ttftTarget: Number(a['ttft-target'] ?? d.ttft), rtRate: Number(a['rt-rate'] ?? d.rtRate), rtPrompt: Number(a['rt-prompt'] ?? d.rtPrompt),
  rtTokens: Number(a['rt-tokens'] ?? d.rtTokens), conc: Number(a['batch-concurrency'] ?? d.conc), bPrompt: Number(a['batch-prompt'] ?? d.bPrompt),
  bTokens: Number(a['batch-tokens'] ?? d.bTokens), mixedS: Number(a['mixed-s'] ?? d.mixed),
  repeats: Number(a.repeats ?? d.repeats),
  fastMaxSeqs: Number(a['fast-max-seqs'] ?? d.fastMaxSeqs), fastMaxBatchTokens: Number(a['fast-max-batch-tokens'] ?? d.fastMaxBatchTokens),
  slowMaxSeqs: Number(a['slow-max-seqs'] ?? d.slowMaxSeqs), slowPrecision: a['slow-precision'] ?? d.slowPrecision,
  batchStreamMs: Number(a['batch-stream-ms']), rtExclusive: a['rt-exclusive'], launchNodeArgs: a['launch-node-args'],
};
// The realtime stream alone runs as long as the mixed phases together: its p99 and theirs (pooled)
// then come from as many requests each (at 4/s, 300 over 3 x 25 s: the p99 is the 3rd slowest, where
// one phase's 100 made it the 2nd slowest, a single outlier's value).
o.aloneS = Number(a['alone-s'] ?? o.repeats * o.mixedS);
if (!Number.isInteger(o.batchStreamMs) || o.batchStreamMs < 0 || o.batchStreamMs > 10000)
  throw new Error(`bench/hetero: --batch-stream-ms must be an integer from 0 to 10000 (got ${JSON.stringify(a['batch-stream-ms'])})`);
// The deployment files live in a temp folder and resolve their paths there: the model's goes in absolute.
a.model = resolve(a.model);
const config = JSON.parse(readFileSync(join(a.model, 'config.json'), 'utf8'));
const vocab = config.vocab_size;

const pinned = slowCpus.length > 0;
const fastGroup = (pin) => `  - name: fast
    device: ${gpu ? 'cuda' : 'cpu'}
    replicas: 1
    max_seqs: ${o.fastMaxSeqs}
    max_batch_tokens: ${o.fastMaxBatchTokens}${!gpu && a['fast-threads'] ? `\n    threads: ${a['fast-threads']}` : ''}${pin ? `\n    cpus: ${o.restCpus}` : ''}
`;
// Without --slow-threads, each CPU replica runs one thread per core of its share of slow-cpus.
const slowGroup = `  - name: slow
    device: cpu
    replicas: ${o.slowReplicas}${o.slowThreads !== null ? `\n    threads: ${o.slowThreads}` : ''}${pinned ? `\n    cpus: ${o.slowCpus}` : ''}
    precision: ${o.slowPrecision}
    max_seqs: ${o.slowMaxSeqs}
`;
// The batch floods' classes, with --batch-stream-ms: their streams written once per interval at most.
const paced = o.batchStreamMs > 0 ? `, stream_interval_ms: ${o.batchStreamMs}` : '';
// With --rt-exclusive: a realtime prompt's first chunk rides a step without the less urgent classes' work.
const exclusive = o.rtExclusive ? ', exclusive_prefill: true' : '';
const deployments = {
  hetero: `model: ${a.model}\ngroups:\n${fastGroup(pinned)}${slowGroup}classes:\n  realtime: { groups: [fast], ttft_p99_ms: ${o.ttftTarget}${exclusive} }\n` +
    `  standard: { groups: [fast, slow] }\n  batch: { groups: [slow, fast]${paced} }\n` +
    // The flood of the alone phases: served by one group only.
    `  fast_only: { groups: [fast], priority: 50${paced} }\n  slow_only: { groups: [slow], priority: 60${paced} }\n`,
  fast: `model: ${a.model}\ngroups:\n${fastGroup(false)}`,
};

const work = mkdtempSync(join(tmpdir(), 'nodespeed-bench-hetero-'));
const log = (line) => process.stderr.write(`bench/hetero: ${line}\n`);

/** argv run on `cpus` (taskset) when pinning, else as is. */
const on = (cpus, argv) => (cpus ? ['taskset', '-c', cpus, ...argv] : argv);

/** With --trace, each launch's NODESPEED_REQUEST_TRACE file (timeline.mjs reads it after each mixed phase) and its NODESPEED_STEP_TRACE file. */
const traceFile = (name) => join(work, `${name}-trace.jsonl`);
const stepFile = (name) => join(work, `${name}-steps.jsonl`);

function launch(name, cpus) {
  const file = join(work, `${name}.yaml`);
  writeFileSync(file, deployments[name]);
  const [cmd, ...args] = on(cpus, [process.execPath, ...a['launch-node-args'].split(' ').filter(Boolean), join(root, 'bin', 'nodespeed'), 'launch', '--config', file, '--port', '0', '--http-port', '0', '--bind', '127.0.0.1',
    '--no-progress', '--heartbeat-interval', '0.5', '--request-timeout', '120']);
  const env = a.trace ? { ...process.env, NODESPEED_REQUEST_TRACE: traceFile(name), NODESPEED_STEP_TRACE: stepFile(name) } : process.env;
  const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
  current = proc;
  let err = '';
  proc.stderr.on('data', (x) => (err += x));
  return new Promise((ok, fail) => {
    let out = '';
    proc.stdout.on('data', (x) => {
      out += x;
      const line = out.split('\n').find((l) => l.startsWith('nodespeed ready '));
      if (line) ok({ address: line.split(' ')[2], trace: a.trace ? traceFile(name) : undefined, readyLine: line, pid: proc.pid, stop: () => new Promise((r) => (proc.once('exit', r), proc.kill('SIGINT'))) });
    });
    proc.once('exit', (code) => fail(new Error(`launch ${name} exited with ${code}:\n${err.slice(-4000)}`)));
  });
}

/**
 * Runs load.mjs processes side by side against launch `c` (on `cpus` when pinning); resolves with their
 * results. With --trace they add their own loop and GC lines to the launch's trace file.
 */
function load(c, runs, cpus) {
  const env = c.trace ? { ...process.env, NODESPEED_REQUEST_TRACE: c.trace } : process.env;
  return Promise.all(runs.map((r) => new Promise((ok, fail) => {
    const [cmd, ...args] = on(cpus, [process.execPath, join(root, 'bench', 'hetero', 'load.mjs'), '--address', c.address, '--vocab', String(vocab), ...r]);
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'], env });
    let out = '';
    p.stdout.on('data', (x) => (out += x));
    p.once('exit', (code) => (code === 0 ? ok(JSON.parse(out)) : fail(new Error(`load ${r.join(' ')} exited with ${code}`))));
  })));
}

/**
 * With --trace: a phase's timeline (where the realtime and the traced batch requests' TTFT went) and
 * the event loops; without a flood (`fl`), the realtime stream alone: the baseline of each stage.
 */
function traced(name, rt, fl) {
  if (!a.trace) return {};
  const tl = timeline(readTrace(traceFile(name)), { realtime: rt, ...(fl ? { batch: fl } : {}) }, rt.t0, rt.until);
  const s = tl.stages.realtime;
  if (s) log(`  realtime timeline p50/p99 ms: ${Object.entries(s).filter(([k]) => k !== 'traced').map(([k, v]) => `${k} ${v.p50}/${v.p99}`).join(', ')}`);
  log(`  event loops (delay p99 median ms, busy mean, GC share, mark-compacts; realtime client-${rt.pid}${fl ? `, flood client-${fl.pid}` : ''}): ${Object.entries(tl.loops).map(([k, v]) =>
    `${k} ${v.delay_p99_ms.p50} ${v.elu_mean} ${v.gc_share} ${v.mark_compacts}`).join(', ')}`);
  const slow = tl.slowest.realtime ?? [];
  if (slow.length) log(`  slowest realtime (total ms: GC pauses >= 2 ms that overlapped it): ${slow.map((q) => `${q.total}: ${q.gc.join(' + ') || '-'}`).join('; ')}`);
  return { timeline: tl };
}

/** With --trace: each replica driver's steps in the throughput window of a load (the same window as tok/s: from 3 s on). */
function stepsOf(name, run) {
  if (!a.trace) return {};
  const st = steps(stepFile(name), run.t0 + 3000, run.until);
  log(`  steps (per driver: steps/s, step ms mean (run + host), gap ms mean, sampled per step, busy): ${Object.entries(st).map(([k, v]) =>
    `${k} ${v.steps_per_s} ${v.step_ms.mean} (${v.run_ms?.mean} + ${v.host_ms?.mean}) ${v.gap_ms.mean} ${v.per_step.sampled} ${v.busy}`).join('; ')}`);
  return { steps: st };
}

/** With --trace: each process's event-loop delay and utilization while a load ran, and its drivers' steps (traced() breaks the realtime requests' TTFT down). */
function loops(name, run) {
  if (!a.trace) return {};
  const tl = timeline(readTrace(traceFile(name)), {}, run.t0, run.until);
  return { event_loops: tl.loops, gc: tl.gc, ...stepsOf(name, run) };
}

const realtime = (s, priority = ['--priority', 'realtime']) => ['--mode', 'realtime', '--rate', String(o.rtRate), '--duration', String(s),
  '--prompt-len', String(o.rtPrompt), '--new-tokens', String(o.rtTokens), '--salt', '1', ...priority];
const flood = (s, priority = ['--priority', 'batch']) => ['--mode', 'flood', '--concurrency', String(o.conc), '--duration', String(s),
  '--prompt-len', String(o.bPrompt), '--new-tokens', String(o.bTokens), '--salt', '2', ...priority];

function pct(values, p) {
  const v = [...values].sort((x, y) => x - y);
  return v.length ? v[Math.min(v.length - 1, Math.max(0, Math.ceil(p * v.length) - 1))] : null;
}
const median = (xs) => {
  const v = [...xs].sort((x, y) => x - y);
  return v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
};
/** Median, min, max and (max - min) / median of some measurements. */
const spread = (xs) => ({ values: xs, median: median(xs), min: Math.min(...xs), max: Math.max(...xs), rel_spread: (Math.max(...xs) - Math.min(...xs)) / median(xs) });

/** TTFT percentiles of a realtime run's completed requests (those sent from `from` on, epoch ms); several runs' requests pool as `{ requests: [...] }`. */
function ttft(r, from = 0) {
  const t = r.requests.filter((q) => q.first !== null && q.start >= from).map((q) => Math.round((q.first - q.start) * 10) / 10);
  return { requests: r.requests.length, with_first_token: t.length, errors: r.requests.filter((q) => q.error).length,
    p50_ms: pct(t, 0.5), p90_ms: pct(t, 0.9), p99_ms: pct(t, 0.99), max_ms: pct(t, 1) };
}

/**
 * A realtime run's requests as [sent, TTFT] in ms (sent: since the earlier of the two loads' clocks
 * started; TTFT null without a first token), so a slow request can be placed against the flood's start.
 */
function requestTimes(rt, fl) {
  const t0 = Math.min(rt.t0, fl.t0);
  const r1 = (x) => Math.round(x * 10) / 10;
  return rt.requests.map((q) => [r1(q.start - t0), q.first === null ? null : r1(q.first - q.start)]);
}

/** Tokens per second of some runs between t0 + warm-up and the end of the shortest run. */
function tokS(runs, warmS = 3) {
  const from = Math.max(...runs.map((r) => r.t0)) + warmS * 1000;
  const to = Math.min(...runs.map((r) => r.until));
  let n = 0;
  for (const r of runs) for (const [at, k] of r.bins) if (at >= from && at < to) n += k;
  return { tok_s: (n * 1000) / (to - from), window_s: (to - from) / 1000, tokens: n };
}

/** Per-CPU busy and total jiffies (/proc/stat). */
function cpuTimes() {
  const out = new Map();
  for (const l of readFileSync('/proc/stat', 'utf8').split('\n')) {
    const m = /^cpu(\d+) (.*)$/.exec(l);
    if (!m) continue;
    const v = m[2].trim().split(/\s+/).map(Number);
    const idle = v[3] + (v[4] ?? 0);
    out.set(Number(m[1]), { busy: v.reduce((x, y) => x + y, 0) - idle, total: v.reduce((x, y) => x + y, 0) });
  }
  return out;
}
/** Each CPU's busy share (%) since `t0`, and the mean over the slow cores and over the rest. */
function cpuBusy(t0) {
  const t1 = cpuTimes();
  const pct = {};
  for (const [c, x] of t1) {
    const y = t0.get(c);
    if (y && x.total > y.total) pct[c] = Math.round((100 * (x.busy - y.busy)) / (x.total - y.total));
  }
  const mean = (cs) => (cs.length ? Math.round(cs.reduce((s, c) => s + (pct[c] ?? 0), 0) / cs.length) : null);
  return { per_cpu: pct, slow_cpus_mean: pinned ? mean(slowCpus) : null, rest_cpus_mean: mean(pinned ? restCpus : topo.map((t) => t.cpu)) };
}

/** The core masks of a launch's processes: itself and its workers (children), from /proc. */
function masks(pid) {
  const status = (p) => {
    try {
      return /Cpus_allowed_list:\s*(\S+)/.exec(readFileSync(`/proc/${p}/status`, 'utf8'))?.[1];
    } catch {
      return undefined;
    }
  };
  const workers = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) !== pid) continue;
      const cmd = readFileSync(`/proc/${e}/cmdline`, 'utf8');
      if (!cmd.includes('worker/main.js')) continue;
      const rank = /(?:^|\0)RANK=(\d+)/.exec(readFileSync(`/proc/${e}/environ`, 'utf8'))?.[1];
      workers.push({ pid: Number(e), rank: rank === undefined ? null : Number(rank), cpus_allowed: status(e) });
    } catch {
      /* gone, or not ours to read */
    }
  }
  return { launcher: status(pid), workers: workers.sort((x, y) => (x.rank ?? 0) - (y.rank ?? 0)) };
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
const replicaStats = (st) => st.replicas.map((r) => ({ id: r.id, group: r.group, generated: Number(r.generatedTokens), preemptions: r.preemptions, step_ms: r.stepMs }));

/** A short warm-up (first steps, graphs, caches) that is not measured. */
const warm = (c, cpus, priority = []) => load(c, [['--mode', 'flood', '--concurrency', '4', '--duration', '3', '--prompt-len', '16', '--new-tokens', '8', '--salt', '9', ...priority]], cpus);
const settle = () => new Promise((r) => setTimeout(r, 2000));

function commit() {
  if (process.env.NODESPEED_COMMIT) return process.env.NODESPEED_COMMIT;
  const r = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : 'unknown';
}

const gpuName = gpu ? spawnSync('nvidia-smi', ['--query-gpu=name', '--format=csv,noheader'], { encoding: 'utf8' }).stdout?.split('\n')[0]?.trim() : undefined;
const result = {
  bench: 'hetero', date: new Date().toISOString(), commit: commit(), device: a.device, model: a.model,
  machine: { cpus: cpus().length, cpu_model: cpus()[0]?.model, mem_gib: +(totalmem() / 2 ** 30).toFixed(1), loadavg_1m_at_start: loadavg()[0], gpu: gpuName,
    physical_cores: new Set(topo.map((t) => t.core)).size, topology: topo.map((t) => `${t.cpu}:${t.core}`).join(' ') },
  command: `node bench/hetero/run.mjs ${process.argv.slice(2).join(' ')}`.trim(),
  // The registry's worker settings set for this run (the launch and its ranks get them), e.g. NODESPEED_HEAP_GROWING_PERCENT=0.
  env: forwardedEnv(),
  settings: o, deployments, phases: {}, order: [],
};
const rest = pinned ? o.restCpus : undefined;
const dir = join(root, 'bench', 'results');
const file = a.out ?? join(dir, `hetero-${gpu ? (gpuName ?? 'cuda').toLowerCase().replace(/[^a-z0-9]+/g, '-') : 'cpu'}-${result.commit}${o.rtExclusive ? '-rt-exclusive' : ''}.json`);
const write = () => {
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, JSON.stringify(result, null, 2) + '\n');
  log(`wrote ${file}`);
};
// Stopped from outside (timeout): what was measured so far is written, and the launch in progress stopped.
let current;
// However this process ends (an uncaught error, a closed stderr), the launch in progress ends with it.
process.on('exit', () => {
  if (current && current.exitCode === null && current.signalCode === null) current.kill('SIGINT');
});
process.once('SIGTERM', () => {
  result.error = 'stopped by SIGTERM before the end';
  result.machine.loadavg_at_end = loadavg();
  write();
  current?.kill('SIGINT');
  process.exit(143);
});
try {
  let c = await launch('hetero', rest);
  log(c.readyLine);
  try {
    result.core_masks = { hetero: masks(c.pid) };
    log(`cores: launcher ${result.core_masks.hetero.launcher}; workers ${result.core_masks.hetero.workers.map((w) => `rank ${w.rank}: ${w.cpus_allowed}`).join(', ')}`);
    await warm(c, rest);
    await warm(c, rest, ['--priority', 'slow_only']);
    let t = cpuTimes();
    const [alone] = await load(c, [realtime(o.aloneS)], rest);
    log(`realtime alone: TTFT p99 ${ttft(alone).p99_ms} ms`);
    result.phases.realtime_alone = { ttft: ttft(alone), cpu_busy_pct: cpuBusy(t), loadavg_1m_at_end: loadavg()[0], ...traced('hetero', alone) };
    result.phases.fast_alone = [];
    result.phases.hetero_mixed = [];
    // Each phase's realtime requests, pooled for the p99 the bar takes.
    const realtimeRuns = { fast_alone: [], hetero_mixed: [] };
    // The same, only those sent in the throughput window (from 3 s after both loads started).
    const steadyRuns = { fast_alone: [], hetero_mixed: [] };
    const steadyOf = (rt, fl) => ({ requests: rt.requests.filter((q) => q.start >= Math.max(rt.t0, fl.t0) + 3000) });
    const fastAlone = async () => {
      await settle();
      const t0 = cpuTimes();
      const [rt, fl] = await load(c, [realtime(o.mixedS), flood(o.mixedS, ['--priority', 'fast_only'])], rest);
      const p = { ttft: ttft(rt), ttft_steady: ttft(rt, Math.max(rt.t0, fl.t0) + 3000), realtime_requests: requestTimes(rt, fl), total: tokS([rt, fl]),
        cpu_busy_pct: cpuBusy(t0), loadavg_1m_at_end: loadavg()[0], load_loop_delay: { realtime: rt.loop, flood: fl.loop },
        ...loops('hetero', fl) };
      result.phases.fast_alone.push(p);
      realtimeRuns.fast_alone.push(rt);
      steadyRuns.fast_alone.push(steadyOf(rt, fl));
      result.order.push('fast_alone');
      log(`fast alone #${result.phases.fast_alone.length} (realtime + flood, fast group only): ${p.total.tok_s.toFixed(1)} tok/s, realtime TTFT p99 ${p.ttft.p99_ms} ms ` +
        `(CPU busy: rest ${p.cpu_busy_pct.rest_cpus_mean}%, slow ${p.cpu_busy_pct.slow_cpus_mean}%)`);
    };
    const mixed = async () => {
      await settle();
      const t0 = cpuTimes();
      const before = replicaStats(await status(c.address));
      const [rt, fl] = await load(c, [realtime(o.mixedS), flood(o.mixedS)], rest);
      const busy = cpuBusy(t0);
      const st = await status(c.address);
      const after = replicaStats(st);
      // ttft_steady: the requests sent in the throughput window (from 3 s after both loads started), past the flood's first burst.
      const p = { ttft: ttft(rt), ttft_steady: ttft(rt, Math.max(rt.t0, fl.t0) + 3000), realtime_requests: requestTimes(rt, fl), total: tokS([rt, fl]), batch_requests: fl.requests.length, cpu_busy_pct: busy, loadavg_1m_at_end: loadavg()[0], classes: st.classes,
        replicas: after.map((r) => ({ ...r, generated_in_phase: r.generated - (before.find((b) => b.id === r.id)?.generated ?? 0) })),
        load_loop_delay: { realtime: rt.loop, flood: fl.loop }, ...traced('hetero', rt, fl), ...stepsOf('hetero', fl) };
      result.phases.hetero_mixed.push(p);
      realtimeRuns.hetero_mixed.push(rt);
      steadyRuns.hetero_mixed.push(steadyOf(rt, fl));
      result.order.push('hetero_mixed');
      log(`hetero mixed #${result.phases.hetero_mixed.length}: realtime TTFT p99 ${p.ttft.p99_ms} ms (from 3 s on: ${p.ttft_steady.p99_ms}), total ${p.total.tok_s.toFixed(1)} tok/s ` +
        `(slow replicas generated ${p.replicas.filter((r) => r.group === 'slow').map((r) => r.generated_in_phase).join(' + ')}; CPU busy: rest ${busy.rest_cpus_mean}%, slow ${busy.slow_cpus_mean}%)`);
    };
    // ABBA: F M, M F, F M, ...
    for (let i = 0; i < o.repeats; i++) for (const phase of i % 2 ? [mixed, fastAlone] : [fastAlone, mixed]) await phase();
    for (const [k, runs] of Object.entries(realtimeRuns)) result.phases[`${k}_realtime_pooled`] = ttft({ requests: runs.flatMap((r) => r.requests) });
    for (const [k, runs] of Object.entries(steadyRuns)) result.phases[`${k}_realtime_pooled_steady`] = ttft({ requests: runs.flatMap((r) => r.requests) });
    await settle();
    t = cpuTimes();
    const [sl] = await load(c, [flood(o.mixedS, ['--priority', 'slow_only'])], rest);
    result.phases.slow_alone = { total: tokS([sl]), cpu_busy_pct: cpuBusy(t), loadavg_1m_at_end: loadavg()[0], ...loops('hetero', sl) };
    log(`slow alone: ${result.phases.slow_alone.total.tok_s.toFixed(1)} tok/s`);
    // Both floods at once and no realtime stream: what the CPU replicas' work alone costs the fast
    // replica (against fast_alone + slow_alone), apart from what the realtime stream costs it.
    await settle();
    t = cpuTimes();
    const [bf, bs] = await load(c, [flood(o.mixedS, ['--priority', 'fast_only']), flood(o.mixedS, ['--priority', 'slow_only'])], rest);
    result.phases.both_floods = { fast: tokS([bf]), slow: tokS([bs]), cpu_busy_pct: cpuBusy(t), loadavg_1m_at_end: loadavg()[0], ...loops('hetero', bf) };
    log(`both floods, no realtime: fast ${result.phases.both_floods.fast.tok_s.toFixed(1)} + slow ${result.phases.both_floods.slow.tok_s.toFixed(1)} tok/s`);
  } finally {
    await c.stop();
  }
  c = await launch('fast');
  try {
    result.core_masks.fast = masks(c.pid);
    await warm(c);
    let t = cpuTimes();
    const [fl] = await load(c, [flood(o.mixedS, [])]);
    result.phases.fast_alone_separate = { total: tokS([fl]), cpu_busy_pct: cpuBusy(t), loadavg_1m_at_end: loadavg()[0], load_loop_delay: { flood: fl.loop }, ...loops('fast', fl) };
    log(`fast alone, its own launch, unpinned: ${result.phases.fast_alone_separate.total.tok_s.toFixed(1)} tok/s`);
    await settle();
    t = cpuTimes();
    const [rt, fl2] = await load(c, [realtime(o.mixedS, []), flood(o.mixedS, [])]);
    result.phases.fast_fifo_mixed = { ttft: ttft(rt), total: tokS([rt, fl2]), cpu_busy_pct: cpuBusy(t), loadavg_1m_at_end: loadavg()[0],
      load_loop_delay: { realtime: rt.loop, flood: fl2.loop }, ...traced('fast', rt, fl2), ...stepsOf('fast', fl2) };
    log(`fast, FIFO, mixed: realtime TTFT p99 ${result.phases.fast_fifo_mixed.ttft.p99_ms} ms, total ${result.phases.fast_fifo_mixed.total.tok_s.toFixed(1)} tok/s`);
  } finally {
    await c.stop();
  }
  const p = result.phases;
  const fastS = spread(p.fast_alone.map((x) => x.total.tok_s));
  const mixedS = spread(p.hetero_mixed.map((x) => x.total.tok_s));
  const ttftS = spread(p.hetero_mixed.map((x) => x.ttft.p99_ms));
  const slow = p.slow_alone.total.tok_s;
  const need = fastS.median + 0.8 * slow;
  const ttftRatio = p.hetero_mixed_realtime_pooled.p99_ms / p.realtime_alone.ttft.p99_ms;
  const steadyRatio = p.hetero_mixed_realtime_pooled_steady.p99_ms / p.realtime_alone.ttft.p99_ms;
  // With --trace: whether the first step of a token count still pays once (the hetero launch's whole step file).
  if (a.trace && existsSync(stepFile('hetero'))) {
    result.first_uses = firstUses(stepFile('hetero'));
    log(`first step of each token count vs later ones (per driver: counts, excess ms p50/p90/max, over twice; <= 256 rows | past 256): ${
      Object.entries(result.first_uses).map(([k, v]) => `${k} ${[v.warmed, v.past_warmed].map((x) =>
        `${x.counts}, ${x.excess_ms.p50}/${x.excess_ms.p90}/${x.excess_ms.max}, ${x.over_twice}`).join(' | ')}`).join('; ')}`);
  }
  result.summary = { fast_alone_tok_s: fastS, hetero_mixed_tok_s: mixedS, hetero_mixed_ttft_p99_ms: ttftS, slow_alone_tok_s: slow,
    hetero_mixed_ttft_pooled: p.hetero_mixed_realtime_pooled, fast_alone_ttft_pooled: p.fast_alone_realtime_pooled,
    hetero_mixed_ttft_steady_p99_ms: spread(p.hetero_mixed.map((x) => x.ttft_steady.p99_ms)),
    // Each mixed phase against the fast-alone phase next to it (the same ABBA pair).
    paired_mixed_minus_fast_tok_s: mixedS.values.map((m, i) => m - fastS.values[i]),
    // Each pair's margin over its own bar (mixed / (fast + 0.8 slow) - 1), and their mean.
    paired_margins: mixedS.values.map((m, i) => m / (fastS.values[i] + 0.8 * slow) - 1) };
  result.summary.paired_margin_mean = result.summary.paired_margins.reduce((x, y) => x + y, 0) / result.summary.paired_margins.length;
  result.bars = {
    realtime_ttft_p99_ratio: ttftRatio, realtime_ttft_ok: ttftRatio <= 1.5,
    // The same over the throughput window only (the flood's first 3 s, its hundreds of simultaneous arrivals, left out).
    realtime_ttft_p99_ratio_steady: steadyRatio,
    total_tok_s: mixedS.median, fast_plus_80pct_slow_tok_s: need, throughput_ok: mixedS.median >= need,
    throughput_margin: mixedS.median / need - 1,
    against_separate_fast: { fast_plus_80pct_slow_tok_s: p.fast_alone_separate.total.tok_s + 0.8 * slow,
      throughput_ok: mixedS.median >= p.fast_alone_separate.total.tok_s + 0.8 * slow },
    over_fifo: { realtime_ttft_p99: p.fast_fifo_mixed.ttft.p99_ms / ttftS.median, tok_s: mixedS.median / p.fast_fifo_mixed.total.tok_s },
  };
  const f = (x) => x.toFixed(1);
  log(`fast alone: median ${f(fastS.median)} tok/s (${fastS.values.map(f).join(', ')}; spread ${(100 * fastS.rel_spread).toFixed(1)}%); ` +
    `mixed: median ${f(mixedS.median)} tok/s (${mixedS.values.map(f).join(', ')}; spread ${(100 * mixedS.rel_spread).toFixed(1)}%); slow alone ${f(slow)} tok/s`);
  log(`ABBA pairs' margins over fast + 80% slow: ${result.summary.paired_margins.map((x) => `${(100 * x).toFixed(1)}%`).join(', ')}; mean ${(100 * result.summary.paired_margin_mean).toFixed(1)}%`);
  // A TTFT summary as printed: p50/p90/p99/max (requests with a first token).
  const q = (t) => `${[t.p50_ms, t.p90_ms, t.p99_ms, t.max_ms].join('/')} (${t.with_first_token})`;
  log(`realtime TTFT p50/p90/p99/max ms (requests): alone ${q(p.realtime_alone.ttft)}; fast alone under the flood, pooled ${q(p.fast_alone_realtime_pooled)}; ` +
    `mixed, pooled ${q(p.hetero_mixed_realtime_pooled)}; from 3 s after the flood started: fast alone ${q(p.fast_alone_realtime_pooled_steady)}, ` +
    `mixed ${q(p.hetero_mixed_realtime_pooled_steady)}: ${steadyRatio.toFixed(2)}x alone`);
  log(`bars: realtime TTFT p99 (mixed phases pooled) ${ttftRatio.toFixed(2)}x its value alone (<= 1.5: ${result.bars.realtime_ttft_ok}); total ${f(mixedS.median)} tok/s ` +
    `vs fast alone + 80% slow alone ${f(need)} (${result.bars.throughput_ok}, ${(100 * result.bars.throughput_margin).toFixed(1)}%); against the separate unpinned fast launch ` +
    `${f(result.bars.against_separate_fast.fast_plus_80pct_slow_tok_s)} (${result.bars.against_separate_fast.throughput_ok}); against one fast replica with FIFO: TTFT p99 ` +
    `${p.fast_fifo_mixed.ttft.p99_ms} ms there, tok/s x${result.bars.over_fifo.tok_s.toFixed(2)}`);
} catch (err) {
  // What was measured before the failure still comes back.
  result.error = err.stack ?? String(err);
  process.exitCode = 1;
  log(`failed: ${err.message}`);
} finally {
  result.machine.loadavg_at_end = loadavg();
  write();
  // --trace: the raw timelines go next to the result (FILE.hetero-trace.jsonl, FILE.fast-trace.jsonl).
  if (a.trace) {
    for (const name of ['hetero', 'fast']) {
      if (existsSync(traceFile(name))) copyFileSync(traceFile(name), `${file}.${name}-trace.jsonl`);
      if (existsSync(stepFile(name))) copyFileSync(stepFile(name), `${file}.${name}-steps.jsonl`);
    }
  }
  rmSync(work, { recursive: true, force: true });
}
