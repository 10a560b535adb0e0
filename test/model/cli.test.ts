// `nodespeed model init / info` as a user runs them: real processes on the built CLI (dist/).
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, expect, it } from 'vitest';

import { tmpDir, removeTmpDirs } from './helpers.js';

afterAll(removeTmpDirs);

const run = promisify(execFile);
const cli = join(import.meta.dirname, '..', '..', 'bin', 'nodespeed');
const nodespeed = (...args: string[]) => run(process.execPath, [cli, ...args]);

async function failure(...args: string[]): Promise<{ code: number; stderr: string }> {
  try {
    await nodespeed(...args);
  } catch (err) {
    const e = err as { code: number; stderr: string };
    return { code: e.code, stderr: e.stderr };
  }
  throw new Error(`nodespeed ${args.join(' ')} succeeded`);
}

it('model init --preset tiny, then model info and generate on what it wrote', async () => {
  const out = join(tmpDir(), 'tiny');
  const init = await nodespeed('model', 'init', '--arch', 'llama', '--preset', 'tiny', '--dtype', 'bf16', '--seed', '9', out);
  expect(init.stdout).toMatch(/^wrote .*: tiny llama, 489 KiB in 1 safetensors file\(s\)/);
  const info = await nodespeed('model', 'info', out);
  expect(info.stdout).toMatch(/parameters +250\.4K \(250432\)/);
  expect(info.stdout).toMatch(/dtype +config bfloat16; tensors bf16 250\.4K/);
  const gen = await nodespeed('generate', '--model', out, '--device', 'cpu', '--max-tokens', '5', '--json', 'import os');
  const r = JSON.parse(gen.stdout.trim());
  expect(r.prompt_ids).toEqual([0, 74, 333, 471, 287, 84]); // tok512's ids for "import os"
  expect(r.token_ids).toHaveLength(5);
  const again = JSON.parse((await nodespeed('generate', '--model', out, '--device', 'cpu', '--max-tokens', '5', '--json', 'import os')).stdout.trim());
  expect(again.token_ids).toEqual(r.token_ids);
});

it('bad flags and folders are one clear line naming the flag or file, exit 1', async () => {
  const preset = await failure('model', 'init', '--preset', '3b', join(tmpDir(), 'x'));
  expect(preset.code).toBe(1);
  expect(preset.stderr).toMatch(/--preset 3b: expected one of tiny, 100m, 1b, 7b, 13b, 70b for --arch llama/);
  const moe = await failure('model', 'init', '--arch', 'mixtral', '--preset', '7b', join(tmpDir(), 'x'));
  expect(moe.stderr).toMatch(/--preset 7b: expected one of tiny, 8x7b for --arch mixtral/);
  const seed = await failure('model', 'init', '--preset', 'tiny', '--seed', '-1', join(tmpDir(), 'x'));
  expect(seed.stderr).toMatch(/--seed must be an integer/);
  const missing = await failure('model', 'info', join(tmpDir(), 'nothing'));
  expect(missing.code).toBe(1);
  expect(missing.stderr.trim()).toMatch(/^\S*nothing\/config\.json: cannot read \(ENOENT\)$/);
  expect(missing.stderr).not.toMatch(/\n\s+at /); // no stack trace
});
