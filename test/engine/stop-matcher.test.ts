// The stop-string matcher: same results as matching every stop string with indexOf (the
// definition), on seeded random texts, tokenizations and stop lists; and a cost per token that
// follows the characters a token adds, not the number of stop strings.
import { describe, expect, it } from 'vitest';

import { StopChecker, StopMatcher } from '../../src/engine/stop-checker.js';
import { IncrementalDecoder } from '../../src/model/tokenizer.js';
import type { StopUpdate } from '../../src/engine/stop-checker.js';
import { rng } from '../helpers/rng.js';


/** The definition: every stop string searched with indexOf after each token, hold-back by brute force. */
function reference(pieces: string[], stop: string[], maxTokens: number): StopUpdate[] {
  const out: StopUpdate[] = [];
  let full = '';
  let emitted = '';
  for (let n = 0; n < pieces.length; n++) {
    const before = full.length;
    full += pieces[n]!;
    let cut = -1;
    for (const s of stop) {
      const at = full.indexOf(s, Math.max(0, before - s.length + 1));
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0 || n + 1 >= maxTokens) {
      const text = cut >= 0 ? full.slice(0, cut) : full;
      out.push({ delta: text.length > emitted.length ? text.slice(emitted.length) : '', done: true, finishReason: cut >= 0 ? 'FINISH_REASON_STOP' : 'FINISH_REASON_LENGTH' });
      return out;
    }
    let hold = 0;
    for (const s of stop)
      for (let k = Math.min(s.length - 1, full.length); k > hold; k--)
        if (full.slice(full.length - k) === s.slice(0, k)) {
          hold = k;
          break;
        }
    const visible = full.slice(0, full.length - hold);
    const delta = visible.length > emitted.length ? visible.slice(emitted.length) : '';
    if (delta) emitted = visible;
    out.push({ delta, done: false });
  }
  return out;
}

function run(pieces: string[], stop: string[], maxTokens: number, keepText = true): { updates: StopUpdate[]; checker: StopChecker } {
  // Token i decodes to pieces[i]; a window decode is the concatenation (no merges at boundaries).
  const checker = new StopChecker({ eosTokenIds: [], stop, maxTokens, decode: (ids) => ids.map((i) => pieces[i]).join(''), keepText });
  const updates: StopUpdate[] = [];
  for (let i = 0; i < pieces.length; i++) {
    const u = checker.push(i);
    updates.push(u);
    if (u.done) break;
  }
  return { updates, checker };
}

/** As run(), but the first `k` tokens are restored (a failover replay), then pushed on from there. */
function resumed(pieces: string[], stop: string[], maxTokens: number, k: number, keepText: boolean): StopUpdate[] {
  const decode = (ids: number[]) => ids.map((i) => pieces[i]).join('');
  const ids = Array.from({ length: k }, (_, i) => i);
  const window = new IncrementalDecoder(decode);
  for (const i of ids) window.push(i);
  const checker = StopChecker.restore({ eosTokenIds: [], stop, maxTokens, decode, keepText }, ids, pieces.slice(0, k).join(''), window.state());
  const updates: StopUpdate[] = [];
  for (let i = k; i < pieces.length; i++) {
    const u = checker.push(i);
    updates.push(u);
    if (u.done) break;
  }
  return updates;
}

describe('stop strings (Aho-Corasick)', () => {
  it('agrees with indexOf matching on 3,000 seeded random cases (overlapping, nested and repeated stop strings)', () => {
    const alphabet = ['a', 'b', 'c', 'ab', ' ', 'é', '😀'];
    for (let seed = 1; seed <= 3000; seed++) {
      const r = rng(seed);
      const pick = () => alphabet[Math.floor(r() * alphabet.length)]!;
      const word = (max: number) => Array.from({ length: 1 + Math.floor(r() * max) }, pick).join('');
      const stop = Array.from({ length: Math.floor(r() * 6) }, () => word(4));
      const pieces = Array.from({ length: 1 + Math.floor(r() * 40) }, () => word(3));
      const maxTokens = 1 + Math.floor(r() * 50);
      const want = reference(pieces, stop, maxTokens);
      const what = `seed ${seed}: stop ${JSON.stringify(stop)} pieces ${JSON.stringify(pieces)}`;
      const kept = run(pieces, stop, maxTokens);
      expect(kept.updates, what).toEqual(want);
      // The text is the deltas joined; a checker that keeps no text (a replica's driver) streams the same deltas.
      if (kept.checker.done) expect(kept.checker.text, what).toBe(want.map((u) => u.delta).join(''));
      const lean = run(pieces, stop, maxTokens, false);
      expect(lean.updates, what).toEqual(want);
      expect(() => lean.checker.text).toThrow(/not kept/);
      // Restored after k tokens that did not end it (a replay), either way it goes on as the uninterrupted run.
      const ended = want.findIndex((u) => u.done);
      const k = Math.floor(r() * ((ended < 0 ? want.length : ended) + 1));
      for (const keepText of [true, false]) expect(resumed(pieces, stop, maxTokens, k, keepText), `${what} restored at ${k}`).toEqual(want.slice(k));
    }
  });

  it('picks the earliest-starting stop string even when a shorter one ends first', () => {
    const a = run(['x', 'abcd', 'z'], ['c', 'abcd'], 10);
    expect([a.checker.text, a.checker.finishReason, a.updates.length]).toEqual(['x', 'FINISH_REASON_STOP', 2]);
    const b = run(['xab', 'c'], ['bc', 'abc'], 10);
    expect([b.checker.text, b.checker.finishReason, b.updates.length]).toEqual(['x', 'FINISH_REASON_STOP', 2]);
    const m = new StopMatcher(['he', 'she', 'his', 'hers']);
    expect(m.feed('ushers', 0)).toBe(1);
    expect(new StopMatcher(['', 'q']).empty).toBe(false);
    expect(new StopMatcher(['']).empty).toBe(true);
  });

  it('10,000 stop strings: the work per token follows the characters the token adds, not the stop strings', () => {
    const r = rng(42);
    const letters = 'abcdefghijklmnopqrstuvwxyz ';
    const word = (n: number) => Array.from({ length: n }, () => letters[Math.floor(r() * letters.length)]).join('');
    // 10,000 distinct stop strings of 8-40 characters (~240,000 in total) that the text never contains.
    const stop = Array.from({ length: 10_000 }, (_, i) => `${word(7 + (i % 33))}#${i}`);
    const pieces = Array.from({ length: 2000 }, () => word(1 + Math.floor(r() * 6)));
    const chars = pieces.reduce((n, p) => n + p.length, 0);
    const t0 = performance.now();
    const built = new StopMatcher(stop);
    const buildMs = performance.now() - t0;
    expect(built.pending).toBe(0);
    const t1 = performance.now();
    const { updates, checker } = run(pieces, stop, 10_000);
    const ms = performance.now() - t1 - buildMs;
    expect(updates).toHaveLength(2000);
    expect(updates.every((u) => !u.done)).toBe(true);
    // Each character costs one goto step plus failure steps that never exceed the goto steps in total.
    expect(checker.matchSteps).toBeLessThanOrEqual(2 * chars);
    // The same text with a single stop string takes as many steps to within that same bound.
    const one = run(pieces, [stop[0]!], 10_000).checker.matchSteps;
    expect(one).toBeLessThanOrEqual(2 * chars);
    console.log(`10,000 stop strings: ${(checker.matchSteps / pieces.length).toFixed(2)} automaton steps per token ` +
      `(1 stop string: ${(one / pieces.length).toFixed(2)}; ${chars} characters in 2000 tokens); ` +
      `automaton built in ${buildMs.toFixed(0)} ms, ~${(ms * 1000 / 2000).toFixed(1)} µs per token with the decoder`);
  });

  it('a decoder tail that stays U+FFFD (invalid bytes) is emitted after a few tokens instead of growing without bound', async () => {
    const { IncrementalDecoder } = await import('../../src/model/tokenizer.js');
    let calls = 0;
    let longest = 0;
    const d = new IncrementalDecoder((ids) => {
      calls++;
      longest = Math.max(longest, ids.length);
      return '\uFFFD'.repeat(ids.length);
    });
    let out = '';
    for (let i = 0; i < 1000; i++) out += d.push(i);
    expect(out.length).toBeGreaterThan(990);
    expect(longest).toBeLessThanOrEqual(16);
    expect(calls).toBe(2000);
  });
});
