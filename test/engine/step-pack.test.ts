// The step request as it crosses into the addon (src/native/step-pack.ts): the packed layout, the
// per-field checks and messages, the seeds and sampling extras the addon still reads from the
// sequence objects, and the addon's refusal of packed buffers whose counts do not add up.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { BlockAllocator, Engine } from '../../src/engine/index.js';
import { FLAG_ALL_LOGITS, FLAG_EXTRAS, FLAG_NATIVE_SEED, FLAG_SAMPLE, HEAD_INTS, REQ_CHAINED, SEQ_INTS, packStep } from '../../src/native/step-pack.js';
import type { StepResult, StepSeq } from '../../src/native/addon.js';
import { F32 } from './helpers.js';

type Raw = { stepPacked(ints: Int32Array, floats: Float32Array, seqs: unknown, hiddenIn?: Uint8Array, wantLogits?: boolean): { result: Promise<StepResult> } };

describe('packStep', () => {
  it('lays out the header, the floats, then each sequence\'s tokens and tables', () => {
    const { ints, floats } = packStep({ seqs: [
      { tokens: Int32Array.of(7, 8, 9), pos: 4, blockTable: Int32Array.of(2), temperature: 0.5, topK: 3.9, topP: 0.25, seed: 2 ** 53 - 1 },
      { tokens: Int32Array.of(6), pos: 12, blockTable: Int32Array.of(0, 1), windowBlockTable: Int32Array.of(5), sample: false, allLogits: true,
        seed: 2n ** 64n - 1n, sampling: { logprobs: 2 } },
    ] });
    const h = HEAD_INTS + 2 * SEQ_INTS;
    expect(Array.from(ints.subarray(0, h))).toEqual([2, 0,
      3, 4, 1, -1, 3, FLAG_SAMPLE, -1, 2 ** 21 - 1, -1,
      1, 12, 2, 1, 0, FLAG_ALL_LOGITS | FLAG_EXTRAS, -1, -1, -1]);
    expect(Array.from(ints.subarray(h))).toEqual([7, 8, 9, 2, 6, 0, 1, 5]);
    expect(Array.from(floats)).toEqual([0.5, 0.25, 0, 1]);
  });

  it('marks a request with tokenFrom chained and packs each sequence\'s index, or refuses it naming the entry', () => {
    const one = (n: number) => ({ tokens: Int32Array.of(n), pos: 0, blockTable: Int32Array.of(0) });
    const { ints } = packStep({ seqs: [one(5), one(6)], tokenFrom: Int32Array.of(-1, 3) });
    expect(ints[1]).toBe(REQ_CHAINED);
    expect([ints[HEAD_INTS + 8], ints[HEAD_INTS + SEQ_INTS + 8]]).toEqual([-1, 3]);
    expect(packStep({ seqs: [one(5)], tokenFrom: Int32Array.of(-1) }).ints[1]).toBe(REQ_CHAINED);
    expect(() => packStep({ seqs: [one(5)], tokenFrom: [0] as never })).toThrow(/^step: tokenFrom must be an Int32Array$/);
    expect(() => packStep({ seqs: [one(5)], tokenFrom: Int32Array.of(0, 1) })).toThrow(/^step: tokenFrom has 2 entries for 1 sequences$/);
    expect(() => packStep({ seqs: [one(5), one(6)], tokenFrom: Int32Array.of(0, -2) })).toThrow(/^step: tokenFrom\[1\] is -2 for 1 tokens/);
    expect(() => packStep({ seqs: [{ ...one(5), tokens: new Int32Array(0) }], tokenFrom: Int32Array.of(0) })).toThrow(/^step: tokenFrom\[0\] is 0 for 0 tokens/);
  });

  it('packs exactly the seeds ParseSeed takes and leaves the rest to it', () => {
    const flags = (seed: unknown) => packStep({ seqs: [{ tokens: Int32Array.of(1), pos: 0, blockTable: Int32Array.of(0), seed } as StepSeq] }).ints[HEAD_INTS + 5]!;
    for (const ok of [undefined, null, 0, -0, 1, 2 ** 32, 2 ** 53 - 1, 0n, 2n ** 64n - 1n]) expect(flags(ok) & FLAG_NATIVE_SEED).toBe(0);
    for (const bad of [-1, 1.5, 2 ** 53, NaN, Infinity, -1n, 2n ** 64n, '5', {}]) expect(flags(bad) & FLAG_NATIVE_SEED).toBe(FLAG_NATIVE_SEED);
  });
});

describe('engine steps through the packed request', () => {
  let engine: Engine;
  let alloc: BlockAllocator;
  beforeAll(async () => {
    engine = await Engine.load(F32, { device: 'cpu', kvBlocks: 8 });
    alloc = new BlockAllocator(engine.kvBlocks, engine.kvBlockSize);
  });
  afterAll(() => engine?.dispose());
  const seq = (extra: Record<string, unknown> = {}) => ({ tokens: Int32Array.of(1, 2, 3), pos: 0, blockTable: alloc.allocate('s', 3), ...extra }) as StepSeq;

  it('names the bad field of the bad sequence', async () => {
    const bad = (extra: Record<string, unknown>) => engine.step({ seqs: [seq(), seq(extra)] });
    await expect(engine.step(null as never)).rejects.toThrow(/^step\(request\): request object required$/);
    await expect(engine.step({ seqs: {} as never })).rejects.toThrow(/^step: seqs must be an array$/);
    await expect(engine.step({ seqs: [seq(), 5 as never] })).rejects.toThrow(/^step: seqs\[1\] must be an object$/);
    await expect(bad({ tokens: [1] })).rejects.toThrow(/^step: seqs\[1\]\.tokens must be an Int32Array$/);
    await expect(bad({ blockTable: Uint32Array.of(0) })).rejects.toThrow(/^step: seqs\[1\]\.blockTable must be an Int32Array$/);
    await expect(bad({ pos: '0' })).rejects.toThrow(/^step: seqs\[1\]\.pos must be a number$/);
    await expect(bad({ windowBlockTable: [0] })).rejects.toThrow(/^step: seqs\[1\]\.windowBlockTable must be an Int32Array$/);
    for (const f of ['temperature', 'topK', 'topP']) await expect(bad({ [f]: '1' })).rejects.toThrow(new RegExp(`^step: seqs\\[1\\]\\.${f} must be a number$`));
    for (const f of ['sample', 'allLogits']) await expect(bad({ [f]: 1 })).rejects.toThrow(new RegExp(`^step: seqs\\[1\\]\\.${f} must be a boolean$`));
    await expect(bad({ seed: -1 })).rejects.toThrow(/^step: seqs\[1\]\.seed must be a non-negative safe integer or a bigint$/);
    await expect(bad({ seed: 2n ** 64n })).rejects.toThrow(/^step: seqs\[1\]\.seed must fit in an unsigned 64-bit integer$/);
    await expect(bad({ seed: '5' })).rejects.toThrow(/^step: seqs\[1\]\.seed must be a number or a bigint$/);
    await expect(bad({ sampling: { minP: 'x' } })).rejects.toThrow(/^step: seqs\[1\]\.sampling\.minP must be a number$/);
    await expect(bad({ sampling: { logitBiasIds: Int32Array.of(1) } })).rejects.toThrow(/logitBiasValues must be a Float32Array/);
  });

  it('a seed samples the same as a number or a bigint, and the extras still apply', async () => {
    const sampled = async (extra: Record<string, unknown>) => (await engine.step({ seqs: [seq({ temperature: 1.5, ...extra })] })).sampled[0];
    for (const s of [0, 7, 2 ** 40 + 3, 2 ** 53 - 1]) expect(await sampled({ seed: s })).toBe(await sampled({ seed: BigInt(s) }));
    const greedy = (await engine.step({ seqs: [seq()] })).sampled[0]!;
    // A bias that leaves one token possible decides the sample whatever the seed.
    const other = (greedy + 1) % engine.config.vocabSize;
    const biased = { sampling: { logitBiasIds: Int32Array.of(other), logitBiasValues: Float32Array.of(1000), logprobs: 1 } };
    const r = await engine.step({ seqs: [seq(), seq({ temperature: 1, seed: 3n, ...biased })] });
    expect(Array.from(r.sampled)).toEqual([greedy, other]);
    expect(r.logprobs!.topIds[20]).toBe(other);
  });

  it('refuses packed buffers whose counts do not add up, then still steps', async () => {
    const raw = engine.native as unknown as Raw;
    const good = packStep({ seqs: [seq()] });
    const edit = (i: number, v: number) => { const ints = good.ints.slice(); ints[i] = v; return ints; };
    const refused = (ints: Int32Array, floats = good.floats, seqs: unknown = undefined) =>
      expect(Promise.resolve().then(() => raw.stepPacked(ints, floats, seqs).result)).rejects.toThrow(/^step: malformed packed request: /);
    const s = HEAD_INTS;  // the sequence's record
    await refused(new Int32Array(1));
    await refused(edit(0, -1));
    await refused(edit(0, 2));                     // two sequences' header in one's buffer
    await refused(edit(1, 2));                     // unknown request flag
    await refused(good.ints, new Float32Array(4));  // floats for two
    await refused(edit(s, 1000));                  // more tokens than the buffer holds
    await refused(edit(s, -5));
    await refused(edit(s + 2, 2 ** 31 - 1));       // blocks
    await refused(edit(s + 3, -2));                // window blocks: -1 is none
    await refused(edit(s, 2));                     // an int left over
    await refused(edit(s + 5, 64));                // unknown flag
    await refused(edit(s + 5, FLAG_SAMPLE | FLAG_EXTRAS));  // reads seqs[0], and none was given
    await refused(edit(s + 5, FLAG_SAMPLE | FLAG_EXTRAS), good.floats, [5]);
    await refused(edit(s + 8, 0));                 // a tokenFrom in a request that is not chained
    const chained = edit(1, REQ_CHAINED);
    chained[s + 8] = -7;
    await expect(Promise.resolve().then(() => raw.stepPacked(chained, good.floats, undefined).result)).rejects.toThrow(/^step: tokenFrom\[0\] is -7/);
    expect(() => raw.stepPacked([1] as never, good.floats, undefined)).toThrow(/stepPacked\(ints: Int32Array/);
    expect((await raw.stepPacked(good.ints, good.floats, undefined).result).sampled.length).toBe(1);
  });
});
