// `nodespeed generate` as a user runs it: a real process on the built CLI (dist/), py-tiny.
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { expect, it } from 'vitest';

import { PY_TINY, reference, root } from './helpers.js';
import type { PyTinyCase } from './helpers.js';

const run = promisify(execFile);
const cli = join(root, 'bin', 'nodespeed');
const c = reference<PyTinyCase>(PY_TINY).cases[0]!;

it('generate --json prints one JSON line matching the reference greedy continuation', async () => {
  const { stdout } = await run(process.execPath, [cli, 'generate', '--model', PY_TINY, '--device', 'cpu', '--max-tokens', '48',
    '--json', c.text]);
  const lines = stdout.trim().split('\n');
  expect(lines).toHaveLength(1);
  const r = JSON.parse(lines[0]!);
  expect(Object.keys(r).sort()).toEqual(['finish_reason', 'prompt_ids', 'text', 'token_ids', 'tokens_per_s', 'ttft_ms']);
  expect(r.prompt_ids).toEqual(c.ids);
  expect(r.token_ids).toEqual(c.greedy_48);
  expect(r.text).toBe(c.greedy_48_text);
  expect(r.finish_reason).toBe('length');
  expect(r.ttft_ms).toBeGreaterThan(0);
  expect(r.tokens_per_s).toBeGreaterThan(0);
});

it('generate streams the text, honours --stop and --seed', async () => {
  const { stdout } = await run(process.execPath, [cli, 'generate', '--model', PY_TINY, '--max-tokens', '48', '--stop', '{n}{n}{n}', c.text]);
  expect(stdout).toBe(c.greedy_48_text.slice(0, c.greedy_48_text.indexOf('{n}{n}{n}')) + '\n');
  const sampled = async (seed: string) => (await run(process.execPath, [cli, 'generate', '--model', PY_TINY, '--json',
    '--temperature', '0.9', '--top-k', '40', '--seed', seed, '--max-tokens', '24', c.text])).stdout;
  const ids = async (seed: string) => JSON.parse(await sampled(seed)).token_ids as number[];
  const first = await ids('42');
  expect(first).toHaveLength(24);
  expect(await ids('42')).toEqual(first);
  expect(await ids('43')).not.toEqual(first);
});

it('bad flags and a bad model folder are one clear error line and exit 1', async () => {
  await expect(run(process.execPath, [cli, 'generate', '--model', PY_TINY, '--top-p', '2', 'x'])).rejects.toMatchObject({
    code: 1, stderr: expect.stringMatching(/--top-p must be in \(0, 1\] \(got 2\)/),
  });
  await expect(run(process.execPath, [cli, 'generate', '--model', join(root, 'no-such-model'), 'x'])).rejects.toMatchObject({
    code: 1, stderr: expect.stringMatching(/no-such-model/),
  });
});
