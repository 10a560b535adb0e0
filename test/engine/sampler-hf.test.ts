// The native sampler against transformers on the same inputs (test/fixtures/chat-templates/expected,
// made by make_expected.py with transformers' logits processors and generate()): logit bias and
// repetition / presence / frequency penalties, the log-softmax after them, and the distribution
// left by temperature, top-k, top-p and min-p; py-tiny greedy continuations under
// repetition_penalty and sequence_bias through the engine.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { Engine } from '../../src/engine/index.js';
import { loadAddon } from '../../src/native/addon.js';
import type { SampleCheckRow } from '../../src/native/addon.js';
import { PY_TINY, root } from './helpers.js';

const EXPECTED = join(root, 'test', 'fixtures', 'chat-templates', 'expected');
const have = (f: string) => existsSync(join(EXPECTED, f));

interface Params {
  temperature?: number; top_k?: number; top_p?: number; min_p?: number; repetition_penalty?: number;
  presence_penalty?: number; frequency_penalty?: number; logit_bias?: Record<string, number>;
}

function row(p: Params, logits: number[], prompt: number[], output: number[]): SampleCheckRow {
  const bias = Object.entries(p.logit_bias ?? {});
  return {
    logits: Float32Array.from(logits), temperature: p.temperature ?? 1, topK: p.top_k ?? 0, topP: p.top_p ?? 1,
    promptIds: Int32Array.from(prompt), outputIds: Int32Array.from(output), seed: 1n,
    sampling: {
      minP: p.min_p ?? 0, repetitionPenalty: p.repetition_penalty ?? 1, presencePenalty: p.presence_penalty ?? 0,
      frequencyPenalty: p.frequency_penalty ?? 0, logprobs: 20,
      ...(bias.length ? { logitBiasIds: Int32Array.from(bias, ([k]) => Number(k)), logitBiasValues: Float32Array.from(bias, ([, v]) => v) } : {}),
    },
  };
}

describe.skipIf(!have('sampling_expected.json'))('penalties and warpers on fixture logits, against transformers', () => {
  const ref = have('sampling_expected.json') ? JSON.parse(readFileSync(join(EXPECTED, 'sampling_expected.json'), 'utf8')) as {
    vocab: number; cases: { params: Params; logits: number[]; prompt_ids: number[]; output_ids: number[]; penalized: number[];
      logprobs: number[]; greedy: number; probs: number[] }[] } : { vocab: 0, cases: [] };
  const addon = loadAddon();

  for (const [i, c] of ref.cases.entries()) {
    it(`case ${i}: ${JSON.stringify(c.params)}`, () => {
      const [r] = addon.sampleCheck('cpu', ref.vocab, [row(c.params, c.logits, c.prompt_ids, c.output_ids)]);
      // Penalized logits: the same float32 operations in the same order.
      Array.from(r!.penalized).forEach((v, t) => expect(v, `token ${t}`).toBeCloseTo(c.penalized[t]!, 5));
      // Logprobs of the top 20 (log-softmax of the penalized logits).
      for (let j = 0; j < 20; j++) expect(r!.topLogprobs[j]).toBeCloseTo(c.logprobs[r!.topIds[j]!]!, 4);
      const best = [...c.logprobs.keys()].sort((a, b) => c.logprobs[b]! - c.logprobs[a]! || a - b).slice(0, 20);
      expect(Array.from(r!.topIds)).toEqual(best);
      // The final distribution: the same tokens kept, the same probabilities.
      const kept = new Map(Array.from(r!.kept!.ids, (id, j) => [id, r!.kept!.probs[j]!]));
      const want = c.probs.flatMap((p, t) => (p > 0 ? [t] : []));
      expect([...kept.keys()].sort((a, b) => a - b)).toEqual(want);
      for (const t of want) expect(kept.get(t)!).toBeCloseTo(c.probs[t]!, 5);
      const [g] = addon.sampleCheck('cpu', ref.vocab, [{ ...row(c.params, c.logits, c.prompt_ids, c.output_ids), temperature: 0 }]);
      expect(g!.sampled).toBe(c.greedy);
    });
  }
});

describe.skipIf(!have('generate_expected.json'))('py-tiny greedy under repetition_penalty and logit bias, against generate()', () => {
  const ref = have('generate_expected.json') ? JSON.parse(readFileSync(join(EXPECTED, 'generate_expected.json'), 'utf8')) as {
    cases: { params: { repetition_penalty: number; logit_bias?: Record<string, number> }; prompt_ids: number[]; greedy_32: number[] }[] } : { cases: [] };
  let engine: Engine;
  beforeAll(async () => {
    engine = await Engine.load(PY_TINY, { device: 'cpu' });
  });
  afterAll(() => engine?.dispose());

  it('every case continues as transformers does', async () => {
    for (const c of ref.cases) {
      const bias = Object.entries(c.params.logit_bias ?? {});
      const bt = Int32Array.from({ length: 4 }, (_, b) => b);
      let pos = 0;
      let feed = c.prompt_ids;
      const out: number[] = [];
      const sampling = {
        repetitionPenalty: c.params.repetition_penalty, promptLen: c.prompt_ids.length,
        ...(bias.length ? { logitBiasIds: Int32Array.from(bias, ([k]) => Number(k)), logitBiasValues: Float32Array.from(bias, ([, v]) => v) } : {}),
      };
      while (out.length < c.greedy_32.length) {
        const r = await engine.step({ seqs: [{ tokens: Int32Array.from(feed), pos, blockTable: bt, temperature: 0, sampling }] });
        pos += feed.length;
        out.push(r.sampled[0]!);
        feed = [r.sampled[0]!];
      }
      expect(out).toEqual(c.greedy_32);
    }
  });
});
