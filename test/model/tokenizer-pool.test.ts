// Tokenizer threads: the same ids, text and token texts as the tokenizer on the calling thread, an event loop
// that keeps turning while a long prompt is encoded, a replayed request's stop checker rebuilt
// off the loop in exactly the state pushing its tokens one by one gives, and waiting tasks taken
// most urgent first (a thread holds two at most, so a realtime prompt does not queue behind a flood's).
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { StopChecker } from '../../src/engine/stop-checker.js';
import type { StopUpdate } from '../../src/engine/stop-checker.js';
import { TokenizerPool } from '../../src/model/tokenizer-pool.js';
import { loadTokenizer } from '../../src/model/tokenizer.js';
import type { Tokenizer } from '../../src/model/tokenizer.js';
import { rng } from '../helpers/rng.js';

const PY_TINY = join(import.meta.dirname, '..', '..', 'models', 'py-tiny');


let pool: TokenizerPool;
let tok: Tokenizer;
beforeAll(async () => {
  tok = await loadTokenizer(PY_TINY);
  pool = await TokenizerPool.start(PY_TINY, 2);
});
afterAll(() => pool?.close());

describe('tokenizer threads', () => {
  it('encode and decode give what the tokenizer gives on this thread', async () => {
    for (const text of ['import os\n\n', 'def f(x):\n    return x * 2\n', 'e\u0301\u0302 👩‍👩‍👧 日本語', '']) {
      expect(await pool.encode(text)).toEqual(tok.encode(text));
      expect(await pool.encode(text, { addSpecialTokens: false })).toEqual(tok.encode(text, { addSpecialTokens: false }));
      const ids = tok.encode(text);
      expect(await pool.decode(ids)).toEqual(tok.decode(ids));
    }
  });

  it('token texts: each id as decoding it alone gives, none past the tokenizer\'s vocabulary', async () => {
    const texts = await pool.tokenTexts(tok.vocabSize + 3);
    expect(texts.size).toBe(tok.vocabSize + 3);
    for (let id = 0; id < tok.vocabSize; id++) expect(texts.text(id), `id ${id}`).toBe(tok.decode([id]));
    expect([tok.vocabSize, tok.vocabSize + 2, -1, 1e9].map((id) => texts.text(id))).toEqual(['', '', '', '']);
  });

  it('the event loop keeps turning while a long prompt is encoded', async () => {
    const text = 'def f(x):\n    return [x * i for i in range(10)]\n'.repeat(20_000);  // ~1 MB
    const t0 = performance.now();
    const inline = tok.encode(text);
    const inlineMs = performance.now() - t0;
    let longestGap = 0;
    let last = performance.now();
    const timer = setInterval(() => {
      const now = performance.now();
      longestGap = Math.max(longestGap, now - last);
      last = now;
    }, 2);
    const t1 = performance.now();
    const ids = await pool.encode(text);
    const poolMs = performance.now() - t1;
    clearInterval(timer);
    expect(ids).toEqual(inline);
    console.log(`1 MB prompt: ${inlineMs.toFixed(0)} ms on the event loop; in a tokenizer thread ${poolMs.toFixed(0)} ms, ` +
      `the loop's longest gap meanwhile ${longestGap.toFixed(1)} ms`);
    // Encoding on the loop would have blocked it for inlineMs; off the loop it only pauses for
    // copying the text and the ids across (a fraction of it).
    expect(longestGap).toBeLessThan(inlineMs / 4);
  });

  it('a replayed request goes on exactly as if its tokens had been pushed one by one', async () => {
    const vocab = tok.vocabSize;
    for (let seed = 1; seed <= 40; seed++) {
      const r = rng(seed);
      // Random ids (byte tokens that split characters included), stop strings made of decoded pieces.
      const ids = Array.from({ length: 20 + Math.floor(r() * 200) }, () => 3 + Math.floor(r() * (vocab - 3)));
      const pieces = ids.map((i) => tok.decode([i]));
      const stop = Array.from({ length: Math.floor(r() * 4) }, () => pieces[Math.floor(r() * pieces.length)]! + pieces[Math.floor(r() * pieces.length)]!)
        .filter((s) => s.length > 0 && !s.includes('\uFFFD'));
      const opts = { eosTokenIds: [], stop, maxTokens: 10_000, decode: (x: number[]) => tok.decode(x) };
      // Reference: push every token; find how far the sequence runs before a stop string ends it.
      const ref = new StopChecker(opts);
      const refUpdates: StopUpdate[] = [];
      for (const id of ids) {
        refUpdates.push(ref.push(id));
        if (ref.done) break;
      }
      const ran = refUpdates.length - (ref.done ? 1 : 0);
      const cut = Math.floor(r() * (ran + 1));  // tokens already streamed when the replica was lost
      const replayed = await pool.replay(ids.slice(0, cut));
      const restored = StopChecker.restore(opts, ids.slice(0, cut), replayed.text, replayed.decoder);
      const again: StopUpdate[] = [];
      for (const id of ids.slice(cut, refUpdates.length)) again.push(restored.push(id));
      expect(again, `seed ${seed} (cut at ${cut} of ${refUpdates.length})`).toEqual(refUpdates.slice(cut));
      expect(restored.text).toBe(ref.text);
      expect(restored.tokens).toEqual(ref.tokens);
    }
  });
});

describe('tokenizer threads under a flood', () => {
  // ~32 KB of text: tens of ms to encode, so the flood's tasks are still waiting when the others arrive.
  const long = Array.from({ length: 4000 }, (_, i) => `x${(i * 7919) % 1000} `).join('');

  it('waiting tasks go most urgent first and in arrival order within a priority; a thread holds at most two', async () => {
    const one = await TokenizerPool.start(PY_TINY, 1);
    try {
      const done: string[] = [];
      const track = (name: string, p: Promise<unknown>) => p.then(() => void done.push(name));
      const all = [
        ...Array.from({ length: 6 }, (_, i) => track(`batch${i}`, one.encode(long, { priority: 100 }))),
        track('standard', one.encode('def f(x):', { priority: 0 })),
        track('decode', one.decode([5, 6, 7], { priority: 0 })),
        track('realtime', one.encode('import os', { priority: -100 })),
      ];
      // The thread holds batch0 and batch1; the other seven wait in the pool.
      expect(one.backlog).toBe(7);
      await Promise.all(all);
      expect(done).toEqual(['batch0', 'batch1', 'realtime', 'standard', 'decode', 'batch2', 'batch3', 'batch4', 'batch5']);
      expect(one.backlog).toBe(0);
    } finally {
      await one.close();
    }
  });

  it('tasks still waiting when the pool closes are refused, not left pending', async () => {
    const one = await TokenizerPool.start(PY_TINY, 1);
    const results = Array.from({ length: 5 }, () => one.encode(long).then(() => 'done', (e: Error) => e.message));
    await one.close();
    const got = await Promise.all(results);
    expect(got.slice(2)).toEqual(['tokenizer pool closed', 'tokenizer pool closed', 'tokenizer pool closed']);
    await expect(one.encode('x')).rejects.toThrow('tokenizer pool closed');
  });
});
