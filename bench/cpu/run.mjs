#!/usr/bin/env node
// CPU benchmark: decode (and prefill) tokens/s at batch 1 and 8 for py-tiny and a ~100M-parameter
// `nodespeed model init` checkpoint, nodespeed's CPU backend beside PyTorch CPU (Debian's
// python3-torch, bench/cpu/torch_llama.py: a plain fp32 forward over the same HF weights), in one
// run on one machine. Writes bench/results/cpu-<timestamp>.json. nodespeed runs each checkpoint with
// its weights as stored (bf16), as f32, and quantized to int8 at load (--quantize int8, W8A16;
// docs/QUANTIZATION.md): the summary gives int8 / bf16 decode at each batch size (the bar: >= 1.5x at
// batch 1 on the 100m preset).
//
//   npm run build && node bench/cpu/run.mjs [--steps 64] [--prompt 32] [--model-100m DIR] [--no-torch]
//        [--models py-tiny,llama-100m] [--weights auto,f32,int8]
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const { values: args } = parseArgs({
  options: {
    steps: { type: 'string', default: '64' },
    prompt: { type: 'string', default: '32' },
    'model-100m': { type: 'string' },
    'no-torch': { type: 'boolean', default: false },
    batches: { type: 'string', default: '1,8' },
    repeat: { type: 'string', default: '3' },
    models: { type: 'string', default: 'py-tiny,llama-100m' },
    weights: { type: 'string', default: 'auto,f32,int8' },
  },
});
const steps = Number(args.steps), prompt = Number(args.prompt);
const batches = args.batches.split(',').map(Number);
// Timed runs per measurement, best kept: on a shared machine other jobs only ever slow a run down.
const repeat = Number(args.repeat);

// The engine's compute threads normally run at nice +2 (below the event loop); here they get the
// same priority as the PyTorch process they are compared with.
process.env.NODESPEED_COMPUTE_NICE ??= '0';

const engineModule = join(root, 'dist', 'engine', 'index.js');
if (!existsSync(engineModule)) {
  console.error('bench/cpu: dist/ is missing; run `npm run build` first');
  process.exit(1);
}
const { Engine, BlockAllocator } = await import(engineModule);
const { loadModelConfig, planShard, sliceBytes } = await import(join(root, 'dist', 'model', 'index.js'));

/**
 * Weight bytes one decode step reads (the roofline of a memory-bound decode): every planned tensor
 * and its f32 row scales, except the embedding table, of which a step reads one row a sequence
 * (unless it is also the LM head).
 */
function bytesPerStep(dir, quantize) {
  const cfg = loadModelConfig(dir);
  const plan = planShard(cfg, { tpRank: 0, tpSize: 1, layerStart: 0, layerEnd: cfg.numLayers }, { quantize });
  return plan.tensors.reduce((n, t) => (t.name === 'model.embed_tokens.weight' && !plan.shardConfig.tiedEmbeddings ? n
    : n + sliceBytes(t, plan.dtype) + (t.convert?.kind === 'quantize' ? 4 * t.shape[0] : 0)), 0);
}

function model100m() {
  const dir = args['model-100m'] ?? join(tmpdir(), 'nodespeed-bench-llama-100m');
  if (!existsSync(join(dir, 'config.json'))) {
    console.error(`bench/cpu: writing a random 100M checkpoint to ${dir} (nodespeed model init)`);
    const r = spawnSync(process.execPath, [join(root, 'bin', 'nodespeed'), 'model', 'init', '--arch', 'llama', '--preset', '100m',
      '--dtype', 'bf16', '--seed', '1', dir], { stdio: ['ignore', 'inherit', 'inherit'] });
    if (r.status !== 0) throw new Error('`nodespeed model init --preset 100m` failed');
  }
  return dir;
}

// nodespeed at every weight variant ('auto': as stored, 'f32': converted at load, 'int8': quantized at
// load) for one batch size. All engines are loaded first and their timed runs interleaved (variant
// after variant, `repeat` rounds, the best of each kept), so a shared machine's load drifting over
// the minutes of a run does not favour the variant that happened to run in a quiet spell.
async function benchNodespeed(dir, batch, variants) {
  const engines = [];
  try {
    for (const w of variants) engines.push(await Engine.load(dir, { device: 'cpu', ...(w === 'int8' ? { quantize: 'int8' } : { dtype: w }) }));
    const runs = engines.map((engine) => {
      const vocab = engine.shard.vocabSize;
      const alloc = new BlockAllocator(engine.kvBlocks, engine.kvBlockSize);
      const tables = Array.from({ length: batch }, (_, b) => alloc.allocate(b, prompt + steps + 1));
      const prompts = tables.map((_, b) => Int32Array.from({ length: prompt }, (_, j) => (b * prompt * 17 + j * 17 + 3) % vocab));
      return async () => {
        let t0 = performance.now();
        let res = await engine.step({ seqs: tables.map((blockTable, b) => ({ tokens: prompts[b], pos: 0, blockTable })) });
        const prefillMs = performance.now() - t0;
        t0 = performance.now();
        for (let i = 0; i < steps; i++)
          res = await engine.step({ seqs: tables.map((blockTable, b) => ({ tokens: res.sampled.subarray(b, b + 1), pos: prompt + i, blockTable })) });
        return { prefillMs, decodeMs: performance.now() - t0 };
      };
    });
    for (const run of runs) await run(); // warm-up: page in weights and KV, size the scratch buffers
    const best = runs.map(() => ({ prefillMs: Infinity, decodeMs: Infinity }));
    for (let i = 0; i < repeat; i++) {
      for (const [k, run] of runs.entries()) {
        const t = await run();
        best[k].prefillMs = Math.min(best[k].prefillMs, t.prefillMs);
        best[k].decodeMs = Math.min(best[k].decodeMs, t.decodeMs);
      }
    }
    return best.map((b, k) => ({ prefill_tok_s: (batch * prompt * 1000) / b.prefillMs, decode_tok_s: (batch * steps * 1000) / b.decodeMs,
      describe: engines[k].describe() }));
  } finally {
    for (const e of engines) e.dispose();
  }
}

// Debian's torch calls BLAS through libblas.so.3, which is the reference (netlib) BLAS unless an
// optimized one is installed: use OpenBLAS (apt-get install libopenblas0-pthread) when present, so
// the baseline is a fair one (netlib sgemm runs at ~4 GFLOP/s here, OpenBLAS at ~150).
const openblas = '/usr/lib/x86_64-linux-gnu/openblas-pthread';
// Threads: OpenBLAS's own pool for the matrix products and one torch intra-op thread — the fastest
// of the combinations tried here (both pools at 2 oversubscribe the 2 cores and run 3-10x slower).
const torchEnv = existsSync(join(openblas, 'libblas.so.3'))
  ? { ...process.env, LD_LIBRARY_PATH: [openblas, process.env.LD_LIBRARY_PATH].filter(Boolean).join(':'), OPENBLAS_NUM_THREADS: String(cpus().length) }
  : process.env;
const torchBlas = torchEnv === process.env ? 'system libblas.so.3' : 'OpenBLAS (pthread)';

function benchTorch(dir, batch) {
  const out = execFileSync('/usr/bin/python3', [join(root, 'bench', 'cpu', 'torch_llama.py'), '--model', dir, '--batch', String(batch),
    '--prompt', String(prompt), '--steps', String(steps), '--repeat', String(repeat),
    '--threads', String(torchEnv === process.env ? cpus().length : 1)], { encoding: 'utf8', env: torchEnv });
  return JSON.parse(out.trim().split('\n').pop());
}

function lscpu(field) {
  try {
    const line = execFileSync('lscpu', { encoding: 'utf8' }).split('\n').find((l) => l.startsWith(field + ':'));
    return line ? line.slice(field.length + 1).trim() : '';
  } catch {
    return '';
  }
}

const torchOk = !args['no-torch'] && spawnSync('/usr/bin/python3', ['-c', 'import torch'], { stdio: 'ignore' }).status === 0;
if (!args['no-torch'] && !torchOk) console.error('bench/cpu: /usr/bin/python3 has no torch (apt-get install python3-torch); skipping the PyTorch baseline');

const wanted = args.models.split(',');
const models = [['py-tiny', () => join(root, 'models', 'py-tiny')], ['llama-100m', model100m]].filter(([n]) => wanted.includes(n)).map(([n, f]) => [n, f()]);
const weightVariants = args.weights.split(',');
const loadBefore = loadavg()[0];
const results = [];
for (const [name, dir] of models) {
  const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  for (const batch of batches) {
    const measured = await benchNodespeed(dir, batch, weightVariants);
    for (const [k, w] of weightVariants.entries()) {
      const r = measured[k];
      results.push({ model: name, runtime: 'nodespeed', weights: w === 'auto' ? `as stored (${cfg.dtype ?? cfg.torch_dtype})` : w, batch, ...r });
      console.log(`${name} b=${batch} nodespeed weights=${w}: decode ${r.decode_tok_s.toFixed(1)} tok/s, prefill ${r.prefill_tok_s.toFixed(0)} tok/s`);
    }
    if (torchOk) {
      const r = benchTorch(dir, batch);
      results.push({ model: name, runtime: 'pytorch', weights: 'f32', blas: torchBlas, batch, ...r });
      console.log(`${name} b=${batch} pytorch ${r.torch} fp32: decode ${r.decode_tok_s.toFixed(1)} tok/s, prefill ${r.prefill_tok_s.toFixed(0)} tok/s`);
    }
  }
}

let commit = '';
try {
  commit = execFileSync('git', ['rev-parse', 'HEAD'], { cwd: root, encoding: 'utf8' }).trim();
} catch { /* not a git checkout */ }
const record = {
  benchmark: 'cpu decode/prefill tokens/s',
  date: new Date().toISOString(),
  commit,
  machine: { cpu: lscpu('Model name'), cores: cpus().length, threads_per_core: lscpu('Thread(s) per core'), node: process.version,
    // 1-minute load average before and after: other work on a shared machine slows both runtimes.
    load_average: [Number(loadBefore.toFixed(2)), Number(loadavg()[0].toFixed(2))] },
  settings: { prompt_tokens: prompt, decode_steps: steps, sampling: 'greedy',
    timing: `best of ${repeat} runs after a warm-up run, nodespeed's weight variants interleaved run by run` },
  results,
  // int8 (quantized at load) over the weights as stored, decode tok/s, per model and batch.
  int8_over_stored: Object.fromEntries(results.filter((r) => r.runtime === 'nodespeed' && r.weights === 'int8').map((r) => {
    const base = results.find((b) => b.runtime === 'nodespeed' && b.model === r.model && b.batch === r.batch && b.weights.startsWith('as stored'));
    return [`${r.model} b=${r.batch}`, base ? r.decode_tok_s / base.decode_tok_s : null];
  })),
  // Its roofline: weight bytes a decode step reads as stored / as int8, and the measured speedup as
  // a fraction of it.
  int8_roofline: Object.fromEntries(models.map(([name, dir]) => {
    const stored = bytesPerStep(dir, 'none'), int8 = bytesPerStep(dir, 'int8');
    return [name, { bytes_per_step_stored: stored, bytes_per_step_int8: int8, speedup_bound: stored / int8 }];
  })),
};
for (const [key, x] of Object.entries(record.int8_over_stored)) {
  const bound = record.int8_roofline[key.split(' ')[0]]?.speedup_bound;
  if (x !== null && bound) console.log(`${key}: int8 / bf16 decode ${x.toFixed(2)}x, ${(100 * x / bound).toFixed(0)}% of the ${bound.toFixed(2)}x roofline`);
}
mkdirSync(join(root, 'bench', 'results'), { recursive: true });
const file = join(root, 'bench', 'results', `cpu-${record.date.replace(/[:.]/g, '-')}.json`);
writeFileSync(file, JSON.stringify(record, null, 2) + '\n');
console.log(`wrote ${file}`);
