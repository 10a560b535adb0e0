#!/usr/bin/env node
// The coordinator's event loop under a token flood, without a model: a real Coordinator (coord.mjs,
// a process of its own) fed by a synthetic replica driver over the real control plane (mutual TLS,
// the Join / Ready / Start handshake, submits in, Tokens out), with real gRPC clients on its public
// API consuming the streams. So every cost the coordinator pays per token and per step report is
// in: decoding the worker's Tokens, the router applying them, the request store, the class
// statistics, the paced stream writers and grpc-js encoding and writing the client messages.
//
//   driver  one replica, --batch sequences a step (the GPU replica: 127-128), --steps-per-s steps a
//           second, one token per running sequence a step (text ' tok'), each request ending after
//           its max_tokens (FINISH_REASON_LENGTH); one Tokens message per step; heartbeats with its
//           load every 500 ms (the router's estimate)
//   batch   --batch-concurrency Generate streams in class batch (stream_interval_ms --batch-stream-ms),
//           closed loop: each sends its next request as its stream ends (--batch-tokens each)
//   realtime  --rt-rate requests/s of class realtime (16 tokens each, no stream interval): TTFT as
//           the client sees it (includes up to one step of the synthetic driver)
//
// After --warmup-s, --runs windows of --window-s each; per window the coordinator reports its loop's
// busy share (performance.eventLoopUtilization), its CPU share, monitorEventLoopDelay p50/p99/max and
// the tokens/s it took in; --profile: a CPU profile of the coordinator over the last window, its
// top self-time functions and files printed (and the .cpuprofile written to --out's folder).
//
// The coordinator's main-thread CPU per token (/proc) is the figure to compare on a shared machine:
// the busy share also counts time the loop waited for a core.
//
//   npm run build && node bench/coord-loop/run.mjs [--steps-per-s 500] [--batch 128] [--runs 3] [--profile] [--dist DIR]
//     [--node-args=--trace-gc]   (node flags of the coordinator's process)
import { fork } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, setPriority } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { execFileSync } from 'node:child_process';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '..', '..');
const dist = (p) => join(root, 'dist', p);
const { values: a } = parseArgs({ options: {
  model: { type: 'string', default: join(root, 'models', 'py-tiny') },
  'steps-per-s': { type: 'string', default: '500' },
  batch: { type: 'string', default: '128' },
  'batch-concurrency': { type: 'string', default: '512' },
  'batch-stream-ms': { type: 'string', default: '50' },
  'batch-tokens': { type: 'string', default: '256' },
  // The driver holds a batch stream's tokens for this many ms and reports them in one update (its
  // first and its last token at once): what the coordinator would pay if the replica did the class's pacing.
  'driver-pace-ms': { type: 'string', default: '0' },
  'rt-rate': { type: 'string', default: '4' },
  'warmup-s': { type: 'string', default: '4' },
  'window-s': { type: 'string', default: '8' },
  runs: { type: 'string', default: '3' },
  profile: { type: 'boolean', default: false },
  'heap-profile': { type: 'boolean', default: false },
  'heap-survivors': { type: 'boolean', default: false },
  out: { type: 'string' },
  dist: { type: 'string' },
  'node-args': { type: 'string', default: '' },
} });
const num = (k) => {
  const v = Number(a[k]);
  if (!Number.isFinite(v) || v < 0) throw new Error(`--${k}: not a number >= 0 (${a[k]})`);
  return v;
};
const stepsPerS = num('steps-per-s');
const batch = num('batch');
const concurrency = num('batch-concurrency');
const batchTokens = num('batch-tokens');

let commit = 'unknown';
try {
  const dirty = execFileSync('git', ['-C', root, 'status', '--porcelain', '--untracked-files=no'], { encoding: 'utf8' }).trim() ? '+dirty' : '';
  commit = execFileSync('git', ['-C', root, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim() + dirty;
} catch { /* not a checkout */ }

const grpc = await import(join(root, 'node_modules', '@grpc', 'grpc-js', 'build', 'src', 'index.js'));
const { CONTROL_SERVICE, INFERENCE_SERVICE, clientConstructor, controlPackageDefinition, inferencePackageDefinition } = await import(dist('protocol/proto.js'));
const { controlChannelOptions } = await import(dist('protocol/limits.js'));
const { CONTROL_SERVER_NAME } = await import(dist('protocol/job-secrets.js'));

const child = fork(join(here, 'coord.mjs'), [JSON.stringify({ model: a.model, streamMs: num('batch-stream-ms'), profile: a.profile, heapProfile: a['heap-survivors'] ? 'survivors' : a['heap-profile'], ...(a.dist ? { dist: resolve(a.dist) } : {}) })],
  { stdio: 'inherit', execArgv: a['node-args'].split(' ').filter(Boolean) });
// This process (the driver and the clients) yields the CPU to the coordinator: on a machine with
// few cores the coordinator's loop would otherwise be measured waiting for a core, not working.
setPriority(process.pid, 10);
const replies = [];
let waiting;
child.on('message', (m) => (waiting ? (waiting(m), (waiting = undefined)) : replies.push(m)));
const ask = (cmd) => new Promise((res) => {
  if (replies.length) return res(replies.shift());
  waiting = res;
  if (cmd) child.send({ cmd });
});
const ready = (await ask()).ready;

// ---- the synthetic replica driver --------------------------------------------------------------
const Control = clientConstructor(controlPackageDefinition(), CONTROL_SERVICE);
const id = ready.identity;
const ctl = new Control(`127.0.0.1:${ready.controlPort}`, grpc.credentials.createSsl(Buffer.from(id.ca), Buffer.from(id.key), Buffer.from(id.cert)),
  { 'grpc.ssl_target_name_override': CONTROL_SERVER_NAME, ...controlChannelOptions() });
const call = ctl.Connect();
let epoch = '0';
let serving = false;
// request id -> { max, n }, in arrival order; the realtime class's (priority < 0) step first, as the scheduler has them.
const urgent = new Map();
const live = new Map();
let steps = 0;
const onCoordinatorMessage = (m) => {
  if (m.msg === 'batch') return m.batch.messages.forEach(onCoordinatorMessage);
  if (m.assignment) {
    epoch = m.assignment.epoch;
    call.write({ ready: { epoch, kvBlocks: 1 << 20, kvBlockSize: 16, describe: 'synthetic', kvWindowBlocks: 0 } });
  } else if (m.start) serving = true;
  else if (m.submit) (m.submit.priority < 0 ? urgent : live).set(m.submit.requestId, { max: m.submit.params.maxTokens, n: m.submit.generatedIds.length });
  else if (m.cancel) {
    live.delete(m.cancel.requestId);
    urgent.delete(m.cancel.requestId);
  }
};
call.on('data', onCoordinatorMessage);
call.on('error', (e) => { if (!stopping) console.error(`driver stream: ${e.message}`); });
call.write({ join: { token: 'bench-token', rank: 0, host: 'localhost', pid: process.pid, listenAddresses: [] } });
let stopping = false;

const driverPaceMs = num('driver-pace-ms');
function step() {
  const updates = [];
  const now = performance.now();
  let ran = 0;
  for (const q of [urgent, live]) {
    for (const [rid, r] of q) {
      if (ran++ >= batch) break;
      const done = ++r.n >= r.max;
      if (driverPaceMs > 0 && q === live) {
        (r.held ??= []).push(r.n % 1000);
        if (r.n === 1 || done || now - (r.sentAt ?? 0) >= driverPaceMs) {
          updates.push({ requestId: rid, tokenIds: r.held, text: ' tok'.repeat(r.held.length), index: r.n - r.held.length,
            finishReason: done ? 'FINISH_REASON_LENGTH' : 'FINISH_REASON_UNSPECIFIED' });
          r.held = [];
          r.sentAt = now;
        }
      } else {
        updates.push({ requestId: rid, tokenIds: [r.n % 1000], text: ' tok', index: r.n - 1, finishReason: done ? 'FINISH_REASON_LENGTH' : 'FINISH_REASON_UNSPECIFIED' });
      }
      if (done) q.delete(rid);
    }
  }
  steps++;
  if (updates.length) call.write({ tokens: { epoch, updates } });
}
// Steps at a fixed rate: each tick runs the steps that are due (a late tick catches up).
const t0 = performance.now();
const stepper = setInterval(() => {
  if (!serving) return;
  const due = Math.floor(((performance.now() - t0) / 1000) * stepsPerS);
  for (let k = 0; steps < due && k < 50; k++) step();
  if (steps < due - 50) steps = due;  // this process fell behind: skip, never burst
}, 1);
const beat = setInterval(() => {
  if (serving) call.write({ heartbeat: { epoch, sentAtMs: Date.now(), load: { running: Math.min(batch, live.size), queued: Math.max(0, live.size - batch),
    kvBlocksTotal: 1 << 20, kvBlocksFree: 1 << 19, kvBlockSize: 16, steps: String(steps), generatedTokens: '0', recentStepBatch: [], maxStepBatch: batch,
    maxInFlight: 1, stepMsBase: 1000 / stepsPerS, stepMsPerToken: 0 } } });
}, 500);
while (!serving) await new Promise((r) => setTimeout(r, 50));

// ---- clients -------------------------------------------------------------------------------------
const Inference = clientConstructor(inferencePackageDefinition(), INFERENCE_SERVICE);
// A few channels, as many client processes would open (one HTTP/2 connection carries them all otherwise).
const channels = Array.from({ length: 8 }, () => new Inference(`127.0.0.1:${ready.port}`, grpc.credentials.createInsecure()));
const seen = { messages: 0, tokens: 0, errors: 0, gaps: 0 };
function batchStream(k) {
  if (stopping) return;
  const s = channels[k % channels.length].Generate({ promptIds: [1, 2, 3], maxTokens: batchTokens, priorityClass: 'batch', ignoreEos: true });
  let next = 0;
  s.on('data', (m) => {
    seen.messages++;
    seen.tokens += m.tokenIds.length;
    if (m.index !== next) seen.gaps++;
    next = m.index + m.tokenIds.length;
  });
  s.on('error', () => { if (!stopping) seen.errors++; });
  s.on('end', () => batchStream(k));
}
for (let k = 0; k < concurrency; k++) batchStream(k);
const ttfts = [];
const rt = setInterval(() => {
  const t = performance.now();
  let first = true;
  const s = channels[0].Generate({ promptIds: [1, 2, 3], maxTokens: 16, priorityClass: 'realtime', ignoreEos: true });
  s.on('data', () => {
    if (first && measuring) ttfts.push(performance.now() - t);
    first = false;
  });
  s.on('error', () => { if (!stopping) seen.errors++; });
}, 1000 / num('rt-rate'));

let measuring = false;
const sleep = (s) => new Promise((r) => setTimeout(r, s * 1000));
const pct = (xs, p) => {
  const v = [...xs].sort((x, y) => x - y);
  return v.length ? Math.round(v[Math.min(v.length - 1, Math.ceil(p * v.length) - 1)] * 100) / 100 : 0;
};
await sleep(num('warmup-s'));
const runs = [];
let profile;
for (let i = 0; i < num('runs'); i++) {
  ttfts.length = 0;
  measuring = true;
  child.send({ cmd: 'measure' });
  await sleep(num('window-s'));
  const r = await ask('stats');
  measuring = false;
  profile = r.profile;
  const w = { ...r.stats, rtTtftMs: { n: ttfts.length, p50: pct(ttfts, 0.5), p99: pct(ttfts, 0.99) } };
  runs.push(w);
  console.log(`window ${i + 1}: loop busy ${(w.elu * 100).toFixed(1)}% (main thread cpu ${(w.mainCpuShare * 100).toFixed(1)}%, ${w.mainCpuUsPerToken.toFixed(2)} us/token; ` +
    `process ${(w.cpuShare * 100).toFixed(1)}%), delay p50 ${w.delayMs.p50} p99 ${w.delayMs.p99} ` +
    `max ${w.delayMs.max} ms, ${Math.round(w.tokensPerS)} tok/s in, gc ${w.gc.minorPer100kTokens.toFixed(1)} scavenges/100k tokens + ${w.gc.major}, ` +
    `(${w.gc.markCompacts} mark-compacts, max ${w.gc.markCompactMaxMs.toFixed(1)} ms; scavenge max ${w.gc.minorMaxMs.toFixed(1)} ms), ` +
    `${(w.gc.pauseShare * 100).toFixed(1)}% paused, ${w.store} live; realtime TTFT p50 ${w.rtTtftMs.p50} p99 ${w.rtTtftMs.p99} ms (${ttfts.length})`);
}
stopping = true;
clearInterval(stepper);
clearInterval(beat);
clearInterval(rt);
child.send({ cmd: 'stop' });
for (const c of channels) c.close();
call.cancel();
ctl.close();

const median = (xs) => pct(xs, 0.5);
const summary = { eluMedian: median(runs.map((r) => r.elu)), mainCpuUsPerTokenMedian: median(runs.map((r) => r.mainCpuUsPerToken)),
  scavengesPer100kTokensMedian: median(runs.map((r) => r.gc.minorPer100kTokens)),
  markCompactsPer100kTokens: runs.reduce((s, r) => s + r.gc.markCompacts, 0) * 1e5 / runs.reduce((s, r) => s + r.tokensPerS * r.secs, 0),
  markCompactMaxMs: Math.max(...runs.map((r) => r.gc.markCompactMaxMs)), delayMaxMs: Math.max(...runs.map((r) => r.delayMs.max)),
  rtTtftP99Max: Math.max(...runs.map((r) => r.rtTtftMs.p99)), delayP99Median: median(runs.map((r) => r.delayMs.p99)), tokensPerSMedian: median(runs.map((r) => r.tokensPerS)) };
console.log(`median: loop busy ${(summary.eluMedian * 100).toFixed(1)}%, main thread ${summary.mainCpuUsPerTokenMedian} us/token, ${summary.scavengesPer100kTokensMedian} scavenges/100k tokens, delay p99 ${summary.delayP99Median} ms (max ${summary.delayMaxMs}) at ${Math.round(summary.tokensPerSMedian)} tok/s; ${summary.markCompactsPer100kTokens.toFixed(2)} mark-compacts/100k tokens (max ${summary.markCompactMaxMs.toFixed(1)} ms); ` +
  `client: ${seen.messages} messages, ${seen.tokens} tokens, ${seen.gaps} index gaps, ${seen.errors} errors`);

let top;
const heap = a['heap-profile'] || a['heap-survivors'];
if (profile) top = heap ? summarizeHeap(profile) : summarize(profile);
const outFile = a.out ?? join(root, 'bench', 'results', `coord-loop-${commit}-${Date.now()}.json`);
mkdirSync(dirname(outFile), { recursive: true });
writeFileSync(outFile, JSON.stringify({ commit, machine: { cpus: cpus().length, model: cpus()[0]?.model, loadavg: loadavg() },
  options: a, runs, summary, client: seen, top }, null, 2));
if (profile) writeFileSync(outFile.replace(/\.json$/, heap ? '.heapprofile' : '.cpuprofile'), JSON.stringify(profile));
console.log(`wrote ${relative(process.cwd(), outFile)}`);

/** Self time by function and by file, as shares of the profiled window's samples. */
function summarize(p) {
  const self = new Map();
  const dt = new Map();
  for (let i = 0; i < p.samples.length; i++) dt.set(p.samples[i], (dt.get(p.samples[i]) ?? 0) + (p.timeDeltas[i] ?? 0));
  let total = 0;
  const byFn = new Map();
  const byFile = new Map();
  for (const n of p.nodes) {
    const t = dt.get(n.id) ?? 0;
    // The window's own Profiler.start call (node:inspector) is not the coordinator's work.
    if (!t || (n.callFrame.functionName === 'dispatch' && !n.callFrame.url)) continue;
    total += t;
    const f = n.callFrame;
    const url = f.url.replace(/^file:\/\//, '').replace(root + '/', '').replace(/^node_modules\//, '');
    const fn = `${f.functionName || '(anon)'} ${url}:${f.lineNumber + 1}`;
    byFn.set(fn, (byFn.get(fn) ?? 0) + t);
    const file = url || f.functionName;
    byFile.set(file, (byFile.get(file) ?? 0) + t);
  }
  self.total = total;
  const idle = (byFn.get('(idle) :0') ?? 0);
  const busy = total - idle;
  const rank = (m) => [...m].filter(([k]) => !k.startsWith('(idle)')).sort((x, y) => y[1] - x[1]).slice(0, 30)
    .map(([k, t]) => ({ name: k, busyPct: Math.round((t / busy) * 1000) / 10 }));
  const out = { busyMs: Math.round(busy / 1000), functions: rank(byFn), files: rank(byFile) };
  console.log('top self time (share of busy samples):');
  for (const x of out.functions.slice(0, 25)) console.log(`  ${String(x.busyPct).padStart(5)}%  ${x.name}`);
  console.log('by file:');
  for (const x of out.files.slice(0, 15)) console.log(`  ${String(x.busyPct).padStart(5)}%  ${x.name}`);
  return out;
}

/** Bytes allocated by function (self) and by file, as shares of the window's sampled allocations. */
function summarizeHeap(p) {
  const byFn = new Map();
  const byFile = new Map();
  let total = 0;
  const walk = (n) => {
    const f = n.callFrame;
    const url = f.url.replace(/^file:\/\//, '').replace(root + '/', '').replace(/^node_modules\//, '');
    const fn = `${f.functionName || '(anon)'} ${url}:${f.lineNumber + 1}`;
    total += n.selfSize;
    byFn.set(fn, (byFn.get(fn) ?? 0) + n.selfSize);
    byFile.set(url || f.functionName, (byFile.get(url || f.functionName) ?? 0) + n.selfSize);
    for (const c of n.children) walk(c);
  };
  walk(p.head);
  const rank = (m) => [...m].sort((x, y) => y[1] - x[1]).slice(0, 30).map(([k, b]) => ({ name: k, bytesPct: Math.round((b / total) * 1000) / 10 }));
  const out = { allocatedMB: Math.round(total / 1e5) / 10, functions: rank(byFn), files: rank(byFile) };
  console.log(`allocations sampled: ${out.allocatedMB} MB; by function (self):`);
  for (const x of out.functions.slice(0, 25)) console.log(`  ${String(x.bytesPct).padStart(5)}%  ${x.name}`);
  console.log('by file:');
  for (const x of out.files.slice(0, 12)) console.log(`  ${String(x.bytesPct).padStart(5)}%  ${x.name}`);
  return out;
}
