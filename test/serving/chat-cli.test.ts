// `nodespeed chat` as a user runs it: a real process reading lines, the conversation kept between
// turns (each reply equals the engine's greedy continuation of the whole conversation rendered
// with the model's chat template), Ctrl-C stopping a reply and then leaving.
import { spawn, spawnSync } from 'node:child_process';
import { join, resolve } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { Engine, generateAll } from '../../src/engine/index.js';
import { loadGenerationConfig, loadTokenizer } from '../../src/model/index.js';
import { samplingDefaults, withModelDefaults } from '../../src/protocol/sampling.js';
import type { ChatMessage, Tokenizer } from '../../src/model/index.js';

const root = resolve(import.meta.dirname, '..', '..');
const CHAT_TINY = join(root, 'test', 'fixtures', 'chat-tiny');
const BIN = join(root, 'bin', 'nodespeed');

let engine: Engine;
let tok: Tokenizer;
beforeAll(async () => {
  [engine, tok] = await Promise.all([Engine.load(CHAT_TINY, { device: 'cpu' }), loadTokenizer(CHAT_TINY)]);
});
afterAll(() => engine?.dispose());

async function greedy(messages: ChatMessage[], maxTokens: number): Promise<string> {
  // The model's generation_config.json defaults (its repetition penalty) apply, as the server and the CLI apply them.
  const sampling = withModelDefaults({ maxTokens, temperature: 0 }, samplingDefaults(loadGenerationConfig(CHAT_TINY)));
  const [r] = await generateAll(engine, tok, [{ promptIds: tok.encodeChat(messages, { addGenerationPrompt: true }), ...sampling }]);
  return r!.text;
}

function chat(args: string[]) {
  const p = spawn(process.execPath, [BIN, 'chat', '--model', CHAT_TINY, '--device', 'cpu', '--temperature', '0', ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  p.stdout.on('data', (d: Buffer) => (out += d.toString()));
  p.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((res) => p.on('exit', (code) => res(code)));
  return { p, out: () => out, err: () => err, exited };
}

describe('nodespeed chat --model', () => {
  it('keeps the conversation: each reply continues the whole history, /reset starts over', async () => {
    const c = chat(['--max-tokens', '10', '--system', 'You write Python.']);
    c.p.stdin.end('Hello there\nAnd then?\n/reset\nHello there\n');
    expect(await c.exited).toBe(0);
    const sys: ChatMessage = { role: 'system', content: 'You write Python.' };
    const r1 = await greedy([sys, { role: 'user', content: 'Hello there' }], 10);
    const r2 = await greedy([sys, { role: 'user', content: 'Hello there' }, { role: 'assistant', content: r1 }, { role: 'user', content: 'And then?' }], 10);
    expect(r1).not.toBe('');
    expect(c.out()).toBe(`${r1}\n${r2}\n(conversation cleared)\n${r1}\n`);
  });

  it('Ctrl-C stops the reply being written and keeps the session; Ctrl-C at the prompt leaves cleanly', async () => {
    const c = chat(['--max-tokens', '400']);
    c.p.stdin.write('Write a long module\n');
    while (c.out().length < 8) await new Promise((r) => setTimeout(r, 5));
    c.p.kill('SIGINT');
    while (!c.out().includes('[stopped]')) await new Promise((r) => setTimeout(r, 5));
    c.p.kill('SIGINT');
    expect(await c.exited).toBe(0);
    expect(c.err()).toBe('');
  });

  it('refuses a model without a chat template, and needs exactly one of --model and --server', async () => {
    const p = spawn(process.execPath, [BIN, 'chat', '--model', join(root, 'models', 'py-tiny'), '--device', 'cpu'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let err = '';
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const code = await new Promise((res) => p.on('exit', res));
    expect(code).not.toBe(0);
    expect(err).toMatch(/py-tiny: this model has no chat template/);
    // The server's token and TLS flags (shared with status and generate --server) mean nothing without --server.
    const local = spawnSync(process.execPath, [BIN, 'chat', '--model', CHAT_TINY, '--auth-token-file', join(root, 'README.md')], { encoding: 'utf8', input: '' });
    expect([local.status, local.stderr]).toEqual([1, expect.stringMatching(/--auth-token-file only applies with --server/)]);
    const neither = spawnSync(process.execPath, [BIN, 'chat'], { encoding: 'utf8', input: '' });
    expect([neither.status, neither.stderr]).toEqual([1, expect.stringMatching(/give exactly one of --model DIR and --server ADDR/)]);
  });
});
