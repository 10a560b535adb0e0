// RoPE scaling (linear, llama3) has no Hugging Face fixture, so it is checked against PyTorch:
// bench/cpu/torch_llama.py's plain fp32 forward, whose inverse frequencies are transformers'
// ROPE_INIT_FUNCTIONS for these types, on the f32 fixture's weights with a rewritten config.json.
// Needs Debian's python3-torch at /usr/bin/python3 (skipped, with a notice, where it is absent).
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import { BlockAllocator, Engine } from '../../src/engine/index.js';
import { F32, maxAbsDiff, reference, root } from './helpers.js';
import type { FixtureCase } from './helpers.js';

const hasTorch = spawnSync('/usr/bin/python3', ['-c', 'import torch'], { stdio: 'ignore' }).status === 0;
if (!hasTorch) console.warn('test/engine/rope: /usr/bin/python3 has no torch (apt-get install python3-torch); RoPE scaling tests skipped');

const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

function withRope(rope: Record<string, unknown>): string {
  const dir = mkdtempSync(join(tmpdir(), 'nodespeed-rope-'));
  dirs.push(dir);
  for (const f of ['model.safetensors', 'tokenizer.json', 'tokenizer_config.json', 'generation_config.json']) symlinkSync(join(F32, f), join(dir, f));
  const cfg = JSON.parse(readFileSync(join(F32, 'config.json'), 'utf8'));
  cfg.rope_parameters = { rope_theta: 10000, ...rope };
  writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg));
  return dir;
}

async function engineLogits(dir: string, ids: number[]): Promise<Float32Array> {
  const e = await Engine.load(dir, { device: 'cpu', kvBlocks: 4 });
  try {
    const alloc = new BlockAllocator(e.kvBlocks, e.kvBlockSize);
    return (await e.step({ seqs: [{ tokens: Int32Array.from(ids), pos: 0, blockTable: alloc.allocate(0, ids.length) }], wantLogits: true })).logits!;
  } finally {
    e.dispose();
  }
}

function torchLogits(dir: string, ids: number[]): number[] {
  return JSON.parse(execFileSync('/usr/bin/python3', [join(root, 'bench', 'cpu', 'torch_llama.py'), '--model', dir, '--logits', ids.join(',')],
    { encoding: 'utf8' }));
}

// The longest reference prompt (27 positions): with original_max_position_embeddings 64 the head's
// frequencies fall in all three llama3 bands (wavelength < 16, 16..64, > 64).
const ids = reference<FixtureCase>(F32).cases.reduce((a, c) => (c.ids.length > a.length ? c.ids : a), [] as number[]);

describe.skipIf(!hasTorch)('rope scaling vs PyTorch', () => {
  for (const rope of [
    { rope_type: 'linear', factor: 4 },
    { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 64 },
  ]) {
    it(`${rope.rope_type}: logits within 1e-4 of PyTorch, and not the unscaled ones`, async () => {
      const dir = withRope(rope);
      const ours = await engineLogits(dir, ids);
      expect(maxAbsDiff(ours, torchLogits(dir, ids))).toBeLessThan(1e-4);
      expect(maxAbsDiff(ours, await engineLogits(F32, ids))).toBeGreaterThan(1e-2);
    });
  }
});
