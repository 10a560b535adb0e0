// Request limits: the prompt-bytes bound never refuses a prompt that fits the context (checked
// against the real tokenizers on adversarial text), and each limit is refused naming its field and flag.
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { loadTokenizer } from '../../src/model/tokenizer.js';
import { DEFAULT_REQUEST_LIMITS, LimitError, checkQueueFits, checkRequestLimits, defaultPromptsLimit, promptBytesLimit } from '../../src/protocol/limits.js';
import { rng } from '../helpers/rng.js';

const root = join(import.meta.dirname, '..', '..');


describe('prompt bytes before tokenizing', () => {
  it.each(['models/py-tiny', 'test/fixtures/hf-reference/tiny-llama-gqa-f32'])('%s: no text is longer than its tokens × the longest token', async (dir) => {
    const tok = await loadTokenizer(join(root, dir));
    // Pieces an attacker (or a normal user) might repeat: whitespace runs, combining marks,
    // emoji with joiners, code, special tokens typed out, and the vocabulary's own longest entries.
    const longest = [...Array(tok.vocabSize).keys()].map((i) => tok.decode([i])).sort((a, b) => b.length - a.length).slice(0, 20);
    const pieces = [' ', '    ', '\n', '\t', 'e\u0301', '\u0301', '\u0301\u0302\u0303', '👩‍👩‍👧', '日本語', 'def f(x):\n    return x\n',
      '</s>', '<s>', '\u0000', '\uFFFD', 'ﷺ', ...longest];
    for (let seed = 1; seed <= 200; seed++) {
      const r = rng(seed);
      const text = Array.from({ length: 1 + Math.floor(r() * 400) }, () => pieces[Math.floor(r() * pieces.length)]).join('');
      const n = tok.encode(text).length;
      expect(Buffer.byteLength(text), `seed ${seed}`).toBeLessThanOrEqual(n * tok.maxTokenBytes);
    }
    expect(tok.maxTokenBytes).toBeGreaterThanOrEqual(Math.max(...longest.map((s) => Buffer.byteLength(s))));
  });

  it('a 4 MB prompt of combining marks is refused without tokenizing, in well under a millisecond per MB', async () => {
    const tok = await loadTokenizer(join(root, 'models/py-tiny'));
    const limit = promptBytesLimit(2048, tok.maxTokenBytes);
    const prompt = 'a' + '\u0301'.repeat(2 * 1024 * 1024);
    let err: unknown;
    const t0 = performance.now();
    try {
      checkRequestLimits({ prompt }, DEFAULT_REQUEST_LIMITS, limit);
    } catch (e) {
      err = e;
    }
    const ms = performance.now() - t0;
    expect(err).toBeInstanceOf(LimitError);
    expect((err as LimitError).field).toBe('prompt');
    expect((err as Error).message).toBe(`prompt: is at least ${prompt.length} bytes, more than the ${limit} bytes the model's context can hold ` +
      '(context length × the longest token of the vocabulary); it was not tokenized');
    expect(ms).toBeLessThan(50);
    // Between the bounds (few characters, many bytes each) the bytes are counted.
    const wide = '日'.repeat(Math.floor(limit / 2));
    expect(() => checkRequestLimits({ prompt: wide }, DEFAULT_REQUEST_LIMITS, limit)).toThrow(`prompt: is ${3 * wide.length} bytes, more than`);
    expect(() => checkRequestLimits({ prompt: '日'.repeat(Math.floor(limit / 3)) }, DEFAULT_REQUEST_LIMITS, limit)).not.toThrow();
    console.log(`4 MB prompt refused in ${ms.toFixed(2)} ms (bound ${limit} bytes)`);
  });
});

describe('limits', () => {
  const L = DEFAULT_REQUEST_LIMITS;
  const refusal = (r: Parameters<typeof checkRequestLimits>[0]) => {
    try {
      checkRequestLimits(r, L, 1 << 30);
      return null;
    } catch (e) {
      return (e as Error).message;
    }
  };
  it('names the field and the flag that raises it', () => {
    expect(refusal({ stop: Array(16).fill('x'), n: 16, logprobs: 20 })).toBeNull();
    expect(refusal({ stop: Array(17).fill('x') })).toBe('stop: 17 stop strings, more than 16 (--max-stop-strings)');
    expect(refusal({ stop: ['x'.repeat(4097)] })).toBe('stop: 4097 characters of stop strings in total, more than 4096 (--max-stop-chars)');
    expect(refusal({ stop: Array(10_000).fill('stop') })).toBe('stop: 10000 stop strings, more than 16 (--max-stop-strings)');
    expect(refusal({ n: 17 })).toBe('n: is 17, more than 16 (--max-n)');
    expect(refusal({ logprobs: 21 })).toBe('logprobs: is 21, more than 20 (--max-logprobs)');
    expect(refusal({ prompts: 256 })).toBeNull();
    expect(refusal({ prompts: 16, n: 16 })).toBeNull();
    expect(refusal({ prompts: 257 })).toBe('prompt: 257 prompts, more than 256 (--max-prompts)');
    expect(refusal({ prompts: 17, n: 16 })).toBe('n: 17 prompts × n 16 = 272 sequences, more than 256 (--max-prompts)');
  });

  it('--max-prompts fits --max-queue: by default it follows a smaller queue, given above it the launch is refused', () => {
    expect(defaultPromptsLimit(1024)).toBe(256);
    expect(defaultPromptsLimit(8)).toBe(8);
    expect(() => checkQueueFits({ ...L, prompts: 256 }, 256)).not.toThrow();
    expect(() => checkQueueFits({ ...L, prompts: 2048 }, 1024)).toThrow(
      '--max-prompts 2048 is more than --max-queue 1024: a request of that many sequences could never be admitted (lower --max-prompts or raise --max-queue)');
  });
});
