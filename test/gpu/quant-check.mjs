// Quantized serving on a GPU, end to end through the real loader and engine (docs/QUANTIZATION.md):
// the CUDA side of the bars that test/engine/quant.test.ts checks on the CPU, and those only a GPU
// can run (fp8 weights, the fp8 KV cache).
//  py-tiny, every precision (bf16; int8; fp8; fp8 + fp8 KV; bf16 + fp8 KV):
//   - perplexity on the held-out Python text (test/fixtures/heldout): int8 within 1% of bf16, fp8
//     (and fp8 + fp8 KV) within 2%;
//   - greedy tokens of int8 equal bf16's for >= 16 tokens on every reference prompt (reported for all);
//   - `nodespeed model quantize --to int8|fp8` folders load to logits bit-identical to quantizing at load;
//   - an FP8 weight-only compressed-tensors folder with scale 1 gives the greedy tokens of a bf16
//     folder holding the same (E4M3-representable) weights;
//   - every precision against PyTorch (quant_reference.py: the same quantization in f32): cosine.
//  7B shape (MODEL_DIR): logits of every position of a 128-token prompt (prefill path, and the
//   decode path for the fp8 KV cache) of int8 / fp8 / fp8 + fp8 KV against our bf16. The checkpoint has
//   random weights, which accumulate quantization noise over 32 layers far more than trained ones: on
//   it PyTorch's own int8 / fp8 (quant_reference.py, f32 arithmetic) reach only cosine ~0.978 / ~0.75
//   against HF bf16 (H100, 55fb565), so "cosine >= 0.99 at every position" is beyond any correct
//   implementation there and is reported, not asserted. Asserted instead: our quantized logits lose no
//   more against our bf16 than the reference's lose against HF bf16 (1 - min cosine within 1.1x), with
//   int8 also within cosine 0.99 of the PyTorch int8 logits at every position.
// usage: node test/gpu/quant-check.mjs MODEL_DIR [--skip-7b]   (python3 with torch + transformers for
//   the references; NS_SKIP_HF=1 skips them). Writes gpu-quant-check-<gpu>.json into RESULTS_DIR.
//   NODESPEED_TEST_DEVICE=cpu: a dry run of the script on the CPU backend (bf16 and int8 only).
import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { blockTables, compareLogits, device, openCudaEngine, requireCuda, root, writeResult } from './lib.mjs';

const args = process.argv.slice(2);
const model7b = args[0];
const skip7b = args.includes('--skip-7b');
if (!model7b && !skip7b) { console.error('usage: node test/gpu/quant-check.mjs MODEL_DIR [--skip-7b]'); process.exit(2); }
const info = requireCuda();
const PY = join(root, 'models', 'py-tiny');
const tmp = mkdtempSync(join(tmpdir(), 'ns-quant-gpu-'));
const cli = join(root, 'bin', 'nodespeed');
const { loadTokenizer, openCheckpoint } = await import(join(root, 'dist', 'model', 'index.js'));
const { encodeHeader } = await import(join(root, 'dist', 'model', 'safetensors-writer.js'));
const res = { gpu: info.cuda.devices[0], pyTiny: {}, bars: {} };
const fails = [];
const bar = (name, ok, detail) => { res.bars[name] = { ok, ...detail }; if (!ok) fails.push(name); console.error(`${ok ? 'ok  ' : 'FAIL'} ${name} ${JSON.stringify(detail)}`); };

const dry = device === 'cpu';  // fp8 runs on CUDA only
const PRECISIONS = [
  { name: 'bf16' },
  { name: 'int8', quantize: 'int8' },
  { name: 'fp8', quantize: 'fp8' },
  { name: 'fp8+kv-fp8', quantize: 'fp8', kvCacheDtype: 'fp8' },
  { name: 'bf16+kv-fp8', kvCacheDtype: 'fp8' },
].filter((p) => !dry || (p.quantize !== 'fp8' && !p.kvCacheDtype));
const has = (name) => PRECISIONS.some((p) => p.name === name);

async function allLogits(engine, ids, blockTable) {
  const r = await engine.step({ seqs: [{ tokens: Int32Array.from(ids), pos: 0, blockTable, allLogits: true, sample: false }], wantLogits: true });
  return r.logits;
}

async function perplexity(e, ids, W = 256) {
  const V = e.cfg.vocabSize;
  const [bt] = blockTables(1, W + 1, e.blockSize, e.kvBlocks);
  let nll = 0, n = 0;
  for (let s = 1; s < ids.length; s += W) {
    const win = ids.slice(s, s + W);
    const logits = await allLogits(e.engine, [ids[0], ...win], bt);
    for (let i = 0; i < win.length; i++) {
      const row = logits.subarray(i * V, (i + 1) * V);
      let max = -Infinity, sum = 0;
      for (const v of row) max = Math.max(max, v);
      for (const v of row) sum += Math.exp(v - max);
      nll += Math.log(sum) + max - row[win[i]];
      n++;
    }
  }
  return Math.exp(nll / n);
}

async function greedy(engine, ids, n, blockTable) {
  let r = await engine.step({ seqs: [{ tokens: Int32Array.from(ids), pos: 0, blockTable }] });
  const out = [r.sampled[0]];
  while (out.length < n) {
    r = await engine.step({ seqs: [{ tokens: Int32Array.of(out.at(-1)), pos: ids.length + out.length - 1, blockTable }] });
    out.push(r.sampled[0]);
  }
  return out;
}

const samePrefix = (a, b) => { let i = 0; while (i < a.length && a[i] === b[i]) i++; return i; };

const compare = compareLogits;

function torchReference(dir, ids, modes) {
  if (process.env.NS_SKIP_HF) return null;
  const out = join(tmp, `ref-${dir.replace(/[^a-z0-9]/gi, '_').slice(-40)}`);
  writeFileSync(join(tmp, 'ids.json'), JSON.stringify(ids));
  const py = spawnSync('python3', [join(root, 'test', 'gpu', 'quant_reference.py'), dir, join(tmp, 'ids.json'), out, modes.join(',')],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  if (py.status !== 0) { fails.push(`quant_reference.py ${dir}`); return null; }
  const V = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')).vocab_size;
  const logits = {};
  for (const m of modes) {
    const b = readFileSync(join(out, `${m}.bin`));
    logits[m] = new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
    if (logits[m].length !== ids.length * V) throw new Error(`${m}.bin: ${logits[m].length} logits`);
  }
  return logits;
}

// E4M3 of an f32 (round to nearest even, saturating; native/src/common/quant.h's f32_to_e4m3).
const f32 = new Float32Array(1), u32 = new Uint32Array(f32.buffer);
function e4m3(x) {
  f32[0] = x;
  const u = u32[0], sign = (u >>> 24) & 0x80, a = u & 0x7fffffff;
  if (a >= 0x43e00000) return sign | 0x7e;
  const e = (a >>> 23) - 127;
  if (e >= -6) { const r = (a + 0x7ffff + ((a >>> 20) & 1)) >>> 0; return sign | Math.min(0x7e, (r >>> 20) - (120 << 3)); }
  if (e === -127) return sign;
  const m = (a & 0x7fffff) | 0x800000, s = 14 - e;
  if (s > 24) return sign;
  let q = m >>> s;
  const rem = m & ((1 << s) - 1), half = 1 << (s - 1);
  if (rem > half || (rem === half && (q & 1))) q++;
  return sign | q;
}
function e4m3Value(b) {
  const e = (b >> 3) & 15, m = b & 7, v = e === 0 ? m / 512 : (1 + m / 8) * 2 ** (e - 7);
  return b & 0x80 ? -v : v;
}

// ---------------------------------------------------------------- py-tiny
const tok = await loadTokenizer(PY);
const heldout = tok.encode(readFileSync(join(root, 'test', 'fixtures', 'heldout', 'nodespeed-scripts.py.txt'), 'utf8'));
const { cases } = JSON.parse(readFileSync(join(PY, 'reference.json'), 'utf8'));
const probe = cases[1].ids;
const pyLogits = {}, pyGreedy = {};
for (const p of PRECISIONS) {
  const e = await openCudaEngine(PY, { dtype: 'bf16', quantize: p.quantize, kvCacheDtype: p.kvCacheDtype });
  const [bt] = blockTables(1, 600, e.blockSize, e.kvBlocks);
  const ppl = await perplexity(e, heldout);
  pyGreedy[p.name] = [];
  for (const c of cases) pyGreedy[p.name].push(await greedy(e.engine, c.ids, 48, bt));
  pyLogits[p.name] = await allLogits(e.engine, probe, bt);
  res.pyTiny[p.name] = { engine: e.engine.describe(), kvBlocks: e.kvBlocks, perplexity: ppl,
    greedyMatchingReference: pyGreedy[p.name].map((g, i) => samePrefix(g, cases[i].greedy_48)) };
  e.engine.dispose();
  console.error(`py-tiny ${p.name}: perplexity ${ppl.toFixed(4)}, greedy vs reference ${res.pyTiny[p.name].greedyMatchingReference.join(' ')}`);
}
const V = 2048;
for (const p of PRECISIONS.slice(1)) {
  res.pyTiny[p.name].vsBf16 = compare(pyLogits[p.name], pyLogits.bf16, V, probe.length);
  res.pyTiny[p.name].greedyMatchingBf16 = pyGreedy[p.name].map((g, i) => samePrefix(g, pyGreedy.bf16[i]));
  res.pyTiny[p.name].perplexityVsBf16 = res.pyTiny[p.name].perplexity / res.pyTiny.bf16.perplexity - 1;
}
bar('py-tiny int8 perplexity within 1% of bf16', Math.abs(res.pyTiny.int8.perplexityVsBf16) <= 0.01, { ratio: res.pyTiny.int8.perplexityVsBf16 });
if (has('fp8')) {
  bar('py-tiny fp8 perplexity within 2% of bf16', Math.abs(res.pyTiny.fp8.perplexityVsBf16) <= 0.02, { ratio: res.pyTiny.fp8.perplexityVsBf16 });
  bar('py-tiny fp8 + fp8 KV perplexity within 2% of bf16', Math.abs(res.pyTiny['fp8+kv-fp8'].perplexityVsBf16) <= 0.02,
    { ratio: res.pyTiny['fp8+kv-fp8'].perplexityVsBf16 });
}
bar('py-tiny int8 greedy = bf16 greedy for >= 16 tokens, every prompt', res.pyTiny.int8.greedyMatchingBf16.every((n) => n >= 16),
  { tokens: res.pyTiny.int8.greedyMatchingBf16 });

// Folders written by `nodespeed model quantize`: the same logits, bit for bit, as quantizing at load.
for (const to of ['int8', 'fp8'].filter(has)) {
  const dir = join(tmp, `py-tiny-${to}`);
  execFileSync(process.execPath, [cli, 'model', 'quantize', '--to', to, PY, dir]);
  const e = await openCudaEngine(dir, { dtype: 'bf16' });
  const [bt] = blockTables(1, 600, e.blockSize, e.kvBlocks);
  const got = await allLogits(e.engine, probe, bt);
  e.engine.dispose();
  const want = pyLogits[to];
  const same = Buffer.from(got.buffer, got.byteOffset, got.byteLength).equals(Buffer.from(want.buffer, want.byteOffset, want.byteLength));
  bar(`py-tiny model quantize --to ${to} folder loads to the logits of --quantize ${to}, bit for bit`, same,
    { maxAbsDiff: got.reduce((m, v, i) => Math.max(m, Math.abs(v - want[i])), 0) });
}

// An FP8 weight-only compressed-tensors folder (scale 1) and a bf16 folder of the same weights.
if (!dry) {
  const src = await openCheckpoint(PY);
  const specs = { bf16: [], fp8: [] }, data = { bf16: [], fp8: [] };
  for (const t of [...src.tensors.values()].sort((a, b) => a.name.localeCompare(b.name))) {
    const raw = await src.readRows(t, 0, t.shape[0] ?? 1);
    if (!/_proj\.weight$/.test(t.name)) {
      for (const k of ['bf16', 'fp8']) { specs[k].push({ name: t.name, dtype: t.dtype, shape: t.shape }); data[k].push(raw); }
      continue;
    }
    const w = new Float32Array(Uint32Array.from(new Uint16Array(new Uint8Array(raw).buffer), (h) => h << 16).buffer);
    const codes = Uint8Array.from(w, (x) => e4m3(x));
    const vals = new Float32Array(Array.from(codes, e4m3Value));  // exact in bf16: 3 mantissa bits
    specs.bf16.push({ name: t.name, dtype: 'bf16', shape: t.shape });
    data.bf16.push(new Uint8Array(Uint16Array.from(new Uint32Array(vals.buffer), (x) => x >>> 16).buffer));
    specs.fp8.push({ name: t.name, dtype: 'f8e4m3', shape: t.shape }, { name: `${t.name}_scale`, dtype: 'f32', shape: [1] });
    data.fp8.push(codes, new Uint8Array(new Float32Array([1]).buffer));
  }
  await src.close();
  const dirs = {};
  for (const k of ['bf16', 'fp8']) {
    dirs[k] = join(tmp, `exact-${k}`);
    cpSync(PY, dirs[k], { recursive: true });
    writeFileSync(join(dirs[k], 'model.safetensors'), Buffer.concat([encodeHeader(specs[k]), ...data[k]]));
  }
  const cfg = JSON.parse(readFileSync(join(PY, 'config.json'), 'utf8'));
  cfg.quantization_config = { quant_method: 'compressed-tensors', format: 'float-quantized', quantization_status: 'compressed', ignore: ['lm_head'],
    config_groups: { group_0: { targets: ['Linear'], weights: { num_bits: 8, type: 'float', symmetric: true, strategy: 'tensor', dynamic: false },
      input_activations: null } } };
  writeFileSync(join(dirs.fp8, 'config.json'), JSON.stringify(cfg, null, 2));
  const toks = {};
  for (const k of ['bf16', 'fp8']) {
    const e = await openCudaEngine(dirs[k], { dtype: 'bf16' });
    const [bt] = blockTables(1, 600, e.blockSize, e.kvBlocks);
    toks[k] = [];
    for (const c of cases) toks[k].push(await greedy(e.engine, c.ids, 24, bt));
    res.pyTiny[`exact-${k}`] = { engine: e.engine.describe() };
    e.engine.dispose();
  }
  bar('fp8 weight-only compressed-tensors folder (scale 1) gives the tokens of the bf16 folder of its weights',
    toks.fp8.every((t, i) => samePrefix(t, toks.bf16[i]) === 24), { tokens: toks.fp8.map((t, i) => samePrefix(t, toks.bf16[i])) });
}

// Against PyTorch with the same quantization (f32 arithmetic).
const pyRef = torchReference(PY, probe, ['bf16', 'f32', 'int8', 'fp8']);
if (pyRef) {
  res.pyTiny.vsTorch = {
    bf16VsHfBf16: compare(pyLogits.bf16, pyRef.bf16, V, probe.length), bf16VsTorchF32: compare(pyLogits.bf16, pyRef.f32, V, probe.length),
    int8VsTorchInt8: compare(pyLogits.int8, pyRef.int8, V, probe.length), fp8VsTorchFp8: compare(pyLogits.fp8, pyRef.fp8, V, probe.length),
  };
  bar('py-tiny int8 vs the PyTorch int8 reference: cosine >= 0.999', res.pyTiny.vsTorch.int8VsTorchInt8.minCosine >= 0.999, res.pyTiny.vsTorch.int8VsTorchInt8);
  bar('py-tiny fp8 vs the PyTorch fp8 reference: cosine >= 0.995', res.pyTiny.vsTorch.fp8VsTorchFp8.minCosine >= 0.995, res.pyTiny.vsTorch.fp8VsTorchFp8);
}

// ---------------------------------------------------------------- 7B shape
if (!skip7b) {
  const N = 128, SPLIT = 120;
  const vocab = JSON.parse(readFileSync(join(model7b, 'config.json'), 'utf8')).vocab_size;
  let x = 12345;  // model-7b.mjs's prompt
  const ids = [1, ...Array.from({ length: N - 1 }, () => { x = (x * 1103515245 + 12345) % 2147483648; return 3 + (x % (vocab - 3)); })];
  const ours = {};
  res.model7b = { model: model7b, positions: N };
  for (const p of PRECISIONS.slice(0, 4)) {
    const e = await openCudaEngine(model7b, { dtype: 'bf16', quantize: p.quantize, kvCacheDtype: p.kvCacheDtype });
    const [bt0, bt1] = blockTables(2, N, e.blockSize, e.kvBlocks);
    ours[p.name] = await allLogits(e.engine, ids, bt0);
    if (p.kvCacheDtype) {  // the decode path too: single-token steps over the E4M3 cache
      const head = await e.engine.step({ seqs: [{ tokens: Int32Array.from(ids.slice(0, SPLIT)), pos: 0, blockTable: bt1, allLogits: true, sample: false }], wantLogits: true });
      const dec = new Float32Array(N * vocab);
      dec.set(head.logits, 0);
      for (let q = SPLIT; q < N; q++) {
        const r = await e.engine.step({ seqs: [{ tokens: Int32Array.of(ids[q]), pos: q, blockTable: bt1, sample: false }], wantLogits: true });
        dec.set(r.logits, q * vocab);
      }
      ours[`${p.name} decode`] = dec;
    }
    res.model7b[p.name] = { engine: e.engine.describe(), kvBlocks: e.kvBlocks, loadSeconds: e.loadSeconds, weightBytes: e.weightBytes };
    e.engine.dispose();
    console.error(`7B ${p.name}: loaded in ${e.loadSeconds.toFixed(1)} s, ${e.kvBlocks} KV blocks`);
  }
  res.model7b.cosine099 = {};  // the 0.99 bar, reported (see the header: out of reach on random weights)
  for (const name of ['int8', 'fp8', 'fp8+kv-fp8', 'fp8+kv-fp8 decode']) {
    res.model7b[name] = { ...(res.model7b[name] ?? {}), vsOurBf16: compare(ours[name], ours.bf16, vocab, N) };
    res.model7b.cosine099[name] = res.model7b[name].vsOurBf16.minCosine >= 0.99;
    console.error(`7B ${name} logits vs our bf16: min cosine ${res.model7b[name].vsOurBf16.minCosine.toFixed(4)} (0.99 reported, not asserted)`);
  }
  bar('7B fp8 KV cache holds twice the blocks of bf16', res.model7b['fp8+kv-fp8'].kvBlocks >= 1.9 * res.model7b.fp8.kvBlocks,
    { bf16Kv: res.model7b.fp8.kvBlocks, fp8Kv: res.model7b['fp8+kv-fp8'].kvBlocks });
  const ref = torchReference(model7b, ids, ['bf16', 'int8', 'fp8']);
  if (ref) {
    res.model7b.vsTorch = {
      bf16VsHfBf16: compare(ours.bf16, ref.bf16, vocab, N), int8VsTorchInt8: compare(ours.int8, ref.int8, vocab, N),
      fp8VsTorchFp8: compare(ours.fp8, ref.fp8, vocab, N), torchInt8VsHfBf16: compare(ref.int8, ref.bf16, vocab, N),
      torchFp8VsHfBf16: compare(ref.fp8, ref.bf16, vocab, N),
    };
    const vt = res.model7b.vsTorch;
    for (const [name, torchKey] of [['int8', 'torchInt8VsHfBf16'], ['fp8', 'torchFp8VsHfBf16']]) {
      const loss = 1 - res.model7b[name].vsOurBf16.minCosine, refLoss = 1 - vt[torchKey].minCosine;
      bar(`7B ${name} vs our bf16 loses at most 1.1x what PyTorch's ${name} loses vs HF bf16 (1 - min cosine)`, loss <= 1.1 * refLoss,
        { ours: res.model7b[name].vsOurBf16.minCosine, pytorch: vt[torchKey].minCosine, ratio: loss / refLoss });
    }
    bar('7B int8VsTorchInt8: cosine >= 0.99 at every position', vt.int8VsTorchInt8.minCosine >= 0.99, vt.int8VsTorchInt8);
  }
}

const ok = fails.length === 0;
writeResult('gpu-quant-check.json', { ok, failed: fails, ...res });
console.log(JSON.stringify({ ok, failed: fails, bars: res.bars }));
process.exit(ok ? 0 : 1);
