// The demo model end to end in one process: tokenizer + engine reproduce reference.json, seeded
// sampling is repeatable, stop strings cut the text.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { Engine, generate, generateAll } from '../../src/engine/index.js';
import type { TokenizerLike } from '../../src/engine/index.js';
import { loadTokenizer } from '../../src/model/index.js';
import { PY_TINY, reference } from './helpers.js';
import type { PyTinyCase } from './helpers.js';

const { cases } = reference<PyTinyCase>(PY_TINY);
let engine: Engine;
let tokenizer: TokenizerLike;

beforeAll(async () => {
  [engine, tokenizer] = await Promise.all([Engine.load(PY_TINY, { device: 'cpu' }), loadTokenizer(PY_TINY)]);
});
afterAll(() => engine?.dispose());

describe('py-tiny greedy', () => {
  it('reproduces reference.json greedy_48 for every prompt (tokenized here, BOS included)', async () => {
    const results = await generateAll(engine, tokenizer, cases.map((c) => ({ prompt: c.text, maxTokens: 48 })));
    for (const [i, c] of cases.entries()) {
      expect(results[i]!.promptIds).toEqual(c.ids);
      expect(results[i]!.tokenIds).toEqual(c.greedy_48);
      expect(results[i]!.text).toBe(c.greedy_48_text);
      expect(results[i]!.finishReason).toBe('FINISH_REASON_LENGTH');
    }
  });

  it('streams deltas that add up to the final text', async () => {
    let streamed = '';
    let final = '';
    for await (const ev of generate(engine, tokenizer, [{ prompt: cases[2]!.text, maxTokens: 48 }])) {
      streamed += ev.delta;
      if (ev.type === 'done') final = ev.result.text;
    }
    expect(streamed).toBe(final);
    expect(final).toBe(cases[2]!.greedy_48_text);
  });
});

describe('py-tiny sampling', () => {
  const sample = (seed: number | bigint, extra = {}) =>
    generateAll(engine, tokenizer, [{ prompt: cases[0]!.text, maxTokens: 32, temperature: 1, topP: 0.95, seed, ...extra }])
      .then(([r]) => r!.tokenIds);

  it('same seed → same tokens, run after run and alone or batched', async () => {
    const a = await sample(1234);
    expect(await sample(1234)).toEqual(a);
    const batched = await generateAll(engine, tokenizer, [
      { prompt: cases[3]!.text, maxTokens: 32, temperature: 1, topP: 0.95, seed: 7 },
      { prompt: cases[0]!.text, maxTokens: 32, temperature: 1, topP: 0.95, seed: 1234 },
    ]);
    expect(batched[1]!.tokenIds).toEqual(a);
    expect(await sample(2n ** 64n - 1n)).toEqual(await sample(2n ** 64n - 1n));
  });

  it('different seeds give different tokens', async () => {
    const outs = await Promise.all([1, 2, 3, 4].map(async (s) => (await sample(s)).join(',')));
    expect(new Set(outs).size).toBeGreaterThan(1);
    expect(outs[0]).not.toBe(outs[1]);
  });

  it('top-k 1 is greedy whatever the temperature and seed', async () => {
    expect(await sample(99, { topK: 1, temperature: 5 })).toEqual(cases[0]!.greedy_48.slice(0, 32));
  });

  it('rejects bad sampling parameters naming the field', async () => {
    await expect(sample(1, { temperature: -1 })).rejects.toThrow(/temperature/);
    await expect(sample(1, { topP: 0 })).rejects.toThrow(/topP/);
    await expect(sample(1, { topK: 1.5 })).rejects.toThrow(/topK/);
    await expect(sample(-1)).rejects.toThrow(/seed/);
  });
});

describe('py-tiny stop strings and EOS', () => {
  it('stops at the first stop string and leaves it out of the text', async () => {
    const c = cases[2]!; // greedy text: '\nclass Stack:\n    def __init__(self, stack):\n ...'
    const stop = '__init__';
    const [r] = await generateAll(engine, tokenizer, [{ prompt: c.text, maxTokens: 48, stop: [stop] }]);
    expect(r!.finishReason).toBe('FINISH_REASON_STOP');
    expect(r!.text).toBe(c.greedy_48_text.slice(0, c.greedy_48_text.indexOf(stop)));
    expect(r!.tokenIds).toEqual(c.greedy_48.slice(0, r!.tokenIds.length));
    expect(r!.tokenIds.length).toBeLessThan(48);
  });

  it('streams nothing past the stop string even when it spans tokens', async () => {
    const c = cases[1]!;
    const stop = 'module_filename';
    let streamed = '';
    for await (const ev of generate(engine, tokenizer, [{ prompt: c.text, maxTokens: 48, stop: [stop] }])) streamed += ev.delta;
    expect(streamed).toBe(c.greedy_48_text.slice(0, c.greedy_48_text.indexOf(stop)));
  });

  it('finishes on an EOS id', async () => {
    const c = cases[0]!;
    const eosAt: TokenizerLike = { encode: (t) => tokenizer.encode(t), decode: (ids) => tokenizer.decode(ids), eosTokenIds: [c.greedy_48[5]!] };
    const [r] = await generateAll(engine, eosAt, [{ prompt: c.text, maxTokens: 48 }]);
    expect(r!.finishReason).toBe('FINISH_REASON_STOP');
    expect(r!.tokenIds).toEqual(c.greedy_48.slice(0, c.greedy_48.indexOf(c.greedy_48[5]!)));
  });
});

describe('py-tiny with a small KV cache', () => {
  it('admits requests as blocks free up and still matches the reference', async () => {
    const small = await Engine.load(PY_TINY, { device: 'cpu', kvBlocks: 7 });
    try {
      // Each request reserves prompt + 24 tokens (3 blocks of 16): two run at a time.
      const results = await generateAll(small, tokenizer, cases.map((c) => ({ prompt: c.text, maxTokens: 24 })));
      for (const [i, c] of cases.entries()) expect(results[i]!.tokenIds).toEqual(c.greedy_48.slice(0, 24));
      await expect(generateAll(small, tokenizer, [{ prompt: cases[0]!.text, maxTokens: 200 }]))
        .rejects.toThrow(/request 0: needs 14 KV blocks, the cache has 7/);
    } finally {
      small.dispose();
    }
  });
});
