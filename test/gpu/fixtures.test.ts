// CUDA engine against Hugging Face references, on a GPU host:
//  - test/fixtures/hf-reference tiny-llama-gqa-{f32,bf16}: with bf16 compute (and the f32 fixture in
//    fp16), last-position logits cosine >= 0.999, and greedy tokens equal HF's for at least the first
//    8 of greedy_24 unless they leave HF's path at a near-tie: HF's own top-2 margin there < 0.01.
//    The f32 fixture in bf16 compute does that on two prompts (at tokens 3 and 7, margins 0.0014 and
//    0.0062: bf16 weight rounding alone flips them; the bf16 fixture's own f32 reference leaves there
//    too; bench/results/gpu-fixtures-h200.json, docs/ENGINE.md "CUDA numerics");
//  - models/py-tiny: the first 16 tokens of greedy_48 for every prompt;
//  - GPU sampling (temperature/top-k/top-p) draws the token that the reference algorithm of
//    docs/ENGINE.md draws from the same logits and seeded uniform (>= 95% of 64 draws, and seeds
//    change the draw).
// NODESPEED_TEST_DEVICE=cpu runs it on the CPU backend (a dry run of the check itself).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

import { blockTables, cosine, gpuStatus, greedy, openCudaEngine, recordResult, referenceMargin, root, titled } from './lib.mjs';
import { referenceSample, samplingUniform } from './sampling-reference.mjs';

interface FixtureCase { text: string; ids: number[]; greedy_24: number[]; last_logits: number[] }
interface PyTinyCase { text: string; ids: number[]; greedy_48: number[] }

const gpu = gpuStatus();
const NEAR_TIE = 0.01;
const results: Record<string, unknown> = {};

describe.skipIf(!gpu.ok)(titled('CUDA engine vs Hugging Face references', gpu), { timeout: 600_000 }, () => {
  for (const [name, dtype] of [['tiny-llama-gqa-f32', 'bf16'], ['tiny-llama-gqa-bf16', 'bf16'], ['tiny-llama-gqa-f32', 'f16']] as const) {
    it(`${name} with ${dtype} compute: >= 8 greedy tokens of HF's (or a near-tie) and last-position cosine >= 0.999`, async () => {
      const dir = join(root, 'test', 'fixtures', 'hf-reference', name);
      const ref = JSON.parse(readFileSync(join(dir, 'reference.json'), 'utf8')) as { cases: FixtureCase[] };
      const { engine, blockSize, kvBlocks } = await openCudaEngine(dir, { dtype, kvBlocks: 64 });
      const [bt] = blockTables(1, 64, blockSize, kvBlocks);
      const rows = [];
      try {
        for (const c of ref.cases) {
          // The fixture's greedy_24 continues the prompt WITHOUT its BOS (from ids[1:] the CPU backend
          // matches all 24), while last_logits are of the prompt with BOS: each is checked as made.
          const { lastLogits } = await greedy(engine, c.ids, 1, bt);
          const prompt = c.ids[0] === 0 ? c.ids.slice(1) : c.ids;
          const { tokens } = await greedy(engine, prompt, 24, bt);
          let match = 0;
          while (match < 24 && tokens[match] === c.greedy_24[match]) match++;
          const cos = cosine(lastLogits, c.last_logits);
          const hfTop2MarginAtDivergence = match < 24 ? await referenceMargin(dir, [...prompt, ...c.greedy_24.slice(0, match)]) : null;
          rows.push({ model: name, compute: dtype, text: c.text, cosine: cos, greedyMatch: match, hfTop2MarginAtDivergence });
        }
      } finally {
        engine.dispose();
      }
      results[`${name}/${dtype}`] = rows;
      for (const r of rows) {
        if (r.greedyMatch < 8) expect(r.hfTop2MarginAtDivergence, `${r.text}: left HF's greedy path at token ${r.greedyMatch}`).toBeLessThan(NEAR_TIE);
        expect(r.cosine, r.text).toBeGreaterThanOrEqual(0.999);
      }
    });
  }

  it('py-tiny: the first 16 greedy tokens of every prompt; seeded sampling draws the reference algorithm\'s token', async () => {
    const dir = join(root, 'models', 'py-tiny');
    const ref = JSON.parse(readFileSync(join(dir, 'reference.json'), 'utf8')) as { cases: PyTinyCase[] };
    const { engine, blockSize, kvBlocks } = await openCudaEngine(dir, { dtype: 'bf16', kvBlocks: 64 });
    const [bt] = blockTables(1, 512, blockSize, kvBlocks);
    const rows = [];
    let agree = 0, total = 0;
    const distinct = new Set<number>();
    try {
      for (const c of ref.cases) {
        const { tokens } = await greedy(engine, c.ids, 48, bt);
        let match = 0;
        while (match < 48 && tokens[match] === c.greedy_48[match]) match++;
        const hfTop2MarginAtDivergence = match < 48 ? await referenceMargin(dir, c.ids, c.greedy_48, match) : null;
        rows.push({ text: c.text, greedyMatch: match, hfTop2MarginAtDivergence });
      }
      // Many seeded draws over one prompt with several settings; each GPU draw is checked against the
      // reference algorithm run in float64 on the logits the GPU returned.
      const prompt = Int32Array.from(ref.cases[0]!.ids);
      const settings = [
        { temperature: 0.8, topK: 0, topP: 1 }, { temperature: 1.0, topK: 20, topP: 1 },
        { temperature: 0.7, topK: 0, topP: 0.9 }, { temperature: 1.3, topK: 50, topP: 0.8 },
      ];
      for (const s of settings) {
        for (let seed = 0; seed < 16; seed++) {
          const r = await engine.step({ seqs: [{ tokens: prompt, pos: 0, blockTable: bt, ...s, seed }], wantLogits: true });
          const want = referenceSample(r.logits, s, samplingUniform(BigInt(seed), prompt.length));
          agree += r.sampled[0] === want ? 1 : 0;
          distinct.add(r.sampled[0]);
          total++;
        }
      }
    } finally {
      engine.dispose();
    }
    results.pyTiny = rows;
    results.sampling = { agree, total, distinctTokens: distinct.size };
    recordResult('gpu-fixtures.json', results);
    for (const r of rows) expect(r.greedyMatch, r.text).toBeGreaterThanOrEqual(16);
    // Exact equality can differ only where float32 and float64 sums put the draw on either side of a
    // boundary; at least 95% must agree, and seeds must change the draw.
    expect(agree / total).toBeGreaterThanOrEqual(0.95);
    expect(distinct.size).toBeGreaterThan(1);
  });
});
