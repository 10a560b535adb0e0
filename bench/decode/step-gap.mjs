// How long the engine sits idle between two decode steps (StepTiming.gapMs, measured on the worker
// thread: from one step's end to the next one's start), for the two ways a driver can hand it the
// next step:
//   awaited: wait for step N's result on the JS thread, put N's sampled tokens into N+1's request,
//            then call the engine: the gap holds the result's trip to the JS thread, the JS work
//            there, and the call's trip back to a worker thread.
//   chained: submit N+1 while N runs, its tokens taken from N's sampled tokens by the addon
//            (StepRequest.tokenFrom): the worker thread starts it as soon as N ends.
// The replica driver (src/worker/replica.ts, pp = 1) submits chained. --load MS adds a busy JS
// thread: every millisecond a timer burns MS of it, as a driver's event loop serving streams does.
// B decode sequences of one token each; the CPU backend is enough (the gap does not depend on the device).
// usage: node bench/decode/step-gap.mjs MODEL_DIR [--seqs 127] [--steps 400] [--load 0.5] [--threads 1]
import { parseArgs } from 'node:util';

import { BlockAllocator, Engine } from '../../dist/engine/index.js';

const { positionals, values } = parseArgs({ allowPositionals: true, options: {
  seqs: { type: 'string', default: '127' }, steps: { type: 'string', default: '400' }, load: { type: 'string', default: '0' },
  threads: { type: 'string', default: '1' } } });
const dir = positionals[0];
if (!dir) throw new Error('usage: node bench/decode/step-gap.mjs MODEL_DIR [--seqs 127] [--steps 400] [--load MS] [--threads 1]');
const B = Number(values.seqs), STEPS = Number(values.steps), LOAD = Number(values.load);
const engine = await Engine.load(dir, { device: 'cpu', kvBlocks: 4096, threads: Number(values.threads) });
const PROMPT = 8;
if (engine.maxPosition < PROMPT + STEPS + 1) throw new Error(`${dir}: maxPosition ${engine.maxPosition} < ${PROMPT + STEPS + 1}`);
const alloc = new BlockAllocator(engine.kvBlocks, engine.kvBlockSize);
const tables = Array.from({ length: B }, (_, i) => alloc.allocate(`s${i}`, PROMPT + STEPS + 1));
const V = engine.config.vocabSize;
const from = Int32Array.from({ length: B }, (_, i) => i);

const prefill = () => tables.map((blockTable, i) => ({ tokens: Int32Array.from({ length: PROMPT }, (_, j) => (i * 31 + j * 7) % V), pos: 0,
  blockTable, temperature: 0.8, seed: i + 1 }));
const decode = (d, tokens) => tables.map((blockTable, i) => ({ tokens: Int32Array.of(tokens ? tokens[i] : 0), pos: PROMPT + d, blockTable,
  temperature: 0.8, seed: i + 1 }));

let burning;
function busyLoop(on) {
  clearInterval(burning);
  if (!on || LOAD <= 0) return;
  burning = setInterval(() => { const end = performance.now() + LOAD; while (performance.now() < end); }, 1);
}

/** Runs STEPS decode steps after a prefill; returns the sampled tokens of every step and the gaps and runs (ms). */
async function run(mode) {
  const sampled = [];
  const gaps = [], runs = [];
  let r = await engine.step({ seqs: prefill() });
  sampled.push(Array.from(r.sampled));
  busyLoop(true);
  const t0 = performance.now();
  if (mode === 'awaited') {
    for (let d = 0; d < STEPS; d++) {
      r = await engine.step({ seqs: decode(d, r.sampled) });
      sampled.push(Array.from(r.sampled));
      gaps.push(r.timing.gapMs);
      runs.push(r.timing.runMs);
    }
  } else {
    // The driver's shape: step d + 1 is submitted as soon as step d's result is awaited.
    let cur = engine.submit({ seqs: decode(0), tokenFrom: from });
    for (let d = 0; d < STEPS; d++) {
      const next = d + 1 < STEPS ? engine.submit({ seqs: decode(d + 1), tokenFrom: from }) : null;
      r = await cur.result;
      sampled.push(Array.from(r.sampled));
      gaps.push(r.timing.gapMs);
      runs.push(r.timing.runMs);
      cur = next;
    }
  }
  const wall = performance.now() - t0;
  busyLoop(false);
  return { sampled, gaps, runs, wall };
}

const q = (xs, f) => [...xs].sort((a, b) => a - b)[Math.floor(f * (xs.length - 1))];
const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
const f3 = (x) => x.toFixed(3);
await run('chained');  // warm-up
const results = {};
for (const mode of ['awaited', 'chained', 'awaited', 'chained']) {
  const r = await run(mode);
  const prev = results[mode];
  if (prev && JSON.stringify(prev.sampled) !== JSON.stringify(r.sampled)) throw new Error(`${mode}: two runs sampled different tokens`);
  results[mode] = r;
  console.log(`${mode.padEnd(7)} ${B} seqs, load ${LOAD} ms/ms: gap p50 ${f3(q(r.gaps, 0.5))} p90 ${f3(q(r.gaps, 0.9))} mean ${f3(mean(r.gaps))} ms; ` +
    `run mean ${f3(mean(r.runs))} ms; ${(STEPS / (r.wall / 1000)).toFixed(0)} steps/s`);
}
if (JSON.stringify(results.awaited.sampled) !== JSON.stringify(results.chained.sampled)) throw new Error('chained steps sampled other tokens than awaited ones');
console.log('awaited and chained sampled the same tokens');
engine.dispose();
