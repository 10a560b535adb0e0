// Runs one 128-token prefill and a few batch-1 decode steps, for a profiler: with
// NODESPEED_CUDA_PROFILE_STEP=3 the backend brackets the third decode step (step index 3) with
// cudaProfilerStart/Stop, so `ncu --profile-from-start off` records exactly one decode step.
// Prints the median wall time of the decode steps (without a profiler attached this is the
// number to compare with the sum of kernel times).
// usage: node bench/decode/profile-step.mjs MODEL_DIR [QUANTIZE=none|int8|fp8] [KV=auto|fp8]
import { blockTables, openCudaEngine, requireCuda } from '../../test/gpu/lib.mjs';

requireCuda();
const [dir, quantize = 'none', kvCacheDtype = 'auto'] = process.argv.slice(2);
const { engine, cfg, blockSize, kvBlocks } = await openCudaEngine(dir, { dtype: 'bf16', kvBlocks: 64, quantize, kvCacheDtype });
const [bt] = blockTables(1, 256, blockSize, kvBlocks);
const prompt = Int32Array.from({ length: 128 }, (_, i) => 3 + ((i * 7919) % (cfg.vocabSize - 3)));
let r = await engine.step({ seqs: [{ tokens: prompt, pos: 0, blockTable: bt }] });
const ms = [];
for (let i = 0; i < 40; i++) {
  const t0 = performance.now();
  r = await engine.step({ seqs: [{ tokens: Int32Array.of(r.sampled[0]), pos: 128 + i, blockTable: bt }] });
  ms.push(performance.now() - t0);
}
ms.sort((a, b) => a - b);
console.log(JSON.stringify({ decodeStepMsMedian: ms[ms.length >> 1], decodeStepMsMin: ms[0] }));
engine.dispose();
