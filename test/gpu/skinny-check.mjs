// The skinny decode GEMM (NODESPEED_CUDA_SKINNY=1, native/src/cuda/skinny_gemm.cu) against cuBLAS
// inside the engine: the same 7B-shape checkpoint opened twice (the switch is read when an engine is
// made), 64 sequences prefilled, then 8 decode steps at batch 64 with the logits of every sequence;
// every row's cosine with the cuBLAS engine's >= 0.9999 and the greedy tokens of the first step equal
// where cuBLAS's top-2 logits are not within 1e-2. Prints one JSON line; exit 0 ok, 1 not.
// usage: node test/gpu/skinny-check.mjs MODEL_DIR
import { argmax, blockTables, cosine, openCudaEngine, requireCuda, writeResult } from './lib.mjs';

requireCuda();
const dir = process.argv[2];
if (!dir) { console.error('usage: node test/gpu/skinny-check.mjs MODEL_DIR'); process.exit(2); }
const S = 64, P = 96, STEPS = 8;

async function run(skinny) {
  if (skinny) process.env.NODESPEED_CUDA_SKINNY = '1';
  else delete process.env.NODESPEED_CUDA_SKINNY;
  const { engine, cfg, blockSize, kvBlocks } = await openCudaEngine(dir, { dtype: 'bf16', kvBlocks: Math.ceil((P + STEPS + 1) / 16 + 1) * S });
  const describe = engine.describe();
  const V = cfg.vocabSize;
  const bts = blockTables(S, P + STEPS + 1, blockSize, kvBlocks);
  const seqs = bts.map((bt, s) => ({ tokens: Int32Array.from({ length: P }, (_, i) => 3 + ((s * 7919 + i * 104729) % (V - 3))), pos: 0, blockTable: bt }));
  let next = Int32Array.from((await engine.step({ seqs })).sampled);
  const logits = [];
  for (let k = 0; k < STEPS; ++k) {
    // Both engines decode the same inputs: the cuBLAS run's tokens (passed in for the skinny run).
    const inputs = run.tokens?.[k] ?? next;
    const r = await engine.step({ seqs: bts.map((bt, s) => ({ tokens: Int32Array.of(inputs[s]), pos: P + k, blockTable: bt })), wantLogits: true });
    logits.push(r.logits);
    (run.record ??= []).push(Int32Array.from(inputs));
    next = Int32Array.from(r.sampled);
  }
  engine.dispose();
  return { describe, logits, V };
}

const base = await run(false);
run.tokens = run.record;  // the skinny engine is fed the cuBLAS engine's inputs
run.record = undefined;
const fast = await run(true);
let minCos = 1, argmaxSame = 0, decisive = 0;
for (let k = 0; k < STEPS; ++k)
  for (let s = 0; s < S; ++s) {
    const a = base.logits[k].subarray(s * base.V, (s + 1) * base.V), b = fast.logits[k].subarray(s * base.V, (s + 1) * base.V);
    minCos = Math.min(minCos, cosine(a, b));
    const top = argmax(a);
    const second = Math.max(...Array.from(a).filter((_, i) => i !== top));
    if (a[top] - second > 1e-2) { decisive++; argmaxSame += argmax(b) === top ? 1 : 0; }
  }
const ok = fast.describe.includes('skinny gemm') && minCos >= 0.9999 && argmaxSame === decisive;
const result = { ok, engines: [base.describe, fast.describe], rows: STEPS * S, minCosine: minCos, decisiveRows: decisive, argmaxSame };
writeResult('gpu-skinny-check.json', result);
console.log(JSON.stringify(result));
process.exit(ok ? 0 : 1);
