// The CUDA sampler against the CPU one (which test/engine/sampler*.test.ts holds to transformers'
// numbers): logit bias, penalties, min-p, top-k, top-p, logprobs and the seeded draw on the same
// logits through addon.sampleCheck (vocab 64, 32000, 151936), then the same controls inside CUDA
// engine steps, where the per-row lists travel through the extras buffer and decode graphs: a batch
// of 8 mixed sequences (one graph bucket) must sample what each sequence samples alone.
import { describe, expect, it } from 'vitest';

import { rng } from '../helpers/rng.js';
import { addon, device, gpuStatus, openCudaEngine, recordResult, root, titled } from './lib.mjs';

const gpu = gpuStatus({ cuda: true });
let failures: string[] = [];
const fail = (what: string) => { failures.push(what); };

const CONTROLS = [
  {},
  { temperature: 0.7 },
  { temperature: 1.2, topK: 40 },
  { temperature: 0.9, topP: 0.9 },
  { temperature: 1, sampling: { minP: 0.05 } },
  { temperature: 0.8, topK: 50, topP: 0.95, sampling: { minP: 0.02 } },
  { temperature: 0, sampling: { repetitionPenalty: 1.3, logprobs: 5 } },
  { temperature: 1, sampling: { repetitionPenalty: 0.9, presencePenalty: 0.5, frequencyPenalty: 0.3, logprobs: 20 } },
  { temperature: 0.6, topP: 0.8, sampling: { frequencyPenalty: -0.4, logprobs: 0 } },
];

function kernelCheck(vocab, trials) {
  const r = rng(vocab);
  let rows = 0, same = 0, maxPenDiff = 0, maxLpDiff = 0;
  for (let t = 0; t < trials; t++) {
    const batch = CONTROLS.map((c, i) => {
      const logits = Float32Array.from({ length: vocab }, () => (r() * 2 - 1) * 8);
      const promptIds = Int32Array.from({ length: 64 }, () => Math.floor(r() * vocab));
      const outputIds = Int32Array.from({ length: 48 }, () => Math.floor(r() * 200));
      const biasIds = Int32Array.from(new Set(Array.from({ length: 16 }, () => Math.floor(r() * vocab))));
      const sampling = { ...(c.sampling ?? {}), ...(i % 2 ? { logitBiasIds: biasIds, logitBiasValues: Float32Array.from(biasIds, () => (r() * 2 - 1) * 5) } : {}) };
      return { ...c, logits, promptIds, outputIds, sampling, seed: BigInt(t * 1000 + i), position: 112 };
    });
    const cpu = addon.sampleCheck('cpu', vocab, batch);
    const gpu = addon.sampleCheck(device, vocab, batch);
    batch.forEach((row, i) => {
      rows++;
      const a = cpu[i], b = gpu[i];
      for (let k = 0; k < vocab; k++) maxPenDiff = Math.max(maxPenDiff, Math.abs(a.penalized[k] - b.penalized[k]));
      if (a.sampled === b.sampled) same++;
      else if (!(row.temperature > 0)) fail(`vocab ${vocab} trial ${t} row ${i}: greedy ${b.sampled} on ${device}, ${a.sampled} on cpu`);
      const k = row.sampling?.logprobs ?? -1;
      if (k >= 0) {
        if (a.sampled === b.sampled) maxLpDiff = Math.max(maxLpDiff, Math.abs(a.sampledLogprob - b.sampledLogprob));
        for (let j = 0; j < k; j++) {
          if (a.topIds[j] !== b.topIds[j]) fail(`vocab ${vocab} trial ${t} row ${i}: top logprob ${j} is id ${b.topIds[j]} on ${device}, ${a.topIds[j]} on cpu`);
          maxLpDiff = Math.max(maxLpDiff, Math.abs(a.topLogprobs[j] - b.topLogprobs[j]));
        }
        if (b.topIds[k] !== undefined && k < 20 && b.topIds[k] !== -1) fail(`vocab ${vocab} row ${i}: top logprob slot ${k} filled past the ${k} asked for`);
      }
    });
  }
  // The kernel sums masses in float with another order than the CPU's double sums: a draw that
  // lands within rounding of a boundary may pick the neighbour. Greedy rows must match exactly.
  if (same / rows < 0.98) fail(`vocab ${vocab}: only ${same}/${rows} sampled ids match the CPU's`);
  if (maxPenDiff > 1e-5) fail(`vocab ${vocab}: penalized logits differ by ${maxPenDiff}`);
  if (maxLpDiff > 2e-4) fail(`vocab ${vocab}: logprobs differ by ${maxLpDiff}`);
  return { vocab, rows, sameIds: same, maxPenalizedDiff: maxPenDiff, maxLogprobDiff: maxLpDiff };
}

async function engineCheck() {
  const dir = `${root}/models/py-tiny`;
  const { engine } = await openCudaEngine(dir, { kvBlocks: 256 });
  const prompt = [0, 333, 285, 597, 263, 1220, 1525, 9, 79, 332, 200];
  const mixes = [
    {}, { sampling: { repetitionPenalty: 1.5 } }, { sampling: { presencePenalty: 1, frequencyPenalty: 0.5, logprobs: 3 } },
    { sampling: { logitBiasIds: Int32Array.of(4, 259), logitBiasValues: Float32Array.of(-20, 5) } }, { temperature: 0.8, topK: 20, seed: 7n },
    { temperature: 1, sampling: { minP: 0.1, repetitionPenalty: 1.2 }, seed: 9n }, { sampling: { logprobs: 20 } }, { temperature: 0.7, topP: 0.9, seed: 3n, sampling: { frequencyPenalty: 0.6 } },
  ].map((m) => ({ temperature: 0, ...m, sampling: { promptLen: prompt.length, ...(m.sampling ?? {}) } }));
  const table = (i) => Int32Array.from({ length: 8 }, (_, b) => i * 8 + b);
  async function run(which) {
    const outs = which.map(() => []);
    const lps = which.map(() => []);
    let res = await engine.step({ seqs: which.map((m, j) => ({ tokens: Int32Array.from(prompt), pos: 0, blockTable: table(j), ...mixes[m] })) });
    for (let s = 0; s < 24; s++) {
      which.forEach((_, j) => {
        outs[j].push(res.sampled[j]);
        if (res.logprobs) lps[j].push(res.logprobs.sampled[j]);
      });
      res = await engine.step({ seqs: which.map((m, j) => ({ tokens: Int32Array.of(outs[j].at(-1)), pos: prompt.length + s, blockTable: table(j), ...mixes[m] })) });
    }
    return { outs, lps };
  }
  const all = await run(mixes.map((_, i) => i));  // 8 decodes: a graph bucket
  // "Alone" keeps the batch's shape: sequence i in its slot, plain greedy sequences in the others. A batch
  // of 1 would run other GEMM kernels (GEMV instead of cuBLAS) whose bf16 logits differ in the last bits,
  // enough to flip a near-tie; with the same row count every row's logits are the same bits, so any
  // difference left is sampler state (penalty counts, seeds, logprobs) crossing between sequences.
  for (let i = 0; i < mixes.length; i++) {
    const alone = await run(mixes.map((_, j) => (j === i ? i : 0)));
    if (JSON.stringify(alone.outs[i]) !== JSON.stringify(all.outs[i])) fail(`engine: sequence ${i} samples ${alone.outs[i]} beside plain sequences, ${all.outs[i]} in the mixed batch of 8`);
    const lpAlone = alone.lps[i].filter((x) => !Number.isNaN(x)), lpAll = all.lps[i].filter((x) => !Number.isNaN(x));
    if (lpAlone.some((x, k) => Math.abs(x - lpAll[k]) > 1e-3)) fail(`engine: sequence ${i} logprobs differ beside plain sequences and in the mixed batch`);
  }
  const plain = all.outs[0], penalized = all.outs[1];
  if (JSON.stringify(plain) === JSON.stringify(penalized)) fail('engine: the repetition penalty changed nothing');
  const describe = engine.describe();
  engine.dispose();
  return { sequences: mixes.length, describe };
}

describe.skipIf(!gpu.ok)(titled('the CUDA sampler against the CPU sampler', gpu), { timeout: 600_000 }, () => {
  const result: Record<string, unknown> = { device };
  it('sampleCheck: the same penalized logits, greedy ids, top logprobs and (within rounding) draws as the CPU', () => {
    failures = [];
    result.kernel = [kernelCheck(64, 20), kernelCheck(32000, 6), kernelCheck(151936, 3)];
    result.kernelFailures = failures;
    recordResult('gpu-sampler-check.json', result);
    expect(failures).toEqual([]);
  });

  it('engine steps: a batch of 8 mixed sequences samples what each samples beside plain ones', async () => {
    failures = [];
    result.engine = await engineCheck();
    result.engineFailures = failures;
    recordResult('gpu-sampler-check.json', result);
    expect(failures).toEqual([]);
  });
});
