// The replica driver's JS work per decode step (src/worker/replica.ts, tp 1 pp 1) on a CPU engine,
// no coordinator: S streams decoding together, and the milliseconds of the driver's thread each
// step costs. On a GPU host the driver plans, packs and submits step N+1 and settles step N while
// N runs, so this must fit in one step's run or the device idles; the CPU engine's own run time
// does not matter here. The token updates are serialized as the control stream's Tokens message
// (the worker's serializer for its Connect stream, which grpc-js runs on write): JS work per step too.
// Per step, over the steps with every stream decoding (the first and last WARM left out):
//   busy_ms: the event loop's active time (performance.eventLoopUtilization) / steps;
//   parts: the time inside Scheduler.next/nextAhead (plan), Engine.submit (pack + submit),
//   Scheduler.apply, Scheduler.settle (detokenize, stop checks, updates) and the emit (serialize).
// --root runs another checkout's build (its dist/ and build/Release/nodespeed.node); run it under
// `node --cpu-prof` to see where the time goes. Prints one JSON line.
// usage: node bench/decode/driver-js.mjs [MODEL_DIR=models/py-tiny] [--root DIR] [--streams 128] [--tokens 400] [--label NAME]
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';

const here = resolve(import.meta.dirname, '..', '..');
const { positionals, values } = parseArgs({ allowPositionals: true, options: {
  root: { type: 'string', default: here }, streams: { type: 'string', default: '128' },
  tokens: { type: 'string', default: '400' }, warm: { type: 'string', default: '20' }, label: { type: 'string' } } });
const dir = positionals[0] ?? join(here, 'models', 'py-tiny');
const S = Number(values.streams), TOKENS = Number(values.tokens), WARM = Number(values.warm);
const from = (p) => import(pathToFileURL(join(resolve(values.root), 'dist', p)).href);
const { Engine } = await from('engine/index.js');
const { loadTokenizer } = await from('model/index.js');
const { Replica } = await from('worker/replica.js');
const { Scheduler } = await from('worker/scheduler.js');
const { samplingToWire, validateSampling } = await from('protocol/sampling.js');
const { FinishReason } = await from('protocol/lifecycle.js');
const { CONTROL_SERVICE, controlPackageDefinition } = await from('protocol/proto.js');
const { controlService } = await from('worker/control-client.js');

// The worker's serializer for its control stream (builds before it had its own: the loaded definition's).
const serialize = (controlService?.() ?? controlPackageDefinition()[CONTROL_SERVICE]).Connect.requestSerialize;
const engine = await Engine.load(dir, { device: 'cpu', kvBlocks: 4096, threads: 1 });
const tok = await loadTokenizer(dir);
const V = engine.config.vocabSize;
if (engine.maxPosition < 8 + TOKENS) throw new Error(`${dir}: maxPosition ${engine.maxPosition} < 8 + --tokens ${TOKENS}`);

// Time spent in each part, counted only on the steady steps (every stream decoding).
const parts = { plan: 0, submit: 0, apply: 0, settle: 0, emit: 0 };
let steady = false, steadySteps = 0, wireBytes = 0;
function timed(obj, name, part) {
  const f = obj[name];
  obj[name] = function (...a) {
    const t0 = performance.now();
    try {
      return f.apply(this, a);
    } finally {
      if (steady) parts[part] += performance.now() - t0;
    }
  };
}
timed(Scheduler.prototype, 'next', 'plan');
timed(Scheduler.prototype, 'nextAhead', 'plan');
timed(Scheduler.prototype, 'apply', 'apply');
timed(Scheduler.prototype, 'settle', 'settle');
timed(engine, 'submit', 'submit');

let done = 0, finish, applied = 0, elu0, eluEnd;
const finished = new Promise((r) => (finish = r));
const replica = new Replica(engine, null, { stage: 0, tpRank: 0, tp: 1, pp: 1 }, { driver: { tokenizer: tok, kvBlocks: engine.kvBlocks,
  kvBlockSize: engine.kvBlockSize, maxBatchTokens: 2048, maxQueue: 4096, emit: (updates) => {
    const t0 = performance.now();
    if (updates.length) wireBytes += serialize({ tokens: { epoch: '1', updates } }).length;
    if (steady) parts.emit += performance.now() - t0;
    for (const u of updates) if (u.finishReason !== FinishReason.FINISH_REASON_UNSPECIFIED) done++;
    // One emit a step: the steady window is the steps after WARM decodes, before the last WARM.
    applied++;
    if (applied === WARM + 1) {
      steady = true;
      elu0 = performance.eventLoopUtilization();
    } else if (applied === TOKENS - WARM) {
      steady = false;
      eluEnd = performance.eventLoopUtilization(elu0);
      steadySteps = applied - WARM - 1;
    }
    if (done === S) finish();
  } } });
const running = replica.run();
const t0 = performance.now();
for (let i = 0; i < S; i++) {
  replica.submit({ epoch: '1', requestId: `s${i}`, promptIds: Array.from({ length: 8 }, (_, j) => (i * 31 + j * 7) % V), generatedIds: [],
    priority: 0, classRank: 0, params: samplingToWire(validateSampling({ maxTokens: TOKENS, temperature: 0.8, seed: i + 1, ignoreEos: true })) });
}
await finished;
const wall = performance.now() - t0;
replica.stop();
await running;
engine.dispose();

const r3 = (x) => Math.round(x * 1000) / 1000;
const per = Object.fromEntries(Object.entries(parts).map(([k, v]) => [k, r3(v / steadySteps)]));
console.log(JSON.stringify({ label: values.label ?? values.root, streams: S, steps: steadySteps, busy_ms: r3(eluEnd.active / steadySteps),
  elu: r3(eluEnd.utilization), parts_ms: per, parts_sum_ms: r3(Object.values(parts).reduce((a, b) => a + b, 0) / steadySteps),
  step_ms: r3(eluEnd.active / eluEnd.utilization / steadySteps), wire_bytes: wireBytes, wall_s: r3(wall / 1000) }));
