// Decode CUDA graphs past 4 sequences (native/src/cuda/cuda_graph.cu) against eager launches inside
// the engine (cuBLASLt off in both): the same 7B-shape checkpoint opened twice, with NODESPEED_CUDA_GRAPH_MAX=4 (batches past
// 4 launched eagerly, as before session 6) and with the default (graphs up to 256). Every sequence is
// prefilled in a step of its own (the same GEMM shapes in both engines), then 6 decode steps with
// every sequence's logits, the graph engine fed the eager engine's tokens. A GEMM's rows do not depend
// on each other for a given kernel, and cuBLAS picks its kernel by the shape, so the graph rows must
// equal the eager rows bit for bit where the GEMMs have the same number of rows: 64 sequences (the 64
// bucket) and 50 (padded to 64 with dummy sequences) against the eager run of 64, 12 (padded to 16)
// against the eager run of 16. Prints one JSON line; exit 0 ok, 1 not.
// usage: node test/gpu/graph-check.mjs MODEL_DIR
import { blockTables, openCudaEngine, requireCuda, writeResult } from './lib.mjs';

requireCuda();
const dir = process.argv[2];
if (!dir) { console.error('usage: node test/gpu/graph-check.mjs MODEL_DIR'); process.exit(2); }
const P = 80, STEPS = 6, MAX_S = 64;
const CASES = [{ seqs: 64, vs: 64 }, { seqs: 50, vs: 64 }, { seqs: 12, vs: 16 }];

// Decodes `S` sequences for STEPS steps; `inputs[k][s]` (the eager run's tokens) when given.
async function decode(engine, V, bts, S, inputs) {
  const seqs = bts.slice(0, S).map((bt, s) => ({ tokens: Int32Array.from({ length: P - (s % 7) }, (_, i) => 3 + ((s * 7919 + i * 104729) % (V - 3))), blockTable: bt }));
  const next = new Int32Array(S);
  for (const [s, q] of seqs.entries()) next[s] = (await engine.step({ seqs: [{ tokens: q.tokens, pos: 0, blockTable: q.blockTable }] })).sampled[0];
  const logits = [], fed = [];
  for (let k = 0; k < STEPS; ++k) {
    const toks = inputs ? inputs[k].subarray(0, S) : Int32Array.from(next);
    const r = await engine.step({ seqs: seqs.map((q, s) => ({ tokens: Int32Array.of(toks[s]), pos: q.tokens.length + k, blockTable: q.blockTable })), wantLogits: true });
    logits.push(r.logits);
    fed.push(Int32Array.from(toks));
    next.set(r.sampled);
  }
  return { logits, fed };
}

async function open(graphMax) {
  process.env.NODESPEED_CUDA_LT = '0';  // cuBLASLt's tuned algorithms are picked per row count: not what this compares
  if (graphMax) process.env.NODESPEED_CUDA_GRAPH_MAX = String(graphMax);
  else delete process.env.NODESPEED_CUDA_GRAPH_MAX;
  const e = await openCudaEngine(dir, { dtype: 'bf16', kvBlocks: Math.ceil((P + STEPS + 1) / 16 + 1) * MAX_S });
  return { ...e, V: e.cfg.vocabSize, bts: blockTables(MAX_S, P + STEPS + 1, e.blockSize, e.kvBlocks), describe: e.engine.describe() };
}

const eager = await open(4);
const eagerRuns = {};
for (const S of new Set(CASES.map((c) => c.vs))) eagerRuns[S] = await decode(eager.engine, eager.V, eager.bts, S);
eager.engine.dispose();
const graphs = await open(0);
const V = eager.V;
const cases = [];
for (const { seqs: S, vs } of CASES) {
  const ref = eagerRuns[vs];
  const run = await decode(graphs.engine, V, graphs.bts, S, ref.fed);
  let differing = 0, maxAbs = 0;
  for (let k = 0; k < STEPS; ++k)
    for (let i = 0; i < S * V; i++) {
      const d = Math.abs(ref.logits[k][i] - run.logits[k][i]);
      if (d !== 0) { differing++; maxAbs = Math.max(maxAbs, d); }
    }
  cases.push({ seqs: S, againstEagerOf: vs, logits: STEPS * S * V, differing, maxAbsDiff: maxAbs, pass: differing === 0 });
}
graphs.engine.dispose();
const ok = /graphs <= 4\b/.test(eager.describe) && /graphs <= 256\b/.test(graphs.describe) && cases.every((c) => c.pass);
const result = { ok, engines: [eager.describe, graphs.describe], steps: STEPS, cases };
writeResult('gpu-graph-check.json', result);
console.log(JSON.stringify(result));
process.exit(ok ? 0 : 1);
