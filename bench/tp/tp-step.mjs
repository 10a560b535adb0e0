// Engine-level decode step time at tp 1 and tp 2 in one process (the tp-2 serving ratio without
// the serving path): the 7B shape on cuda:0, then split over cuda:0 and cuda:1 by tensor parallelism
// (NCCL communicators from one unique id). Batch-1 and batch-S decode steps after a P-token prefill;
// prints one JSON line with the medians. Tells whether a slow tp-2 serving step is the engine
// (collectives, kernels) or the replica's data plane.
// usage: node bench/tp/tp-step.mjs MODEL_DIR [--tp 1,2] [--batches 1,64] [--prompt 512] [--steps 128]
import { parseArgs } from 'node:util';
import { blockTables, openCudaEngine, requireCuda, tpComms } from '../../test/gpu/lib.mjs';

const { values: a, positionals } = parseArgs({ allowPositionals: true, options: {
  tp: { type: 'string', default: '1,2' }, batches: { type: 'string', default: '1,64' },
  prompt: { type: 'string', default: '512' }, steps: { type: 'string', default: '128' } } });
const dir = positionals[0];
if (!dir) { console.error('usage: node bench/tp/tp-step.mjs MODEL_DIR [--tp 1,2] [--batches 1,64]'); process.exit(2); }
requireCuda();
const P = Number(a.prompt), N = Number(a.steps);
const med = (x) => [...x].sort((p, q) => p - q)[x.length >> 1];

async function open(tp) {
  if (tp === 1) { const e = await openCudaEngine(dir, { dtype: 'bf16' }); return { ...e, ranks: [e.engine], comms: [] }; }
  const comms = await tpComms(tp);
  const rs = await Promise.all(comms.map((comm, r) => openCudaEngine(dir, { dtype: 'bf16', tpRank: r, tpSize: tp, deviceIndex: r, comm })));
  return { cfg: rs[0].cfg, blockSize: rs[0].blockSize, kvBlocks: Math.min(...rs.map((r) => r.kvBlocks)), ranks: rs.map((r) => r.engine), comms };
}

const result = { P, steps: N };
for (const tp of a.tp.split(',').map(Number)) {
  const L = await open(tp);
  if (tp > 1) result[`tp${tp}_comm`] = L.comms[0].p2p ?? L.comms[0].kind;
  const step = async (req) => (await Promise.all(L.ranks.map((e) => e.step(req))))[0];
  for (const S of a.batches.split(',').map(Number)) {
    const bts = blockTables(S, P + N + 1, L.blockSize, L.kvBlocks);
    const next = new Int32Array(S);
    for (let s = 0; s < S; s += 16) {  // prefill 16 prompts a step
      const seqs = [];
      for (let i = s; i < Math.min(S, s + 16); i++) seqs.push({ tokens: Int32Array.from({ length: P }, (_, k) => 3 + ((i * 7919 + k * 104729) % (L.cfg.vocabSize - 3))), pos: 0, blockTable: bts[i] });
      (await step({ seqs })).sampled.forEach((id, j) => { next[s + j] = id; });
    }
    const ms = [];
    for (let k = 0; k < N; k++) {
      const t0 = performance.now();
      const r = await step({ seqs: bts.map((bt, i) => ({ tokens: Int32Array.of(next[i]), pos: P + k, blockTable: bt })) });
      ms.push(performance.now() - t0);
      next.set(r.sampled);
    }
    result[`tp${tp}_b${S}_ms`] = +med(ms.slice(8)).toFixed(3);
    console.error(`tp ${tp} batch ${S}: decode step median ${med(ms.slice(8)).toFixed(3)} ms`);
  }
  L.ranks.forEach((e) => e.dispose());
  L.comms.forEach((c) => c.abort?.());
}
console.log(JSON.stringify(result));
