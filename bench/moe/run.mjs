// Mixture-of-experts decode on one GPU: our CUDA engine at batch 1 against its roofline (the bytes a
// token must read: attention, router, shared expert and head weights, top_k of the experts of each
// layer, its KV; over the device-to-device copy bandwidth measured in this run, as bench/decode's
// roofline, with the datasheet figure's fraction beside it) and at batch 32 against Hugging Face
// transformers' eager forward on the same GPU in the same run (bench/moe/hf_moe.py). The bars:
// batch 1 >= 60% of the roofline, batch 32 >= 3x HF.
// usage: node bench/moe/run.mjs MODEL_DIR   (MODEL_DIR: `nodespeed model init --arch qwen2_moe --preset a2.7b`)
// env: BANDWIDTH=bytes/s (instead of measuring it: needs python3 with torch), SKIP_HF=1, KV_BLOCKS (default: sized by the backend)
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';

import { blockTables, gpuName, openCudaEngine, requireCuda, root, writeResult } from '../../test/gpu/lib.mjs';

requireCuda();
const dir = process.argv[2];
if (!dir) { console.error('usage: node bench/moe/run.mjs MODEL_DIR'); process.exit(1); }
const { planShard } = await import(join(root, 'dist', 'model', 'index.js'));

const name = gpuName();
const datasheetBandwidth = /H200/.test(name) ? 4.8e12 : /H100/.test(name) ? 3.35e12 : /A100/.test(name) ? 2.0e12 : 0;
// The copy bandwidth (bytes read + written per second), measured before our engine takes the GPU's memory.
function measuredCopy() {
  try {
    const out = execFileSync('python3', ['-c', 'import json, sys; sys.path.insert(0, sys.argv[1]); import hf_generate; print(json.dumps(hf_generate.copy_bandwidth()))',
      join(root, 'bench', 'decode')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
    return JSON.parse(out.trim().split('\n').pop());
  } catch (e) {
    console.error(`bench/moe: copy bandwidth not measured (${e.message.split('\n')[0]}); the roofline uses the datasheet figure`);
    return null;
  }
}
const copy = Number(process.env.BANDWIDTH) ? null : measuredCopy();
const bandwidth = Number(process.env.BANDWIDTH) || copy?.bytes_per_s || datasheetBandwidth;
const bandwidthSource = Number(process.env.BANDWIDTH) ? 'BANDWIDTH' : copy ? 'measured device-to-device copy' : 'datasheet';

const { engine, cfg, kvBlocks, blockSize, loadSeconds } = await openCudaEngine(dir, { dtype: 'bf16', kvBlocks: Number(process.env.KV_BLOCKS) || 0 });
const moe = cfg.moe;
// Bytes one decode token reads at batch 1: every tensor of the plan, the routed experts at top_k / E
// (a token runs top_k of them), one embedding row; plus its KV at the mean context of the run.
const plan = planShard(cfg, { tpRank: 0, tpSize: 1, layerStart: 0, layerEnd: cfg.numLayers });
let weightBytes = 0;
for (const t of plan.tensors) {
  const n = t.shape.reduce((a, b) => a * b, 1) * 2;
  if (t.name === 'model.embed_tokens.weight') weightBytes += (cfg.tieWordEmbeddings ? n : cfg.hiddenSize * 2);
  else if (/\.mlp\.experts\.\d+\./.test(t.name)) weightBytes += n * (moe.topK / moe.numExperts);
  else weightBytes += n;
}
const kvPerToken = 2 * cfg.numLayers * cfg.numKvHeads * cfg.headDim * 2;

async function decodeRun(batch, prompt, steps, warm) {
  const tables = blockTables(batch, prompt + steps + warm + 1, blockSize, kvBlocks);
  const ids = (s) => Int32Array.from({ length: prompt }, (_, i) => 3 + ((i * 31 + s * 7) % (cfg.vocabSize - 3)));
  let r = await engine.step({ seqs: tables.map((bt, s) => ({ tokens: ids(s), pos: 0, blockTable: bt })) });
  let toks = Array.from(r.sampled);
  let t0 = 0;
  for (let i = 0; i < warm + steps; i++) {
    if (i === warm) t0 = performance.now();
    r = await engine.step({ seqs: tables.map((bt, s) => ({ tokens: Int32Array.of(toks[s]), pos: prompt + i, blockTable: bt })) });
    toks = Array.from(r.sampled);
  }
  const ms = (performance.now() - t0) / steps;
  return { batch, prompt, steps, msPerStep: ms, tokPerS: (batch * 1000) / ms };
}

const b1 = await decodeRun(1, 32, 128, 8);
const meanContext = 32 + 8 + 64;
const bytesPerToken = weightBytes + kvPerToken * meanContext;
const rooflineMs = bandwidth ? (bytesPerToken / bandwidth) * 1000 : null;
const b32 = await decodeRun(32, 32, 64, 4);
engine.dispose();

let hf = null;
if (!process.env.SKIP_HF) {
  const out = execFileSync('python3', [join(root, 'bench', 'moe', 'hf_moe.py'), dir, '32', '32', '64'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  hf = JSON.parse(out.trim().split('\n').pop());
}
const result = {
  model: dir, config: { numExperts: moe.numExperts, topK: moe.topK, layers: cfg.numLayers, hidden: cfg.hiddenSize },
  loadSeconds, bandwidth, bandwidthSource, copyBandwidth: copy, datasheetBandwidth, bytesPerTokenBatch1: bytesPerToken,
  batch1: { ...b1, rooflineMs, rooflineFraction: rooflineMs ? rooflineMs / b1.msPerStep : null,
    rooflineFractionDatasheet: datasheetBandwidth ? (bytesPerToken / datasheetBandwidth) * 1000 / b1.msPerStep : null, bar: 0.6 },
  batch32: { ...b32, hfEager: hf, ratioVsHf: hf ? b32.tokPerS / hf.decode_tok_s : null, bar: 3 },
};
result.pass = (result.batch1.rooflineFraction ?? 0) >= 0.6 && (result.batch32.ratioVsHf ?? 0) >= 3;
writeResult('moe-decode.json', result);
console.log(JSON.stringify(result, null, 1));
