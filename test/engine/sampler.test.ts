// The native sampler (CPU): logit bias, repetition / presence / frequency penalties, min-p, top-k,
// top-p and logprobs, alone on given logits (addon.sampleCheck runs the same functions a step
// runs) and inside engine steps, where the penalties' token counts are built from what each step
// feeds. transformers' own numbers for the same logits: sampler-hf.test.ts.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { Engine } from '../../src/engine/index.js';
import { loadAddon } from '../../src/native/addon.js';
import type { SampleCheckRow, StepSeq } from '../../src/native/addon.js';
import { PY_TINY } from './helpers.js';

const addon = loadAddon();
const LOGITS = Float32Array.from([1, 2, -1, 0.5, 3, -2, 0, 1.5, 2.5, -0.5]);
const V = LOGITS.length;

function check(rows: SampleCheckRow[]) {
  return addon.sampleCheck('cpu', V, rows);
}

function logSoftmax(z: ArrayLike<number>): number[] {
  const m = Math.max(...Array.from(z));
  const lse = m + Math.log(Array.from(z).reduce((s, x) => s + Math.exp(x - m), 0));
  return Array.from(z, (x) => x - lse);
}

describe('bias and penalties', () => {
  it('apply in order: bias, repetition (prompt and output, / when positive, * when negative), frequency and presence (output only)', () => {
    const [r] = check([{
      logits: LOGITS, temperature: 0,
      sampling: { repetitionPenalty: 1.5, presencePenalty: 0.5, frequencyPenalty: 0.25, logitBiasIds: Int32Array.of(2, 5), logitBiasValues: Float32Array.of(4, 1) },
      promptIds: Int32Array.of(4, 1, 5), outputIds: Int32Array.of(8, 8, 3, 5),
    }]);
    const f = Math.fround;
    const want = Array.from(LOGITS);
    want[2] = 3;                                         // biased, never seen
    want[4] = f(3 / 1.5);                                // prompt: repetition only
    want[1] = f(2 / 1.5);
    want[8] = f(f(f(2.5 / 1.5) - 0.25 * 2) - 0.5);       // output twice
    want[3] = f(f(f(0.5 / 1.5) - 0.25) - 0.5);
    want[5] = f(f(f((-2 + 1) * 1.5) - 0.25) - 0.5);      // biased, negative: multiplied; prompt and output
    expect(Array.from(r!.penalized)).toEqual(want.map(f));
    expect(r!.sampled).toBe(2);
  });

  it('leaves the logits alone when no control is set', () => {
    const [r] = check([{ logits: LOGITS, temperature: 0, promptIds: Int32Array.of(1, 2), outputIds: Int32Array.of(4) }]);
    expect(Array.from(r!.penalized)).toEqual(Array.from(LOGITS));
    expect(r!.sampled).toBe(4);
  });

  it('rejects a logit bias outside the vocabulary instead of writing past the row', () => {
    expect(() => check([{ logits: LOGITS, sampling: { logitBiasIds: Int32Array.of(V), logitBiasValues: Float32Array.of(1) } }]))
      .toThrow(/logit bias token 10 is outside \[0, 10\)/);
    expect(() => check([{ logits: LOGITS, sampling: { logprobs: 21 } }])).toThrow(/logprobs must be in \[-1, 20\]/);
  });
});

describe('cuts', () => {
  // Sorted by value: 4 (3), 8 (2.5), 1 (2), 7 (1.5), 0 (1), 3 (0.5), 6 (0), 9 (-0.5), 2 (-1), 5 (-2).
  const probsOf = (ids: number[], t = 1) => {
    const w = ids.map((i) => Math.exp((LOGITS[i]! - 3) / t));
    const s = w.reduce((a, b) => a + b, 0);
    return w.map((x) => x / s);
  };

  it('min-p keeps the tokens with p >= min_p * p_max, renormalized', () => {
    const [r] = check([{ logits: LOGITS, temperature: 1, sampling: { minP: 0.3 } }]);
    // exp(-0.5) = .61, exp(-1) = .37, exp(-1.5) = .22 < .3
    expect(Array.from(r!.kept!.ids)).toEqual([4, 8, 1]);
    Array.from(r!.kept!.probs).forEach((p, i) => expect(p).toBeCloseTo(probsOf([4, 8, 1])[i]!, 12));
  });

  it('top-k, then top-p, then min-p (each a prefix of the sorted candidates)', () => {
    const [a, b] = check([
      { logits: LOGITS, temperature: 0.5, topK: 6, topP: 0.99 },
      { logits: LOGITS, temperature: 0.5, topK: 6, topP: 0.99, sampling: { minP: 0.04 } },
    ]);
    // T 0.5: weights exp(2 * (z - 3)): 1, .37, .14, .05, .018, .0067 (top 6); total 1.58; .99 of it needs 5.
    expect(Array.from(a!.kept!.ids)).toEqual([4, 8, 1, 7, 0]);
    expect(Array.from(b!.kept!.ids)).toEqual([4, 8, 1, 7]);
    Array.from(b!.kept!.probs).forEach((p, i) => expect(p).toBeCloseTo(probsOf([4, 8, 1, 7], 0.5)[i]!, 12));
  });

  it('draws the same token for the same seed and position, and every kept token for some seed', () => {
    const row = { logits: LOGITS, temperature: 1, topK: 3 };
    const seen = new Set<number>();
    for (let seed = 0n; seed < 200n; seed++) {
      const [x, y] = check([{ ...row, seed, position: 5 }, { ...row, seed, position: 5 }]);
      expect(x!.sampled).toBe(y!.sampled);
      seen.add(x!.sampled);
    }
    expect([...seen].sort()).toEqual([1, 4, 8]);
  });
});

describe('logprobs', () => {
  it('are the log-softmax of the penalized logits, before temperature; top ones best first', () => {
    const sampling = { logprobs: 4, repetitionPenalty: 2, logitBiasIds: Int32Array.of(9), logitBiasValues: Float32Array.of(3) };
    const [r] = check([{ logits: LOGITS, temperature: 0.3, topK: 2, seed: 3n, sampling, promptIds: Int32Array.of(4) }]);
    const lp = logSoftmax(r!.penalized);
    // 4 -> 1.5 (penalized), 9 -> 2.5 (biased): 8 and 9 tie at 2.5, 4 and 7 at 1.5; lowest id first.
    expect(Array.from(r!.topIds.slice(0, 5))).toEqual([8, 9, 1, 4, -1]);
    Array.from(r!.topIds.slice(0, 4)).forEach((id, i) => expect(r!.topLogprobs[i]).toBeCloseTo(lp[id]!, 5));
    expect(r!.topIds[4]).toBe(-1);
    expect(r!.sampledLogprob).toBeCloseTo(lp[r!.sampled]!, 5);
  });
});

describe('in engine steps (py-tiny)', () => {
  let engine: Engine;
  beforeAll(async () => {
    engine = await Engine.load(PY_TINY, { device: 'cpu', kvBlocks: 64 });
  });
  afterAll(() => engine?.dispose());

  const prompt = [0, 333, 285, 597, 263, 1220, 1525, 9, 79, 332, 200];
  const table = (first: number) => Int32Array.from({ length: 8 }, (_, i) => first + i);

  async function decode(tokens: number[], n: number, sampling: StepSeq['sampling'], chunks: number[] = [tokens.length]) {
    const bt = table(0);
    let pos = 0;
    let res;
    for (const c of chunks) {
      res = await engine.step({ seqs: [{ tokens: Int32Array.from(tokens.slice(pos, pos + c)), pos, blockTable: bt, temperature: 0, sampling, sample: pos + c === tokens.length }] });
      pos += c;
    }
    const out: number[] = [res!.sampled[0]!];
    const lps: number[] = [];
    if (res!.logprobs) lps.push(res!.logprobs.sampled[0]!);
    for (let i = 1; i < n; i++) {
      res = await engine.step({ seqs: [{ tokens: Int32Array.of(out[i - 1]!), pos: pos++, blockTable: bt, temperature: 0, sampling }] });
      out.push(res.sampled[0]!);
      if (res.logprobs) lps.push(res.logprobs.sampled[0]!);
    }
    return { out, lps };
  }

  it('a repetition penalty changes greedy output, and a replay (prompt and output fed again from 0) continues identically', async () => {
    const plain = (await decode(prompt, 24, undefined)).out;
    const sampling = { repetitionPenalty: 1.8, frequencyPenalty: 0.3, promptLen: prompt.length };
    const pen = (await decode(prompt, 24, sampling, [4, 4, 3])).out;  // chunked prefill
    expect(pen).not.toEqual(plain);
    // Replay after 10 tokens: one prefill of prompt + 10 outputs, then 14 more decodes.
    const again = (await decode([...prompt, ...pen.slice(0, 10)], 14, sampling)).out;
    expect(again).toEqual(pen.slice(10));
  });

  it('returns logprobs only for sequences that ask, and the sampled one is the greedy maximum', async () => {
    const bt0 = table(0), bt1 = table(8);
    const res = await engine.step({ seqs: [
      { tokens: Int32Array.from(prompt), pos: 0, blockTable: bt0, temperature: 0, sampling: { logprobs: 5 } },
      { tokens: Int32Array.from(prompt), pos: 0, blockTable: bt1, temperature: 0 },
    ], wantLogits: true });
    const lp = res.logprobs!;
    expect(lp.sampled.length).toBe(2);
    expect(Number.isNaN(lp.sampled[1])).toBe(true);
    expect(lp.topIds[0]).toBe(res.sampled[0]);
    expect(lp.sampled[0]).toBe(lp.top[0]);
    const ref = logSoftmax(res.logits!.subarray(0, 2048));
    for (let j = 0; j < 5; j++) expect(lp.top[j]).toBeCloseTo(ref[lp.topIds[j]!]!, 4);
    expect(Array.from(lp.topIds.subarray(5, 20)).every((x) => x === -1)).toBe(true);
    expect(Array.from(lp.topIds.subarray(20, 40)).every((x) => x === -1)).toBe(true);
  });

  it('fails a penalized sequence whose counts this engine never saw (a position it did not feed)', async () => {
    await expect(engine.step({ seqs: [{ tokens: Int32Array.of(5), pos: 3, blockTable: table(40), temperature: 0, sampling: { repetitionPenalty: 1.2 } }] }))
      .rejects.toThrow(/penalty counts end at position 0 but the step feeds position 3/);
  });
});
