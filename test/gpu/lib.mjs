// Shared by the GPU-host scripts in test/gpu and bench/decode: open one model folder as a
// single-shard CUDA engine through the real loader (dist/model) and addon, and run steps on it.
// Plain Node (no vitest): the GPU host gets only .gpu/node, build/, dist/ and node_modules.
import { createRequire } from 'node:module';
import { execSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const addon = createRequire(import.meta.url)(join(root, 'build', 'Release', 'nodespeed.node'));

// NODESPEED_TEST_DEVICE=cpu runs these scripts on the CPU backend: a dry run of the scripts
// themselves on a machine without a GPU (the results then say device 'cpu').
export const device = process.env.NODESPEED_TEST_DEVICE ?? 'cuda';

export function requireCuda() {
  const info = addon.info();
  if (device === 'cpu') return info;
  if (!info.cuda.available) {
    console.log(JSON.stringify({ ok: false, error: `cuda unavailable: ${info.cuda.reason}` }));
    process.exit(2);
  }
  return info;
}

let loaderUsed = null;

// Loads `dir` as one shard (layers [layerStart, layerEnd), default all; tp rank `tpRank` of `tpSize`, on cuda:deviceIndex)
// through the project's loader (dist/model) when it is built, else through
// minimal-safetensors.mjs (whole tensors, tp 1 only). `comm` (tp > 1) is set before loading.
// quantize ('int8' | 'fp8') and kvCacheDtype ('fp8') as the engine's flags (docs/QUANTIZATION.md; dist/model only).
// weightBytes: the bytes the backend holds (quantized matrices at one byte, their f32 scales).
export async function openCudaEngine(dir, { dtype = 'bf16', kvBlocks = 0, gpuMemoryFraction, device: dev = device,
  tpRank = 0, tpSize = 1, deviceIndex = 0, comm, layerStart = 0, layerEnd, quantize = 'none', kvCacheDtype = 'auto' } = {}) {
  let loader;
  try { loader = await import(join(root, 'dist', 'model', 'index.js')); loaderUsed = 'dist/model'; }
  catch (e) {
    if (tpSize > 1) throw new Error(`tp ${tpSize} needs dist/model (npx tsc): ${e.message}`);
    loader = await import('./minimal-safetensors.mjs'); loaderUsed = 'test/gpu/minimal-safetensors.mjs';
  }
  const cfg = loader.loadModelConfig(dir);
  const ckpt = await loader.openCheckpoint(dir);
  const plan = loader.planShard(cfg, { tpRank, tpSize, layerStart, layerEnd: layerEnd ?? cfg.numLayers }, { quantize, kvCacheFp8: kvCacheDtype === 'fp8' });
  const shard = { ...plan.shardConfig, device: dev, compute: dev === 'cpu' ? 'f32' : dtype, kvBlocks, deviceIndex,
    ...(kvCacheDtype === 'fp8' ? { kvCacheDtype } : {}) };
  if (gpuMemoryFraction) shard.gpuMemoryFraction = gpuMemoryFraction;
  const engine = new addon.Engine(shard);
  if (comm) engine.setTpComm(comm);
  let weightBytes = 0;
  const t0 = performance.now();
  await loader.loadShard(ckpt, plan, async (name, dt, shape, data) => {
    // Matrices and the scales of quantized ones (norms are f32 in the backend: counted as loaded, negligible).
    weightBytes += dt === 'f32' && !name.endsWith('_scale') ? shape.reduce((a, b) => a * b, 1) * 2 : data.byteLength;
    await engine.loadTensor(name, dt, shape, data);
  }, undefined, (data, dt, rows, cols, format, c0, c1, what) => addon.quantize(data, dt, rows, cols, format, c0, c1, what));
  const fin = await engine.finalize();
  const loadSeconds = (performance.now() - t0) / 1000;
  if (ckpt.close) await ckpt.close();
  return { engine, cfg, shard, kvBlocks: fin.kvBlocks, blockSize: fin.kvBlockSize, weightBytes, loadSeconds };
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
export async function greedy(engine, ids, n, blockTable) {
  const first = await engine.step({ seqs: [{ tokens: Int32Array.from(ids), pos: 0, blockTable }], wantLogits: true });
  const out = [first.sampled[0]];
  for (let i = 1; i < n; i++) {
    const r = await engine.step({ seqs: [{ tokens: Int32Array.of(out[i - 1]), pos: ids.length + i - 1, blockTable }] });
    out.push(r.sampled[0]);
  }
  return { tokens: out, lastLogits: first.logits };
}

// NODESPEED_COMMIT first: the device machine's copy of the tree carries a stale .git, so
// `git rev-parse` there names an older commit than the one built (run-all.sh sets it from .gpu/COMMIT).
export function gitCommit() {
  if (process.env.NODESPEED_COMMIT) return process.env.NODESPEED_COMMIT;
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

// Writes a result JSON (with GPU, commit and command) into RESULTS_DIR (default bench/results),
// as NAME-<gpu>.json so runs on different GPUs sit side by side.
export function writeResult(name, body) {
  const dir = process.env.RESULTS_DIR ?? join(root, 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  name = name.replace(/\.json$/, `-${device === 'cpu' ? 'cpu-dry-run' : gpuSlug()}.json`);
  const doc = { gpu: device === 'cpu' ? 'none (cpu dry run)' : gpuName(), device, loader: loaderUsed, commit: gitCommit(), command: process.argv.slice(1).map((a) => a.replace(root + '/', '')).join(' '),
    date: new Date().toISOString(), ...body };
  writeFileSync(join(dir, name), JSON.stringify(doc, null, 2) + '\n');
  return doc;
}
