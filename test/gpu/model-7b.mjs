// 7B-shape check against HF transformers on the same GPU and folder (issue 4, part 3; issue 5 for
// the parallel layouts): logits of every position of a 128-token prompt, ours (bf16) vs HF bf16,
// cosine >= 0.995 at every position and the same top-1 token at >= 95% of positions. Checked twice:
// through the prefill path (one 128-token step, all_logits) and through the decode path (prefill
// 120 tokens, then the remaining 8 prompt tokens one step at a time).
// --layout tp2: the model split over GPUs 0 and 1 by tensor parallelism (NCCL, one engine per GPU in
// this process); pp2: two pipeline stages (layers halved; stage 0's hidden states handed to stage 1).
// Those also report their distance to our tp1 logits (run first, on GPU 0).
// usage: node test/gpu/model-7b.mjs MODEL_DIR [--layout tp1|tp2|pp2]   (needs python3 with torch +
//   transformers; NS_SKIP_HF=1 skips HF and compares with our tp1 only, e.g. a CPU dry run with
//   NODESPEED_TEST_DEVICE=cpu)
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { blockTables, compareLogits, device, openCudaEngine, requireCuda, root, tpComms, writeResult } from './lib.mjs';

const args = process.argv.slice(2);
const dir = args[0];
const layout = args.includes('--layout') ? args[args.indexOf('--layout') + 1] : 'tp1';
if (!dir || !['tp1', 'tp2', 'pp2'].includes(layout)) {
  console.error('usage: node test/gpu/model-7b.mjs MODEL_DIR [--layout tp1|tp2|pp2]');
  process.exit(2);
}
const info = requireCuda();
if (layout !== 'tp1' && device !== 'cpu' && info.cuda.devices.length < 2) {
  console.log(JSON.stringify({ ok: false, skipped: `--layout ${layout} needs 2 GPUs (devices: ${info.cuda.devices.length})` }));
  process.exit(2);
}
const N = 128, SPLIT = 120;

/** The layout's engines behind one step(): tp ranks step together, pipeline stages in turn. */
async function openLayout(kind) {
  if (kind === 'tp1') {
    const e = await openCudaEngine(dir, { dtype: 'bf16' });
    return { ...e, step: (req) => e.engine.step(req), describe: [e.engine.describe()], dispose: () => e.engine.dispose() };
  }
  if (kind === 'tp2') {
    const comms = await tpComms(2);
    const ranks = await Promise.all([0, 1].map((r) => openCudaEngine(dir, { dtype: 'bf16', tpRank: r, tpSize: 2, deviceIndex: r, comm: comms[r] })));
    return { cfg: ranks[0].cfg, blockSize: ranks[0].blockSize, kvBlocks: Math.min(...ranks.map((r) => r.kvBlocks)),
      loadSeconds: Math.max(...ranks.map((r) => r.loadSeconds)),
      step: async (req) => (await Promise.all(ranks.map((r) => r.engine.step(req))))[0],
      describe: ranks.map((r) => r.engine.describe()),
      dispose: () => { ranks.forEach((r) => r.engine.dispose()); comms.forEach((c) => c.abort?.()); } };
  }
  const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  const half = Math.floor(cfg.num_hidden_layers / 2);
  const stages = [await openCudaEngine(dir, { dtype: 'bf16', layerEnd: half, deviceIndex: 0 }),
    await openCudaEngine(dir, { dtype: 'bf16', layerStart: half, deviceIndex: device === 'cpu' ? 0 : 1 })];
  return { cfg: stages[1].cfg, blockSize: stages[0].blockSize, kvBlocks: Math.min(...stages.map((s) => s.kvBlocks)),
    loadSeconds: stages[0].loadSeconds + stages[1].loadSeconds,
    step: async (req) => {
      const first = await stages[0].engine.step(req);
      return stages[1].engine.step({ ...req, hiddenIn: first.hiddenOut });
    },
    describe: stages.map((s) => s.engine.describe()),
    dispose: () => stages.forEach((s) => s.engine.dispose()) };
}

/** All-position logits of the prompt through the prefill path and through the decode path. */
async function logitsOf(kind, ids) {
  const run = await openLayout(kind);
  const V = run.cfg.vocabSize;
  const [bt0, bt1] = blockTables(2, N, run.blockSize, run.kvBlocks);
  const prefill = await run.step({ seqs: [{ tokens: Int32Array.from(ids), pos: 0, blockTable: bt0, allLogits: true, sample: false }], wantLogits: true });
  const decode = new Float32Array(N * V);
  const head = await run.step({ seqs: [{ tokens: Int32Array.from(ids.slice(0, SPLIT)), pos: 0, blockTable: bt1, allLogits: true, sample: false }], wantLogits: true });
  decode.set(head.logits, 0);
  for (let p = SPLIT; p < N; p++) {
    const r = await run.step({ seqs: [{ tokens: Int32Array.of(ids[p]), pos: p, blockTable: bt1, sample: false }], wantLogits: true });
    decode.set(r.logits, p * V);
  }
  run.dispose();
  return { prefill: prefill.logits, decode, V, kvBlocks: run.kvBlocks, loadSeconds: run.loadSeconds, describe: run.describe };
}

const vocab = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')).vocab_size;
let x = 12345;  // fixed LCG: the same prompt every run
const ids = [1, ...Array.from({ length: N - 1 }, () => { x = (x * 1103515245 + 12345) % 2147483648; return 3 + (x % (vocab - 3)); })];
const tp1 = await logitsOf('tp1', ids);
const ours = layout === 'tp1' ? tp1 : await logitsOf(layout, ids);
const V = ours.V;

const tmp = mkdtempSync(join(tmpdir(), 'ns7b-'));
writeFileSync(join(tmp, 'ids.json'), JSON.stringify(ids));
// NS_DUMP_DIR=dir keeps the ids and our prefill-path logits for bench/decode/hf_noise.py.
if (process.env.NS_DUMP_DIR) {
  writeFileSync(join(process.env.NS_DUMP_DIR, 'ids.json'), JSON.stringify(ids));
  writeFileSync(join(process.env.NS_DUMP_DIR, 'ours.bin'), Buffer.from(ours.prefill.buffer, ours.prefill.byteOffset, ours.prefill.byteLength));
}
function readF32(file) {
  const b = readFileSync(file);
  const a = new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
  if (a.length !== N * V) throw new Error(`${file}: ${a.length} logits, expected ${N * V}`);
  return a;
}
let hfBf16 = null, hfF32 = null, hfInfo = 'skipped (NS_SKIP_HF=1)';
if (!process.env.NS_SKIP_HF) {
  const py = spawnSync('python3', [join(root, 'test', 'gpu', 'hf_logits.py'), dir, join(tmp, 'ids.json'), join(tmp, 'hf.bin'), join(tmp, 'hf32.bin')],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  if (py.status !== 0) { console.log(JSON.stringify({ ok: false, error: 'hf_logits.py failed' })); process.exit(1); }
  hfBf16 = readF32(join(tmp, 'hf.bin'));
  hfF32 = readF32(join(tmp, 'hf32.bin'));
  hfInfo = py.stdout.trim();
}

function compare(a, b, bar = { cos: 0.995, top1: 0.95 }) {
  const r = compareLogits(a, b, V, N);
  return { ...r, pass: r.minCosine >= bar.cos && r.top1Agreement >= bar.top1 };
}
// The bar compares with HF bf16. Against HF float32 (same folder, same GPU) as well: how far each
// bf16 implementation is from the exact function, i.e. whose rounding the disagreements come from.
const res = { model: dir, layout, engines: ours.describe, positions: N, vocab: V, kvBlocks: ours.kvBlocks, loadSeconds: ours.loadSeconds,
  ...(hfBf16 ? { prefillPath: compare(ours.prefill, hfBf16), decodePath: compare(ours.decode, hfBf16), oursVsHfF32: compare(ours.prefill, hfF32),
    hfBf16VsHfF32: compare(hfBf16, hfF32) } : {}),
  ...(layout !== 'tp1' ? { vsOurTp1: { prefillPath: compare(ours.prefill, tp1.prefill), decodePath: compare(ours.decode, tp1.decode) } } : {}),
  hfInfo };
const ok = hfBf16 ? res.prefillPath.pass && res.decodePath.pass : res.vsOurTp1?.prefillPath.pass ?? false;
writeResult(layout === 'tp1' ? 'gpu-7b-logits.json' : `gpu-7b-logits-${layout}.json`, { ok, ...res });
console.log(JSON.stringify({ ok, ...res }));
process.exit(ok ? 0 : 1);
