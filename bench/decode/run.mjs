// Decode benchmark, run on a GPU host: ours vs HF transformers eager
// `generate`, Llama-2-7B-shaped bf16 checkpoint, 128-token prompts, 128 new tokens, batch 1 and
// 32, and the memory roofline = measured device-to-device copy bandwidth / weight bytes read per
// token. Writes bench/results/decode-<gpu>.json (or $RESULTS_DIR).
// --precisions bf16,int8,fp8[,fp8+kv-fp8]: our engine at each precision in turn (docs/QUANTIZATION.md),
// each with its own roofline (the bytes it reads per token: quantized matrices at one byte and their
// f32 scales) and its speed-up over our bf16 in the same run (bars: int8 >= 1.6x, fp8 >= 1.7x at batch 1).
// --no-hf: ours only; the copy bandwidth is still measured (torch) for the rooflines, unless
// --no-roofline (A/B runs of several addons, where only the same-run ratios count).
// --digest: the untimed warm-up run of each batch asks for every step's logits and prints a hash of
// their bytes (logitsDigest): two addons whose kernels claim the same arithmetic must print the same.
// usage: node bench/decode/run.mjs MODEL_DIR [--prompt 128] [--new 128] [--batches 1,32] [--no-hf [--no-roofline]] [--precisions bf16,int8,fp8] [--digest]
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';

import { blockTables, openCudaEngine, requireCuda, root, writeResult } from '../../test/gpu/lib.mjs';

const args = process.argv.slice(2);
const dir = args[0];
const opt = (name, def) => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : def; };
if (!dir) { console.error('usage: node bench/decode/run.mjs MODEL_DIR [--prompt N] [--new N] [--batches 1,32] [--no-hf]'); process.exit(2); }
const PROMPT = Number(opt('--prompt', 128)), NEW = Number(opt('--new', 128));
const BATCHES = String(opt('--batches', '1,32')).split(',').map(Number);
const PRECISIONS = String(opt('--precisions', 'bf16')).split(',');
const DIGEST = args.includes('--digest');
const PRECISION_OPTS = { bf16: {}, int8: { quantize: 'int8' }, fp8: { quantize: 'fp8' }, 'fp8+kv-fp8': { quantize: 'fp8', kvCacheDtype: 'fp8' } };
for (const p of PRECISIONS) if (!PRECISION_OPTS[p]) { console.error(`--precisions: ${p} is not one of ${Object.keys(PRECISION_OPTS).join(', ')}`); process.exit(2); }
requireCuda();
let engine, cfg, blockSize, kvBlocks, V, H;

let seed = 7;
const rand = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed; };
const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };

// FNV-1a over the 32-bit words of every step's logits (--digest).
const fnv = (h, f32) => { const w = new Uint32Array(f32.buffer, f32.byteOffset, f32.length); for (let i = 0; i < w.length; i++) h = Math.imul(h ^ w[i], 16777619) >>> 0; return h; };

async function run(batch, newTokens, digest = false) {
  const tables = blockTables(batch, PROMPT + newTokens, blockSize, kvBlocks);
  const prompts = Array.from({ length: batch }, () => Int32Array.from({ length: PROMPT }, () => 3 + (rand() % (V - 3))));
  const want = digest ? { wantLogits: true } : {};
  let h = 2166136261;
  let t0 = performance.now();
  const first = await engine.step({ seqs: prompts.map((tokens, i) => ({ tokens, pos: 0, blockTable: tables[i] })), ...want });
  const prefillMs = performance.now() - t0;
  if (digest) h = fnv(h, first.logits);
  let last = first.sampled;
  const stepMs = [];
  t0 = performance.now();
  for (let i = 1; i < newTokens; i++) {
    const s0 = performance.now();
    const r = await engine.step({ seqs: last.length ? Array.from(last, (tok, j) => ({ tokens: Int32Array.of(tok), pos: PROMPT + i - 1, blockTable: tables[j] })) : [], ...want });
    stepMs.push(performance.now() - s0);
    if (digest) h = fnv(h, r.logits);
    last = r.sampled;
  }
  if (digest) return { logitsDigest: h.toString(16).padStart(8, '0') };
  const decodeMs = performance.now() - t0;
  return { batch, prefillMs, decodeMs, stepMsMedian: median(stepMs), decodeTokS: (batch * (newTokens - 1)) / (decodeMs / 1000),
    e2eTokS: (batch * newTokens) / ((prefillMs + decodeMs) / 1000) };
}

const byPrecision = {};
for (const p of PRECISIONS) {
  seed = 7;  // the same prompts for every precision
  const e = await openCudaEngine(dir, { dtype: 'bf16', ...PRECISION_OPTS[p] });
  ({ engine, cfg, blockSize, kvBlocks } = e);
  V = cfg.vocabSize; H = cfg.hiddenSize;
  // Bytes read per decode token: every weight once, except the embedding (never quantized), of which
  // one row is read (when it is the head, the LM head reads the whole matrix anyway).
  const bytesPerToken = e.weightBytes - (e.shard.tiedEmbeddings ? 0 : V * H * 2 - H * 2);
  const ours = {};
  for (const b of BATCHES) {
    const warm = await run(b, 8, DIGEST);  // warm-up: cuBLAS heuristics, first-touch of scratch buffers
    ours[b] = { ...await run(b, NEW), ...(DIGEST ? warm : {}) };
    console.error(JSON.stringify({ precision: p, ours: ours[b] }));
  }
  byPrecision[p] = { ours, engine: engine.describe(), loadSeconds: e.loadSeconds, weightBytesPerToken: bytesPerToken };
  engine.dispose();
}
const first = byPrecision[PRECISIONS[0]];
const ours = first.ours, description = first.engine, loadSeconds = first.loadSeconds, bytesPerToken = first.weightBytesPerToken;

let hf = null, copy = null, hfError = null;
if (!args.includes('--no-hf')) {
  const py = spawnSync('python3', [join(root, 'bench', 'decode', 'hf_generate.py'), dir, String(PROMPT), String(NEW), BATCHES.join(',')],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 24 });
  if (py.status === 0) { const r = JSON.parse(py.stdout.trim().split('\n').pop()); hf = r.hf; copy = r.copy; }
  else hfError = `hf_generate.py exited ${py.status}`;
} else if (!args.includes('--no-roofline')) {  // still the measured copy bandwidth (torch), so each precision has its roofline
  const py = spawnSync('python3', [join(root, 'bench', 'decode', 'hf_generate.py'), '--copy-only'],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 20 });
  if (py.status === 0) copy = JSON.parse(py.stdout.trim().split('\n').pop()).copy;
}

const rooflineTokS = copy ? copy.bytes_per_s / bytesPerToken : null;
const summary = {};
for (const b of BATCHES) {
  summary[b] = {
    oursDecodeTokS: ours[b].decodeTokS,
    hfDecodeTokS: hf?.[b]?.decode_tok_s ?? null,
    speedupVsHf: hf?.[b] ? ours[b].decodeTokS / hf[b].decode_tok_s : null,
    ...(b === 1 && rooflineTokS ? { rooflineTokS, fractionOfRoofline: ours[b].decodeTokS / rooflineTokS } : {}),
  };
}
const bars = {
  batch1AtLeast70PctRoofline: summary[1]?.fractionOfRoofline != null ? summary[1].fractionOfRoofline >= 0.7 : null,
  batch32AtLeast3xHf: summary[32]?.speedupVsHf != null ? summary[32].speedupVsHf >= 3 : null,
};
// Each precision beside our bf16 (when both ran) and its own roofline.
const precisions = {};
for (const [p, r] of Object.entries(byPrecision)) {
  const roof = copy ? copy.bytes_per_s / r.weightBytesPerToken : null;
  precisions[p] = { engine: r.engine, loadSeconds: r.loadSeconds, weightBytesPerToken: r.weightBytesPerToken, ours: r.ours, summary: {} };
  for (const b of BATCHES) {
    const tok = r.ours[b].decodeTokS;
    precisions[p].summary[b] = {
      decodeTokS: tok, speedupVsOurBf16: byPrecision.bf16 ? tok / byPrecision.bf16.ours[b].decodeTokS : null,
      speedupVsHf: hf?.[b] ? tok / hf[b].decode_tok_s : null,
      ...(b === 1 && roof ? { rooflineTokS: roof, fractionOfRoofline: tok / roof } : {}),
    };
  }
}
if (byPrecision.bf16 && BATCHES.includes(1)) {
  if (precisions.int8) bars.int8Batch1AtLeast1_6xBf16 = precisions.int8.summary[1].speedupVsOurBf16 >= 1.6;
  if (precisions.fp8) bars.fp8Batch1AtLeast1_7xBf16 = precisions.fp8.summary[1].speedupVsOurBf16 >= 1.7;
}
const doc = writeResult(PRECISIONS.length > 1 || PRECISIONS[0] !== 'bf16' ? 'decode-quant.json' : 'decode.json', {
  model: dir, modelShape: { hidden: H, layers: cfg.numLayers, vocab: V }, promptTokens: PROMPT, newTokens: NEW,
  engine: description, loadSeconds, weightBytesPerToken: bytesPerToken, copyBandwidth: copy, ours, hf, hfError, summary, bars,
  ...(PRECISIONS.length > 1 || PRECISIONS[0] !== 'bf16' ? { precisions } : {}),
});
console.log(JSON.stringify({ summary: doc.summary, bars: doc.bars, precisions: Object.fromEntries(Object.entries(precisions).map(([p, v]) => [p, v.summary])) }));
