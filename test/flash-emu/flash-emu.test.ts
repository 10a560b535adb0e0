// Host emulations of the CUDA kernels' fragment layouts, pipelines and plans (flash_emu.cc,
// moe_emu.cc):
// compiled with the system C++ compiler and run; skipped where there is none.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const cxx = process.env.CXX ?? 'g++';
const haveCxx = spawnSync(cxx, ['--version'], { stdio: 'ignore' }).status === 0;

function compileAndRun(source: string, expected: string): void {
  const dir = mkdtempSync(join(tmpdir(), 'ptx-emu-'));
  try {
    const exe = join(dir, 'emu');
    const cc = spawnSync(cxx, ['-O2', '-std=c++17', `-I${join(root, 'native', 'src')}`, join(root, 'test', 'flash-emu', source), '-o', exe],
      { encoding: 'utf8' });
    expect(cc.stderr).toBe('');
    expect(cc.status).toBe(0);
    const run = spawnSync(exe, [], { encoding: 'utf8' });
    expect(run.stdout).toContain(expected);
    expect(run.status).toBe(0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('flash prefill kernel emulation', () => {
  it.skipIf(!haveCxx)('matches a double-precision causal attention on paged, GQA, mixed steps', () => {
    compileAndRun('flash_emu.cc', 'flash emulation: all ok');
  });
});

describe('mixture-of-experts kernels emulation', () => {
  it.skipIf(!haveCxx)('routes as the CPU router bit for bit, permutes, and matches a double-precision MoE layer (GEMV and tensor-core paths)', () => {
    compileAndRun('moe_emu.cc', 'moe emulation: all ok');
  });
});
