// The serving benchmark's workload inside one engine, step by step, for a profile: S sequences of
// P prompt tokens prefilled in chunks of C tokens, then decode steps at batch S. Prints the time
// of each prefill chunk step and the median decode step at the start and the end of generation.
// With NODESPEED_CUDA_PROFILE_STEP=N the backend brackets step N for `ncu --profile-from-start off`
// (steps are counted from 0: the prefill chunks first, then the decodes).
// A/B of the flash prefill attention: the default (tensor-core prefill kernel) vs NODESPEED_CUDA_FLASH=0
// (SIMT kernel for every token); the line says which one ran (`flash`, from the engine's description).
// usage: node bench/decode/batch-step.mjs MODEL_DIR [S=64] [P=512] [C=2048] [NEW=256] [QUANTIZE=none|int8|fp8] [KV=auto|fp8]
import { blockTables, openCudaEngine, requireCuda } from '../../test/gpu/lib.mjs';

requireCuda();
const [dir, S = 64, P = 512, C = 2048, NEW = 256] = process.argv.slice(2, 7).map((v, i) => (i ? Number(v) : v));
const [quantize = 'none', kvCacheDtype = 'auto'] = process.argv.slice(7);
const { engine, cfg, blockSize, kvBlocks } = await openCudaEngine(dir, { dtype: 'bf16', kvBlocks: Math.ceil((P + NEW) / 16 + 1) * S,
  quantize, kvCacheDtype });
const engineDesc = engine.describe();
const bts = blockTables(S, P + NEW, blockSize, kvBlocks);
const prompts = bts.map((_, s) => Int32Array.from({ length: P }, (_, i) => 3 + ((s * 7919 + i * 104729) % (cfg.vocabSize - 3))));
const prefillMs = [];
const next = new Int32Array(S);
let s0 = 0;
while (s0 < S) {  // whole prompts per chunk step (C / P of them)
  const n = Math.max(1, Math.floor(C / P));
  const seqs = [];
  for (let s = s0; s < Math.min(S, s0 + n); s++) seqs.push({ tokens: prompts[s], pos: 0, blockTable: bts[s] });
  const t0 = performance.now();
  const r = await engine.step({ seqs });
  prefillMs.push(performance.now() - t0);
  r.sampled.forEach((id, i) => { next[s0 + i] = id; });
  s0 += n;
}
const decodeMs = [];
for (let k = 0; k < NEW - 1; k++) {
  const seqs = bts.map((bt, s) => ({ tokens: Int32Array.of(next[s]), pos: P + k, blockTable: bt }));
  const t0 = performance.now();
  const r = await engine.step({ seqs });
  decodeMs.push(performance.now() - t0);
  next.set(r.sampled);
}
engine.dispose();
const med = (a) => [...a].sort((x, y) => x - y)[a.length >> 1];
const sum = (a) => a.reduce((x, y) => x + y, 0);
console.log(JSON.stringify({ S, P, C, NEW, flash: engineDesc.includes('flash prefill'), prefillStepMs: prefillMs.map((x) => +x.toFixed(2)), prefillTotalMs: +sum(prefillMs).toFixed(1),
  decodeFirst16MedianMs: +med(decodeMs.slice(0, 16)).toFixed(3), decodeLast16MedianMs: +med(decodeMs.slice(-16)).toFixed(3),
  prefillStepMsMedian: +med(prefillMs.length > 1 ? prefillMs.slice(1) : prefillMs).toFixed(2), decodeTotalMs: +sum(decodeMs).toFixed(1), generatedTokS: +((S * NEW) / ((sum(prefillMs) + sum(decodeMs)) / 1000)).toFixed(0) }));
