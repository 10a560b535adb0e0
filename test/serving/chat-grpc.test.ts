// Chat and the sampling controls on the gRPC API of a real cluster (chat-tiny: py-tiny with a chat
// template and generation_config.json defaults): `messages` rendered with the template, n sequences
// with seeds seed + i, logprobs, stop token ids, refusals naming the field, and `nodespeed chat
// --server` keeping a conversation through it.
import { spawn } from 'node:child_process';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { NodespeedError } from '../../src/client/index.js';
import { Engine, generateAll } from '../../src/engine/index.js';
import { loadGenerationConfig, loadTokenizer } from '../../src/model/index.js';
import { samplingDefaults, withModelDefaults } from '../../src/protocol/sampling.js';
import type { ChatMessage, Tokenizer } from '../../src/model/index.js';
import { BIN, launch, root, stream, workerProcesses } from './helpers.js';
import type { LaunchedCluster } from './helpers.js';

const CHAT_TINY = join(root, 'test', 'fixtures', 'chat-tiny');
let cluster: LaunchedCluster;
let engine: Engine;
let tok: Tokenizer;

beforeAll(async () => {
  [cluster, engine, tok] = await Promise.all([
    launch(CHAT_TINY, ['--num_cpu_workers', '2', '--tp', '2', '--kv-blocks', '256']),
    Engine.load(CHAT_TINY, { device: 'cpu' }),
    loadTokenizer(CHAT_TINY),
  ]);
}, 120_000);

afterAll(async () => {
  engine?.dispose();
  if (cluster) expect(await cluster.stop()).toBe(0);
  expect(workerProcesses()).toEqual([]);
});

const messages = [{ role: 'system', content: 'You write Python.' }, { role: 'user', content: 'Parse a CSV file' }];

async function greedy(msgs: ChatMessage[], maxTokens: number): Promise<string> {
  // The model's generation_config.json defaults (its repetition penalty) apply, as the server and the CLI apply them.
  const sampling = withModelDefaults({ maxTokens, temperature: 0 }, samplingDefaults(loadGenerationConfig(CHAT_TINY)));
  const [r] = await generateAll(engine, tok, [{ promptIds: tok.encodeChat(msgs, { addGenerationPrompt: true }), ...sampling }]);
  return r!.text;
}

describe('gRPC Generate with messages', () => {
  it('renders the chat with the template and answers as the engine does', async () => {
    const r = await stream(cluster.client, { messages, maxTokens: 16, temperature: 0 });
    expect(r.text).toBe(await greedy(messages, 16));
    expect(r.usage!.promptTokens).toBe(tok.encodeChat(messages, { addGenerationPrompt: true }).length);
  });

  it("takes generation_config.json's sampling defaults when the request leaves them out", async () => {
    const implicit = await stream(cluster.client, { messages, maxTokens: 12, seed: '5' });
    const explicit = await stream(cluster.client, { messages, maxTokens: 12, seed: '5', temperature: 0.8, topP: 0.95, topK: 50, repetitionPenalty: 1.05 });
    expect(implicit.tokenIds).toEqual(explicit.tokenIds);
    const greedyRun = await stream(cluster.client, { messages, maxTokens: 12, temperature: 0 });
    expect(implicit.tokenIds).not.toEqual(greedyRun.tokenIds);
  });
});

describe('n, logprobs and stop token ids', () => {
  it('n = 3: choices 0-2 with seeds seed, seed + 1, seed + 2; Complete returns them all', async () => {
    const req = { messages, maxTokens: 10, temperature: 1, seed: '40' };
    const byChoice: number[][] = [[], [], []];
    for await (const m of cluster.client.generate({ ...req, n: 3 })) byChoice[m.choice]!.push(...m.tokenIds);
    const alone = await Promise.all([40, 41, 42].map((seed) => stream(cluster.client, { ...req, seed: String(seed) })));
    expect(byChoice).toEqual(alone.map((a) => a.tokenIds));
    const c = await cluster.client.complete({ ...req, n: 3 });
    expect(c.choices.map((x) => x.tokenIds)).toEqual(byChoice);
    expect(c.tokenIds).toEqual(byChoice[0]);
    expect(c.usage!.completionTokens).toBe(30);
  });

  it('logprobs: one per token, the greedy token first among its top ones', async () => {
    const r = await stream(cluster.client, { messages, maxTokens: 8, temperature: 0, logprobs: 5 });
    expect(r.logprobs.length).toBe(r.tokenIds.length);
    r.logprobs.forEach((l, i) => {
      expect(l.topIds.length).toBe(5);
      expect(l.topIds[0]).toBe(r.tokenIds[i]);
      expect(l.logprob).toBeCloseTo(l.topLogprobs[0]!, 6);
    });
  });

  it('a stop token id ends the generation like EOS, left out of the output', async () => {
    const full = await stream(cluster.client, { messages, maxTokens: 12, temperature: 0 });
    const at = 4;
    const r = await stream(cluster.client, { messages, maxTokens: 12, temperature: 0, stopTokenIds: [full.tokenIds[at]!] });
    const first = full.tokenIds.indexOf(full.tokenIds[at]!);
    expect(r.tokenIds).toEqual(full.tokenIds.slice(0, first));
    expect(r.finishReason).toBe('FINISH_REASON_STOP');
  });
});

describe('refusals name the field', () => {
  async function invalid(req: Parameters<typeof cluster.client.complete>[0]): Promise<string> {
    try {
      await cluster.client.complete(req);
    } catch (err) {
      expect((err as NodespeedError).code).toBe(3);  // INVALID_ARGUMENT
      return (err as NodespeedError).details;
    }
    throw new Error('accepted');
  }

  it('n, logit_bias, stop_token_ids, penalties, prompt and messages together', async () => {
    expect(await invalid({ messages, n: 17 })).toMatch(/^n: is 17, more than 16 \(--max-n\)/);
    expect(await invalid({ messages, logitBias: { 5000: 1 } })).toMatch(/^logit_bias: token 5000 is outside the vocabulary of 2048/);
    expect(await invalid({ messages, stopTokenIds: [4096] })).toMatch(/^stop_token_ids\[0\]: token id 4096 is outside/);
    expect(await invalid({ messages, presencePenalty: 3 })).toMatch(/^presence_penalty: must be in \[-2, 2\]/);
    expect(await invalid({ messages, logprobs: 30 })).toMatch(/^logprobs: is 30, more than 20 \(--max-logprobs\)/);
    expect(await invalid({ messages, prompt: 'x' })).toMatch(/^messages: give one of prompt, prompt_ids and messages/);
    expect(await invalid({ messages: [{ role: 'user', content: 'x'.repeat(20_000) }] })).toMatch(/^messages: /);
  });
});

describe('nodespeed chat --server', () => {
  it('keeps the conversation through the cluster: each reply continues the whole history', async () => {
    const p = spawn(process.execPath, [BIN, 'chat', '--server', cluster.address, '--temperature', '0', '--max-tokens', '8', '--system', 'You write Python.'],
      { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.stdin.end('Parse a CSV file\nNow write it to JSON\n');
    expect(await new Promise((r) => p.on('exit', r)), err).toBe(0);
    const sys = { role: 'system', content: 'You write Python.' };
    const r1 = await greedy([sys, { role: 'user', content: 'Parse a CSV file' }], 8);
    const r2 = await greedy([sys, { role: 'user', content: 'Parse a CSV file' }, { role: 'assistant', content: r1 }, { role: 'user', content: 'Now write it to JSON' }], 8);
    expect(out).toBe(`${r1}\n${r2}\n`);
  });
});
