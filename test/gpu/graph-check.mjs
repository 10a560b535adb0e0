// Decode CUDA graphs past 4 sequences (native/src/cuda/cuda_graph.cu) against eager launches inside
// the engine: the same 7B-shape checkpoint opened twice, with NODESPEED_CUDA_GRAPH_MAX=4 (batches past
// 4 launched eagerly, as before session 6) and with the default (graphs up to 256). For 64, 50 (padded
// to the 64 bucket) and 12 (padded to 16) sequences: prefill, then 6 decode steps with every
// sequence's logits, the graph engine fed the eager engine's tokens. Every row's cosine >= 0.99999 at
// an exact bucket and >= 0.9999 padded, the greedy token equal wherever the eager top-2 logits are
// more than 1e-2 apart. Prints one JSON line; exit 0 ok, 1 not.
// usage: node test/gpu/graph-check.mjs MODEL_DIR
import { argmax, blockTables, cosine, openCudaEngine, requireCuda, writeResult } from './lib.mjs';

requireCuda();
const dir = process.argv[2];
if (!dir) { console.error('usage: node test/gpu/graph-check.mjs MODEL_DIR'); process.exit(2); }
const BATCHES = [64, 50, 12], P = 80, STEPS = 6;

async function run(graphMax, inputs) {
  if (graphMax) process.env.NODESPEED_CUDA_GRAPH_MAX = String(graphMax);
  else delete process.env.NODESPEED_CUDA_GRAPH_MAX;
  const maxS = Math.max(...BATCHES);
  const { engine, cfg, blockSize, kvBlocks } = await openCudaEngine(dir, { dtype: 'bf16', kvBlocks: Math.ceil((P + STEPS + 1) / 16 + 1) * maxS });
  const describe = engine.describe();
  const V = cfg.vocabSize;
  const bts = blockTables(maxS, P + STEPS + 1, blockSize, kvBlocks);
  const out = {};
  for (const S of BATCHES) {
    const seqs = bts.slice(0, S).map((bt, s) => ({ tokens: Int32Array.from({ length: P - (s % 7) }, (_, i) => 3 + ((s * 7919 + i * 104729) % (V - 3))), pos: 0, blockTable: bt }));
    let next = Int32Array.from((await engine.step({ seqs })).sampled);
    const logits = [], fed = [];
    for (let k = 0; k < STEPS; ++k) {
      const toks = inputs?.[S]?.[k] ?? next;
      const r = await engine.step({ seqs: seqs.map((q, s) => ({ tokens: Int32Array.of(toks[s]), pos: q.tokens.length + k, blockTable: q.blockTable })), wantLogits: true });
      logits.push(r.logits);
      fed.push(Int32Array.from(toks));
      next = Int32Array.from(r.sampled);
    }
    out[S] = { logits, fed };
  }
  engine.dispose();
  return { describe, V, out };
}

const eager = await run(4);
const graphs = await run(0, Object.fromEntries(BATCHES.map((S) => [S, eager.out[S].fed])));
const cases = BATCHES.map((S) => {
  let minCos = 1, maxAbs = 0, decisive = 0, argmaxSame = 0;
  for (let k = 0; k < STEPS; ++k)
    for (let s = 0; s < S; ++s) {
      const a = eager.out[S].logits[k].subarray(s * eager.V, (s + 1) * eager.V);
      const b = graphs.out[S].logits[k].subarray(s * eager.V, (s + 1) * eager.V);
      minCos = Math.min(minCos, cosine(a, b));
      for (let i = 0; i < a.length; i++) maxAbs = Math.max(maxAbs, Math.abs(a[i] - b[i]));
      const top = argmax(a);
      let second = -Infinity;
      for (let i = 0; i < a.length; i++) if (i !== top && a[i] > second) second = a[i];
      if (a[top] - second > 1e-2) { decisive++; argmaxSame += argmax(b) === top ? 1 : 0; }
    }
  const exact = S === 64;
  return { seqs: S, bucket: S <= 64 ? 2 ** Math.ceil(Math.log2(S)) : null, minCosine: minCos, maxAbsDiff: maxAbs, decisiveRows: decisive, argmaxSame,
    pass: minCos >= (exact ? 0.99999 : 0.9999) && argmaxSame === decisive };
});
const ok = /graphs <= 4\b/.test(eager.describe) && /graphs <= 256\b/.test(graphs.describe) && cases.every((c) => c.pass);
const result = { ok, engines: [eager.describe, graphs.describe], steps: STEPS, cases };
writeResult('gpu-graph-check.json', result);
console.log(JSON.stringify(result));
process.exit(ok ? 0 : 1);
