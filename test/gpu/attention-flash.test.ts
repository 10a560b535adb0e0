// The tensor-core flash prefill attention (native/src/cuda/attention_prefill.cu) against the SIMT
// kernel it replaces for long chunks: the same steps on engines made with the flash kernel and with
// NODESPEED_CUDA_FLASH=0 (read when an engine is constructed), in fp16 and in bf16 compute, every
// returned position's logits compared. Scenarios:
//   prefill300   one 300-token prefill (5 query tiles, the last of 44 tokens)
//   decode       4 decode steps after it (CUDA-graph path, reading flash-written context)
//   mixed        one step: prefills of 200 and 77 tokens, a decode token of a third sequence
//                and a 9-token chunk of a fourth (both through the SIMT kernel)
//   continuation chunks of 150, 100 (pos 150) and 20 (pos 250) tokens of one sequence
// Block tables are shuffled (no two consecutive blocks adjacent). Models: the 7B shape (head_dim 128,
// MHA) and a random `model init --preset 100m` checkpoint made in a temp folder (head_dim 64, GQA 12/4).
//
// The bars. fp16: flash vs SIMT min cosine >= 0.9999 and the same argmax at >= 98% of positions (the
// random 7B's flat logits flip ~1% of argmaxes under any 16-bit change of P: flash rounds P for its
// mma). bf16 amplifies rounding noise on a random 7B (HF bf16 vs HF f32 min cosine 0.995 on it), so a
// bf16 scenario passes when flash vs SIMT meets the fp16 bar, or when flash is no further than the
// SIMT kernel from the fp16 SIMT run (the most precise one we have): 1 - minCos(flash, ref) <=
// 1.5 (1 - minCos(simt, ref)) + 1e-5. Top-1 agreement with that reference is reported, not judged: on
// the 7B it moves by points either way at equal cosine (mixed: flash 90.2% vs SIMT 93.0%,
// continuation: 92.6% vs 90.7%, min cosines equal to 6 digits; bench/results/gpu-attention-flash-h200.json).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';

import { addon, argmax, cosine, ensure7b, gpuStatus, openCudaEngine, recordResult, root, titled, withSettings } from './lib.mjs';

const gpu = gpuStatus({ cuda: true });
const MIN_COS = 0.9999, MIN_TOP1 = 0.98;
const KV_BLOCKS = 160;

// Like for like: the flash kernel rounds P to 16 bits for its mma, so the SIMT runs round P too
// (NODESPEED_CUDA_ROUND bit 16, read once per process, before the first engine of this file).
if (gpu.ok && addon.settings().cudaRound === 0) addon.configure({ ...addon.settings(), cudaRound: 16 });

function lcg(seed: number) {
  let x = seed;
  return () => { x = (x * 1103515245 + 12345) % 2147483648; return x; };
}

type Seq = { tokens: Int32Array; pos: number; blockTable: Int32Array; sample?: boolean; allLogits?: boolean };

async function scenarios(dir: string, flash: boolean, dtype: 'f16' | 'bf16') {
  const { engine, cfg, blockSize } = await withSettings({ cudaFlash: flash }, () => openCudaEngine(dir, { dtype, kvBlocks: KV_BLOCKS }));
  const desc = engine.describe();
  try {
    expect(desc.includes('flash prefill'), desc).toBe(flash);
    const V = cfg.vocabSize;
    const rnd = lcg(4242);
    const ids = (n: number) => Int32Array.from({ length: n }, () => 3 + (rnd() % (V - 3)));
    // Shuffled blocks: sequence i takes the next blocks of a fixed permutation of the pool.
    const perm = Array.from({ length: KV_BLOCKS }, (_, i) => i);
    const prnd = lcg(99);
    for (let i = perm.length - 1; i > 0; i--) { const j = prnd() % (i + 1); [perm[i], perm[j]] = [perm[j]!, perm[i]!]; }
    let nextBlock = 0;
    const table = (tokens: number) => {
      const n = Math.ceil(tokens / blockSize);
      if (nextBlock + n > KV_BLOCKS) throw new Error(`need more than ${KV_BLOCKS} KV blocks`);
      return Int32Array.from(perm.slice(nextBlock, (nextBlock += n)));
    };
    const out: Record<string, Float32Array> = {}, ms: Record<string, number> = {};
    const step = async (name: string, seqs: Seq[], wantLogits = true) => {
      const t0 = performance.now();
      const r = await engine.step({ seqs, wantLogits });
      ms[name] = +(performance.now() - t0).toFixed(2);
      return r;
    };
    const cat = (xs: Float32Array[]) => Float32Array.from(xs.flatMap((x) => Array.from(x)));

    await step('warmup', [{ tokens: ids(64), pos: 0, blockTable: table(64), sample: false }], false);
    const btA = table(304), a = ids(300);
    out.prefill300 = (await step('prefill300', [{ tokens: a, pos: 0, blockTable: btA, allLogits: true, sample: false }])).logits!;
    const dec = [];
    for (let k = 0; k < 4; k++)  // sampled (greedy): the graphable decode path
      dec.push((await step(`decode${k}`, [{ tokens: ids(1), pos: 300 + k, blockTable: btA }])).logits!);
    out.decode = cat(dec);

    const btD = table(41);
    await step('prefillD', [{ tokens: ids(40), pos: 0, blockTable: btD, sample: false }], false);
    out.mixed = (await step('mixed', [
      { tokens: ids(200), pos: 0, blockTable: table(200), allLogits: true, sample: false },
      { tokens: ids(77), pos: 0, blockTable: table(77), allLogits: true, sample: false },
      { tokens: ids(1), pos: 40, blockTable: btD, sample: false },
      { tokens: ids(9), pos: 0, blockTable: table(9), allLogits: true, sample: false },
    ])).logits!;

    const btF = table(270);
    const chunks = [];
    for (const [pos, n] of [[0, 150], [150, 100], [250, 20]] as const)
      chunks.push((await step(`chunk@${pos}`, [{ tokens: ids(n), pos, blockTable: btF, allLogits: true, sample: false }])).logits!);
    out.continuation = cat(chunks);
    return { out, ms, V, headDim: cfg.headDim, heads: cfg.numHeads, kvHeads: cfg.numKvHeads, desc };
  } finally {
    engine.dispose();
  }
}

function compare(a: Float32Array, b: Float32Array, V: number) {
  if (a.length !== b.length || a.length % V) throw new Error(`logit counts differ: ${a.length} vs ${b.length}`);
  const P = a.length / V;
  let minCos = 1, sumCos = 0, worst = -1, agree = 0;
  for (let p = 0; p < P; p++) {
    const x = a.subarray(p * V, (p + 1) * V), y = b.subarray(p * V, (p + 1) * V);
    const c = cosine(x, y);
    sumCos += c;
    if (!(c >= minCos)) { minCos = c; worst = p; }
    agree += argmax(x) === argmax(y) ? 1 : 0;
  }
  return { positions: P, minCosine: +minCos.toFixed(7), meanCosine: +(sumCos / P).toFixed(7), worstPosition: worst,
    top1Agreement: +(agree / P).toFixed(4), pass: minCos >= MIN_COS && agree / P >= MIN_TOP1 };
}

async function checkModel(dir: string, label: string) {
  const run: Record<string, Awaited<ReturnType<typeof scenarios>>> = {};
  for (const dtype of ['f16', 'bf16'] as const)
    for (const flash of [true, false]) run[`${dtype}/${flash ? 'flash' : 'simt'}`] = await scenarios(dir, flash, dtype);
  const ref = run['f16/simt']!;
  const res = { model: label, headDim: ref.headDim, heads: ref.heads, kvHeads: ref.kvHeads, engine: run['bf16/flash']!.desc,
    f16: {} as Record<string, ReturnType<typeof compare>>, bf16: {} as Record<string, { pass: boolean } & Record<string, unknown>>,
    stepMs: Object.fromEntries(Object.entries(run).map(([k, v]) => [k, v.ms])) };
  for (const k of Object.keys(ref.out)) {
    res.f16[k] = compare(run['f16/flash']!.out[k]!, ref.out[k]!, ref.V);
    const direct = compare(run['bf16/flash']!.out[k]!, run['bf16/simt']!.out[k]!, ref.V);
    const flashVsRef = compare(run['bf16/flash']!.out[k]!, ref.out[k]!, ref.V);
    const simtVsRef = compare(run['bf16/simt']!.out[k]!, ref.out[k]!, ref.V);
    const noNoisier = 1 - flashVsRef.minCosine <= 1.5 * (1 - simtVsRef.minCosine) + 1e-5;
    res.bf16[k] = { flashVsSimt: direct, flashVsF16Ref: flashVsRef, simtVsF16Ref: simtVsRef, pass: direct.pass || noNoisier };
  }
  return res;
}

describe.skipIf(!gpu.ok)(titled('flash prefill attention vs the SIMT kernel', gpu), { timeout: 1_800_000 }, () => {
  const models: Awaited<ReturnType<typeof checkModel>>[] = [];
  const check = (m: Awaited<ReturnType<typeof checkModel>>) => {
    models.push(m);
    recordResult('gpu-attention-flash.json', { bar: { minCosine: MIN_COS, top1Agreement: MIN_TOP1 }, models });
    for (const [k, v] of Object.entries(m.f16)) expect(v.pass, `${m.model} f16 ${k}: ${JSON.stringify(v)}`).toBe(true);
    for (const [k, v] of Object.entries(m.bf16)) expect(v.pass, `${m.model} bf16 ${k}: ${JSON.stringify(v)}`).toBe(true);
  };

  it('7B shape (head_dim 128, MHA)', async () => {
    const dir = ensure7b();
    check(await checkModel(dir, dir));
  });

  it('random 100m preset (head_dim 64, GQA 12/4)', async () => {
    const tmp = mkdtempSync(join(tmpdir(), 'ns-flash-'));
    try {
      const { initModel } = await import(pathToFileURL(join(root, 'dist', 'model', 'index.js')).href);
      const small = join(tmp, 'm100');
      await initModel({ arch: 'llama', preset: '100m', dtype: 'bf16', seed: 7n, out: small });
      check(await checkModel(small, 'random 100m preset (hd 64, GQA 12/4)'));
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});
