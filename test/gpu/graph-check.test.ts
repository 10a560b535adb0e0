// Decode CUDA graphs past 4 sequences (native/src/cuda/cuda_graph.cu) against eager launches inside
// the engine (cuBLASLt off in both: its tuned algorithms are picked per row count, not what this
// compares): the 7B-shape checkpoint opened twice, with graphs up to 4 sequences (NODESPEED_CUDA_GRAPH_MAX=4:
// larger batches launched eagerly) and with the default (graphs up to 256). Every sequence is
// prefilled in a step of its own (the same GEMM shapes in both engines), then 6 decode steps with
// every sequence's logits, the graph engine fed the eager engine's tokens. A GEMM's rows do not
// depend on each other for a given kernel, and cuBLAS picks its kernel by the shape, so the graph
// rows must equal the eager rows bit for bit where the GEMMs have the same number of rows: 64
// sequences (the 64 bucket) and 50 (padded to 64 with dummy sequences) against the eager run of 64,
// 12 (padded to 16) against the eager run of 16.
import { describe, expect, it } from 'vitest';

import { blockTables, ensure7b, gpuStatus, openCudaEngine, recordResult, titled, withSettings } from './lib.mjs';

const gpu = gpuStatus({ cuda: true });
const P = 80, STEPS = 6, MAX_S = 64;
const CASES = [{ seqs: 64, vs: 64 }, { seqs: 50, vs: 64 }, { seqs: 12, vs: 16 }];

type Engine = Awaited<ReturnType<typeof openCudaEngine>>['engine'];

// Decodes `S` sequences for STEPS steps; `inputs[k][s]` (the eager run's tokens) when given.
async function decode(engine: Engine, V: number, bts: Int32Array[], S: number, inputs?: Int32Array[]) {
  const seqs = bts.slice(0, S).map((bt, s) => ({ tokens: Int32Array.from({ length: P - (s % 7) }, (_, i) => 3 + ((s * 7919 + i * 104729) % (V - 3))), blockTable: bt }));
  const next = new Int32Array(S);
  for (const [s, q] of seqs.entries()) next[s] = (await engine.step({ seqs: [{ tokens: q.tokens, pos: 0, blockTable: q.blockTable }] })).sampled[0]!;
  const logits: Float32Array[] = [], fed: Int32Array[] = [];
  for (let k = 0; k < STEPS; ++k) {
    const toks = inputs ? inputs[k]!.subarray(0, S) : Int32Array.from(next);
    const r = await engine.step({ seqs: seqs.map((q, s) => ({ tokens: Int32Array.of(toks[s]!), pos: q.tokens.length + k, blockTable: q.blockTable })), wantLogits: true });
    logits.push(r.logits!);
    fed.push(Int32Array.from(toks));
    next.set(r.sampled);
  }
  return { logits, fed };
}

async function open(dir: string, graphMax: number) {
  return withSettings({ cudaLt: false, cudaGraphMax: graphMax }, async () => {
    const e = await openCudaEngine(dir, { dtype: 'bf16', kvBlocks: Math.ceil((P + STEPS + 1) / 16 + 1) * MAX_S });
    return { ...e, V: e.cfg.vocabSize, bts: blockTables(MAX_S, P + STEPS + 1, e.blockSize, e.kvBlocks), describe: e.engine.describe() };
  });
}

describe.skipIf(!gpu.ok)(titled('decode CUDA graphs vs eager launches', gpu), { timeout: 900_000 }, () => {
  it('graph rows equal eager rows bit for bit at the same GEMM row count, padded buckets included', async () => {
    const dir = ensure7b();
    const eager = await open(dir, 4);
    const eagerRuns: Record<number, Awaited<ReturnType<typeof decode>>> = {};
    try {
      for (const S of new Set(CASES.map((c) => c.vs))) eagerRuns[S] = await decode(eager.engine, eager.V, eager.bts, S);
    } finally {
      eager.engine.dispose();
    }
    const graphs = await open(dir, 256);
    const V = eager.V;
    const cases = [];
    try {
      for (const { seqs: S, vs } of CASES) {
        const ref = eagerRuns[vs]!;
        const run = await decode(graphs.engine, V, graphs.bts, S, ref.fed);
        let differing = 0, maxAbsDiff = 0;
        for (let k = 0; k < STEPS; ++k)
          for (let i = 0; i < S * V; i++) {
            const d = Math.abs(ref.logits[k]![i]! - run.logits[k]![i]!);
            if (d !== 0) { differing++; maxAbsDiff = Math.max(maxAbsDiff, d); }
          }
        cases.push({ seqs: S, againstEagerOf: vs, logits: STEPS * S * V, differing, maxAbsDiff });
      }
    } finally {
      graphs.engine.dispose();
    }
    recordResult('gpu-graph-check.json', { engines: [eager.describe, graphs.describe], steps: STEPS, cases });
    expect(eager.describe).toMatch(/graphs <= 4\b/);
    expect(graphs.describe).toMatch(/graphs <= 256\b/);
    for (const c of cases) expect(c, `${c.seqs} sequences vs the eager run of ${c.againstEagerOf}`).toMatchObject({ differing: 0 });
  });
});
