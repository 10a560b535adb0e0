// The quantizer and the kernels' bit-level decoders, checked on the host (quant_bits_test.cc):
// E4M3 rounding against an exhaustive nearest-value search, every byte through both decoders,
// quantize_rows against a direct reference. Compiled with the system C++ compiler; skipped without one.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const cxx = process.env.CXX ?? 'g++';
const haveCxx = spawnSync(cxx, ['--version'], { stdio: 'ignore' }).status === 0;

describe('quantization bits (host)', () => {
  it.skipIf(!haveCxx)('E4M3 rounding, int8 / E4M3 decoders and quantize_rows match their definitions', () => {
    const dir = mkdtempSync(join(tmpdir(), 'quant-bits-'));
    try {
      const exe = join(dir, 'quant_bits');
      const src = (p: string) => join(root, p);
      const cc = spawnSync(cxx, ['-O2', '-std=c++17', '-pthread', `-I${src('native/src')}`, src('test/quant/quant_bits_test.cc'),
        src('native/src/common/quant.cc'), '-o', exe], { encoding: 'utf8' });
      expect(cc.stderr).toBe('');
      expect(cc.status).toBe(0);
      const run = spawnSync(exe, [], { encoding: 'utf8' });
      expect(run.stdout).toMatch(/^ok /);
      expect(run.status).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
