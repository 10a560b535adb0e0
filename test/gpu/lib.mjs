// Shared by the GPU suites (test/gpu/*.test.ts) and the GPU benchmarks (bench/decode, bench/tp):
// open a model folder as CUDA engines through the built package (dist/: the loader, and the addon
// configured from the settings registry, so NODESPEED_* variables apply as they do in a worker),
// what this host offers (GPUs, nvcc, python3 with transformers), and result files with GPU and commit.
import { execSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

const dist = (...p) => pathToFileURL(join(root, 'dist', ...p)).href;
if (!existsSync(join(root, 'dist', 'native', 'addon.js'))) throw new Error('test/gpu/lib.mjs: dist/ is missing: run `npx tsc` first');
const { loadAddon } = await import(dist('native', 'addon.js'));
const { settings } = await import(dist('settings', 'index.js'));
const model = await import(dist('model', 'index.js'));

/** The native addon, configured with this process's settings (src/native/addon.ts). */
export const addon = loadAddon();

// NODESPEED_TEST_DEVICE=cpu runs the checks that can on the CPU backend: a dry run of the checks
// themselves on a machine without a GPU (results then say device 'cpu').
export const device = settings().testDevice ?? 'cuda';

/** Where a 7B-shape checkpoint lives (made by ensure7b when missing). */
export const model7b = settings().testModel7b ?? '/tmp/llama-7b-shape';

/**
 * Whether this host can run a check needing `gpus` CUDA devices (and `cuda`: no CPU dry run): { ok,
 * reason } where reason says why not. In a CPU dry run every check that allows it runs.
 */
export function gpuStatus({ gpus = 1, cuda = false } = {}) {
  if (device === 'cpu') return cuda ? { ok: false, reason: 'needs CUDA (NODESPEED_TEST_DEVICE=cpu)' } : { ok: true, reason: '' };
  const info = addon.info();
  if (!info.cuda.available) return { ok: false, reason: `CUDA unavailable: ${info.cuda.reason}` };
  if (info.cuda.devices.length < gpus) return { ok: false, reason: `needs ${gpus} GPUs, this host has ${info.cuda.devices.length}` };
  if (gpus > 1 && !addon.ncclUniqueId) return { ok: false, reason: 'the addon has no NCCL binding' };
  return { ok: true, reason: '' };
}

/** A suite title that carries the reason it is skipped (printed too: the default reporter shows counts only). */
export function titled(title, status) {
  if (status.ok) return title;
  console.log(`skipped: ${title}: ${status.reason}`);
  return `${title} [skipped: ${status.reason}]`;
}

/** nvcc for the kernel-level checks: $NVCC, $CUDA_HOME/bin/nvcc, /usr/local/cuda/bin/nvcc or PATH; null when absent. */
export function findNvcc() {
  const candidates = [process.env.NVCC, process.env.CUDA_HOME && join(process.env.CUDA_HOME, 'bin', 'nvcc'), '/usr/local/cuda/bin/nvcc'].filter(Boolean);
  for (const c of candidates) if (existsSync(c)) return c;
  const which = spawnSync('sh', ['-c', 'command -v nvcc'], { encoding: 'utf8' });
  return which.status === 0 ? which.stdout.trim() : null;
}

/** Whether python3 can import torch and transformers (the HF references). */
export function haveTransformers() {
  return spawnSync('python3', ['-c', 'import torch, transformers'], { stdio: 'ignore' }).status === 0;
}

/** Makes the 7B-shape checkpoint at model7b unless it exists: `nodespeed model init`, else test/gpu/make_7b.py. */
export function ensure7b() {
  if (existsSync(join(model7b, 'config.json'))) return model7b;
  const init = spawnSync(process.execPath, [join(root, 'bin', 'nodespeed'), 'model', 'init', '--preset', '7b', '--dtype', 'bf16', model7b],
    { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8', timeout: 600_000 });
  if (init.status === 0) return model7b;
  const py = spawnSync('python3', [join(root, 'test', 'gpu', 'make_7b.py'), model7b], { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8', timeout: 600_000 });
  if (py.status !== 0) throw new Error(`cannot make ${model7b}: nodespeed model init: ${init.stderr}; make_7b.py: ${py.stderr}`);
  return model7b;
}

/**
 * Loads `dir` as one shard (layers [layerStart, layerEnd), default all; tp rank `tpRank` of `tpSize`,
 * on cuda:deviceIndex) through the project's loader; `comm` (tp > 1) is set before loading.
 * quantize ('int8' | 'fp8') and kvCacheDtype ('fp8') as the engine's flags (docs/QUANTIZATION.md);
 * weightBytes: the bytes the backend holds (quantized matrices at one byte, their f32 scales).
 */
export async function openCudaEngine(dir, { dtype = 'bf16', kvBlocks = 0, gpuMemoryFraction, device: dev = device,
  tpRank = 0, tpSize = 1, deviceIndex = 0, comm, layerStart = 0, layerEnd, quantize = 'none', kvCacheDtype = 'auto', maxStepTokens } = {}) {
  const cfg = model.loadModelConfig(dir);
  const ckpt = await model.openCheckpoint(dir);
  const plan = model.planShard(cfg, { tpRank, tpSize, layerStart, layerEnd: layerEnd ?? cfg.numLayers }, { quantize, kvCacheFp8: kvCacheDtype === 'fp8' });
  const shard = { ...plan.shardConfig, device: dev, compute: dev === 'cpu' ? 'f32' : dtype, kvBlocks, deviceIndex,
    ...(kvCacheDtype === 'fp8' ? { kvCacheDtype } : {}) };
  if (gpuMemoryFraction) shard.gpuMemoryFraction = gpuMemoryFraction;
  if (maxStepTokens) shard.maxStepTokens = maxStepTokens;
  const engine = new addon.Engine(shard);
  if (comm) engine.setTpComm(comm);
  let weightBytes = 0;
  const t0 = performance.now();
  await model.loadShard(ckpt, plan, async (name, dt, shape, data) => {
    // Matrices and the scales of quantized ones (norms are f32 in the backend: counted as bf16, negligible).
    weightBytes += dt === 'f32' && !name.endsWith('_scale') ? shape.reduce((a, b) => a * b, 1) * 2 : data.byteLength;
    await engine.loadTensor(name, dt, shape, data);
  }, undefined, (data, dt, rows, cols, format, c0, c1, what) => addon.quantize(data, dt, rows, cols, format, c0, c1, what));
  const fin = await engine.finalize();
  const loadSeconds = (performance.now() - t0) / 1000;
  if (ckpt.close) await ckpt.close();
  // kvWindowBlocks: the windowed layers' own pool (models that mix windowed and global layers), whose table each step needs too.
  return { engine, cfg, shard, kvBlocks: fin.kvBlocks, kvWindowBlocks: fin.kvWindowBlocks, blockSize: fin.kvBlockSize, weightBytes, loadSeconds };
}

/** Runs `fn` with some native settings changed (read when an engine is constructed), then restores them. */
export async function withSettings(changes, fn) {
  const before = addon.settings();
  addon.configure({ ...before, ...changes });
  try {
    return await fn();
  } finally {
    addon.configure(before);
  }
}

// Two or more in-process TP communicators, one per rank: NCCL from one unique id on cuda:rank, or
// over TCP on 127.0.0.1 for the CPU dry run.
export async function tpComms(size) {
  if (device === 'cpu') {
    const comms = Array.from({ length: size }, (_, rank) => new addon.Comm({ kind: 'tcp', rank, size }));
    const ports = await Promise.all(comms.map((c) => c.listen('127.0.0.1')));
    await Promise.all(comms.map((c) => c.connect(ports.map((p) => `127.0.0.1:${p}`))));
    return comms;
  }
  const uniqueId = addon.ncclUniqueId();
  const comms = Array.from({ length: size }, (_, rank) => new addon.Comm({ kind: 'nccl', rank, size, uniqueId, deviceIndex: rank }));
  await Promise.all(comms.map((c) => c.init()));
  return comms;
}

// A trivial block allocator for scripts: sequence i gets blocks [i * per, (i + 1) * per).
export function blockTables(nSeqs, maxTokens, blockSize, kvBlocks) {
  const per = Math.ceil(maxTokens / blockSize);
  if (per * nSeqs > kvBlocks) throw new Error(`need ${per * nSeqs} KV blocks, engine has ${kvBlocks}`);
  return Array.from({ length: nSeqs }, (_, i) => Int32Array.from({ length: per }, (_, b) => i * per + b));
}

export function cosine(a, b) {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
  return dot / Math.sqrt(na * nb);
}

// Logits of N positions x V: the smallest per-position cosine (and where), and how often the top-1 agrees.
export function compareLogits(a, b, V, N) {
  let minCosine = 1, agree = 0, worstPosition = -1;
  for (let p = 0; p < N; p++) {
    const u = a.subarray(p * V, (p + 1) * V), v = b.subarray(p * V, (p + 1) * V);
    const c = cosine(u, v);
    if (c < minCosine) { minCosine = c; worstPosition = p; }
    agree += argmax(u) === argmax(v) ? 1 : 0;
  }
  return { minCosine, worstPosition, top1Agreement: agree / N };
}

export function argmax(a, off = 0, n = a.length) {
  let best = 0;
  for (let i = 1; i < n; i++) if (a[off + i] > a[off + best]) best = i;
  return best;
}

// Greedy continuation: prefill `ids`, then `n - 1` single-token decodes. Returns the n new ids
// and the last-position logits of the prefill.
export async function greedy(engine, ids, n, blockTable, windowBlockTable) {
  const tables = windowBlockTable ? { blockTable, windowBlockTable } : { blockTable };
  const first = await engine.step({ seqs: [{ tokens: Int32Array.from(ids), pos: 0, ...tables }], wantLogits: true });
  const out = [first.sampled[0]];
  for (let i = 1; i < n; i++) {
    const r = await engine.step({ seqs: [{ tokens: Int32Array.of(out[i - 1]), pos: ids.length + i - 1, ...tables }] });
    out.push(r.sampled[0]);
  }
  return { tokens: out, lastLogits: first.logits };
}

/**
 * How close the reference's top two logits are after `seq`: the f32 CPU backend (held against HF f32
 * to ~1e-5 on every fixture) re-scores the sequence. Where a GPU run leaves HF's greedy path, this
 * tells a rounding flip at a near-tie from a real divergence.
 */
export async function referenceMargin(dir, seq) {
  const { engine, blockSize, kvBlocks, kvWindowBlocks } = await openCudaEngine(dir, { device: 'cpu', kvBlocks: 64 });
  try {
    const [bt] = blockTables(1, 1024, blockSize, kvBlocks);
    // A window pool as large as the main one (64 blocks for a 256-position model): the same table serves it.
    const r = await engine.step({ seqs: [{ tokens: Int32Array.from(seq), pos: 0, blockTable: bt, ...(kvWindowBlocks ? { windowBlockTable: bt } : {}),
      sample: false }], wantLogits: true });
    const s = Array.from(r.logits).sort((a, b) => b - a);
    return s[0] - s[1];
  } finally {
    engine.dispose();
  }
}

/** The commit the results belong to: NODESPEED_COMMIT (a copy of the tree without .git), else git. */
export function gitCommit() {
  if (settings().commit) return settings().commit;
  try { return execSync('git rev-parse HEAD', { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim(); }
  catch { return 'unknown'; }
}

export function gpuName() {
  try { return execSync('nvidia-smi --query-gpu=name,driver_version --format=csv,noheader', { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim().split('\n')[0]; }
  catch { return 'unknown'; }
}

export function gpuSlug() {
  return gpuName().split(',')[0].replace(/NVIDIA\s*/i, '').trim().replace(/[^A-Za-z0-9]+/g, '-').toLowerCase();
}

// Writes a result JSON (with GPU, commit and command) into `dir` (default $RESULTS_DIR, else
// bench/results) as NAME-<gpu>.json, so runs on different GPUs sit side by side.
export function writeResult(name, body, dir = process.env.RESULTS_DIR ?? join(root, 'bench', 'results')) {
  mkdirSync(dir, { recursive: true });
  name = name.replace(/\.json$/, `-${device === 'cpu' ? 'cpu-dry-run' : gpuSlug()}.json`);
  const doc = { gpu: device === 'cpu' ? 'none (cpu dry run)' : gpuName(), device, commit: gitCommit(),
    command: process.argv.slice(1).map((a) => a.replace(root + '/', '')).join(' '), date: new Date().toISOString(), ...body };
  writeFileSync(join(dir, name), JSON.stringify(doc, null, 2) + '\n');
  return doc;
}

/** The GPU suites record their measurements only where a run asks for it ($RESULTS_DIR, as bench/gpu-visit.sh sets). */
export function recordResult(name, body) {
  if (process.env.RESULTS_DIR) writeResult(name, body);
}

export function requireCuda() {
  const s = gpuStatus();
  if (!s.ok) {
    console.log(JSON.stringify({ ok: false, error: s.reason }));
    process.exit(2);
  }
  return addon.info();
}
