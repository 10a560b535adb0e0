// `--dtype` on CPU: weight matrices stored as f32 / bf16 / f16 (compute stays f32; norms and biases
// are always kept in f32, so an f32 checkpoint stored as bf16 is close to, not equal to, the bf16
// fixture whose norms were rounded too). Widening bf16 to f32 must change nothing.
import { describe, expect, it } from 'vitest';

import { BlockAllocator, Engine } from '../../src/engine/index.js';
import type { DTypeChoice } from '../../src/engine/index.js';
import { BF16, F32, PY_TINY, maxAbsDiff, reference } from './helpers.js';
import type { FixtureCase } from './helpers.js';

async function lastLogits(dir: string, dtype: DTypeChoice): Promise<Float32Array[]> {
  const engine = await Engine.load(dir, { device: 'cpu', dtype, kvBlocks: 16 });
  try {
    const out: Float32Array[] = [];
    for (const c of reference<FixtureCase>(dir).cases) {
      const alloc = new BlockAllocator(engine.kvBlocks, engine.kvBlockSize);
      const r = await engine.step({ seqs: [{ tokens: Int32Array.from(c.ids), pos: 0, blockTable: alloc.allocate(0, c.ids.length) }], wantLogits: true });
      out.push(r.logits!);
    }
    return out;
  } finally {
    engine.dispose();
  }
}

describe('weight storage dtype on cpu', () => {
  it('f32 checkpoint stored as bf16 is within the bf16 tolerance of the bf16 reference, and is not the f32 result', async () => {
    const [a, b] = await Promise.all([lastLogits(F32, 'bf16'), lastLogits(F32, 'auto')]);
    const bf16Ref = reference<FixtureCase>(BF16).cases;
    reference<FixtureCase>(F32).cases.forEach((c, i) => {
      expect(maxAbsDiff(a[i]!, bf16Ref[i]!.last_logits)).toBeLessThan(2e-2);  // bf16 fixture's reference
      expect(maxAbsDiff(a[i]!, b[i]!)).toBeGreaterThan(1e-4);
    });
  });

  it('storage dtype shows in the weight memory', async () => {
    const mib = async (dtype: DTypeChoice) => {
      const e = await Engine.load(PY_TINY, { device: 'cpu', dtype, kvBlocks: 4 });
      const m = /weights (\d+) MiB/.exec(e.describe())![1];
      e.dispose();
      return Number(m);
    };
    const [bf16, f32] = await Promise.all([mib('auto'), mib('f32')]);
    expect(f32).toBeGreaterThanOrEqual(2 * bf16 - 1);
    expect(bf16).toBeGreaterThan(0);
  });

  it('bf16 checkpoint widened to f32 = as stored', async () => {
    const [a, b] = await Promise.all([lastLogits(BF16, 'f32'), lastLogits(BF16, 'auto')]);
    a.forEach((x, i) => expect(maxAbsDiff(x, b[i]!)).toBeLessThan(1e-6));
  });

  it('f16 storage stays within the bf16 tolerance of the f32 reference', async () => {
    const logits = await lastLogits(F32, 'f16');
    reference<FixtureCase>(F32).cases.forEach((c, i) => expect(maxAbsDiff(logits[i]!, c.last_logits)).toBeLessThan(2e-2));
  });

  it('rejects an unknown dtype and f32 compute on cuda', async () => {
    await expect(Engine.load(F32, { device: 'cpu', dtype: 'int8' as DTypeChoice })).rejects.toThrow(/--dtype must be auto, f32, bf16 or f16/);
    await expect(Engine.load(F32, { device: 'cuda', dtype: 'f32' })).rejects.toThrow(/cuda/i);
  });
});
