import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

export const root = resolve(import.meta.dirname, '..', '..');
export const fixtures = join(root, 'test', 'fixtures', 'hf-reference');
export const F32 = join(fixtures, 'tiny-llama-gqa-f32');
export const BF16 = join(fixtures, 'tiny-llama-gqa-bf16');
export const PY_TINY = join(root, 'models', 'py-tiny');

export interface FixtureCase {
  text: string;
  ids: number[];
  last_logits: number[];
  last_logits_top8: number[];
  greedy_24: number[];
  greedy_24_text: string;
}

export interface PyTinyCase {
  text: string;
  ids: number[];
  top5: number[];
  greedy_48: number[];
  greedy_48_text: string;
}

export function reference<T>(dir: string): { cases: T[] } {
  return JSON.parse(readFileSync(join(dir, 'reference.json'), 'utf8')) as { cases: T[] };
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}
