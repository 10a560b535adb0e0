// The replica driver's own loop (src/worker/replica.ts, tp 1 pp 1) on a CPU engine, no coordinator:
// S streams decoding together, and how long the engine sits idle per step while they decode
// (the window's time less the backend's run time, over the steps: the hand-over from one step to
// the next, whatever it is made of). --root runs another checkout's build (its dist/ and
// build/Release/nodespeed.node), so two versions of the driver compare on the same machine.
// --load MS adds a busy JS thread: every millisecond a timer burns MS of it, as a driver's event
// loop serving many streams does. Prints one JSON line.
// usage: node bench/decode/driver-gap.mjs MODEL_DIR [--root DIR] [--streams 127] [--tokens 160] [--load 0] [--label NAME]
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';

const { positionals, values } = parseArgs({ allowPositionals: true, options: {
  root: { type: 'string', default: resolve(import.meta.dirname, '..', '..') }, streams: { type: 'string', default: '127' },
  tokens: { type: 'string', default: '160' }, load: { type: 'string', default: '0' }, label: { type: 'string' } } });
const dir = positionals[0];
if (!dir) throw new Error('usage: node bench/decode/driver-gap.mjs MODEL_DIR [--root DIR] [--streams 127] [--tokens 160] [--load MS]');
const S = Number(values.streams), TOKENS = Number(values.tokens), LOAD = Number(values.load);
const tmp = mkdtempSync(join(tmpdir(), 'driver-gap-'));
const traceFile = join(tmp, 'steps.jsonl');
process.env.NODESPEED_STEP_TRACE = traceFile;  // read when the settings load, on the first import below
const from = (p) => import(pathToFileURL(join(resolve(values.root), 'dist', p)).href);
const { Engine } = await from('engine/index.js');
const { loadTokenizer } = await from('model/index.js');
const { Replica } = await from('worker/replica.js');
const { samplingToWire, validateSampling } = await from('protocol/sampling.js');
const { FinishReason } = await from('protocol/lifecycle.js');

const engine = await Engine.load(dir, { device: 'cpu', kvBlocks: 4096, threads: 1 });
const tok = await loadTokenizer(dir);
const V = engine.config.vocabSize;
let done = 0, finish;
const finished = new Promise((r) => (finish = r));
const replica = new Replica(engine, null, { stage: 0, tpRank: 0, tp: 1, pp: 1 }, { driver: { tokenizer: tok, kvBlocks: engine.kvBlocks,
  kvBlockSize: engine.kvBlockSize, maxBatchTokens: 2048, maxQueue: 4096, emit: (updates) => {
    for (const u of updates) if (u.finishReason !== FinishReason.FINISH_REASON_UNSPECIFIED) done++;
    if (done === S) finish();
  } } });
const running = replica.run();
let burning;
if (LOAD > 0) burning = setInterval(() => { const end = performance.now() + LOAD; while (performance.now() < end); }, 1);
for (let i = 0; i < S; i++) {
  replica.submit({ epoch: '1', requestId: `s${i}`, promptIds: Array.from({ length: 8 }, (_, j) => (i * 31 + j * 7) % V), generatedIds: [],
    priority: 0, classRank: 0, params: samplingToWire(validateSampling({ maxTokens: TOKENS, temperature: 0.8, seed: i + 1, ignoreEos: true })) });
}
await finished;
clearInterval(burning);
replica.stop();
await running;
engine.dispose();
await new Promise((r) => setTimeout(r, 400));  // the trace is written every 200 ms

// The decode steps with every stream in (a step carries one token per stream), less the first 10.
const lines = readFileSync(traceFile, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
rmSync(tmp, { recursive: true, force: true });
const steady = lines.filter((s) => s.decodes === S).slice(10, -2);
const first = steady[0], last = steady[steady.length - 1];
const span = last.epochMs + last.run_ms - first.epochMs;  // the first step's start to the last one's end, on the backend's side
const run = steady.reduce((a, s) => a + s.run_ms, 0);
const idle = (span - run) / (steady.length - 1);
const r3 = (x) => Math.round(x * 1000) / 1000;
const q = (xs, f) => [...xs].sort((a, b) => a - b)[Math.floor(f * (xs.length - 1))];
// The trace's start is the backend's start (gap_ms on the line) or, in builds before it, the JS call (the span then counts the call's queue trip too).
console.log(JSON.stringify({ label: values.label ?? values.root, streams: S, load_ms_per_ms: LOAD, steps: steady.length,
  run_ms_mean: r3(run / steady.length), idle_ms_per_step: r3(idle), steps_per_s: Math.round((steady.length - 1) / ((span - last.run_ms) / 1000)),
  ...(steady[1].gap_ms !== undefined ? { gap_ms: { p50: r3(q(steady.map((s) => s.gap_ms), 0.5)), p90: r3(q(steady.map((s) => s.gap_ms), 0.9)),
    max: r3(q(steady.map((s) => s.gap_ms), 1)) } } : {}) }));
