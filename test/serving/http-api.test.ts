// The OpenAI-compatible HTTP API of a real `nodespeed launch`, through the official `openai` SDK:
// completions and chat, streamed and not, n = 2, logprobs, the sampling controls, every refusal with
// its status, greedy output equal to gRPC and to the single-process engine, and a client that
// disconnects mid-stream freeing its KV blocks as a cancelled gRPC stream does.
import { randomBytes } from 'node:crypto';
import { request } from 'node:http';
import { connect } from 'node:net';

import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { planLayout } from '../../src/coordinator/layout.js';
import { Coordinator } from '../../src/coordinator/server.js';
import { Engine, generateAll } from '../../src/engine/index.js';
import { JobPki } from '../../src/launcher/pki.js';
import { DEFAULT_REQUEST_LIMITS, promptBytesLimit } from '../../src/protocol/limits.js';
import { loadGenerationConfig, loadModelConfig, loadTokenizer } from '../../src/model/index.js';
import { samplingDefaults, withModelDefaults } from '../../src/protocol/sampling.js';
import type { Tokenizer } from '../../src/model/index.js';
import { PY_TINY, launch, reference, root, stream, workerProcesses } from './helpers.js';
import type { LaunchedCluster, PyTinyCase } from './helpers.js';
import { join } from 'node:path';

const CHAT_TINY = join(root, 'test', 'fixtures', 'chat-tiny');
const TOKEN = 'test-token-123';

let tiny: LaunchedCluster;
let chat: LaunchedCluster;
let api: OpenAI;
let chatApi: OpenAI;

const httpOf = (c: LaunchedCluster) => c.readyLine.match(/ http=(\S+)/)![1]!;

beforeAll(async () => {
  [tiny, chat] = await Promise.all([
    launch(PY_TINY, ['--num_cpu_workers', '1', '--kv-blocks', '512', '--http-port', '0', '--max-queue', '8', '--max-prompts', '6']),
    launch(CHAT_TINY, ['--num_cpu_workers', '1', '--kv-blocks', '256', '--http-port', '0', '--metrics-port', '0'], { env: { NODESPEED_AUTH_TOKEN: TOKEN } }),
  ]);
  api = new OpenAI({ baseURL: `http://${httpOf(tiny)}/v1`, apiKey: 'unused', maxRetries: 0 });
  chatApi = new OpenAI({ baseURL: `http://${httpOf(chat)}/v1`, apiKey: TOKEN, maxRetries: 0 });
}, 120_000);

afterAll(async () => {
  await Promise.all([tiny?.stop(), chat?.stop()]);
  expect(workerProcesses()).toEqual([]);
});

async function idle(c: LaunchedCluster): Promise<void> {
  const end = Date.now() + 10_000;
  for (;;) {
    const s = await c.client.clusterStatus();
    const r = s.replicas[0]!;
    if (r.running === 0 && r.kvBlocksFree === r.kvBlocksTotal && s.activeRequests === 0) return;
    if (Date.now() > end) throw new Error(`not idle: ${JSON.stringify(r)}`);
    await new Promise((res) => setTimeout(res, 50));
  }
}

describe('the ready line and the routes', () => {
  it('prints the gRPC address first and http=<addr:port> beside it', () => {
    expect(tiny.readyLine).toMatch(/^nodespeed ready 127\.0\.0\.1:\d+ .* http=127\.0\.0\.1:\d+/);
  });

  it('lists the model, answers /health, and serves /metrics on the HTTP port when metrics are on (behind the token)', async () => {
    const models = await api.models.list();
    expect(models.data.map((m) => m.id)).toEqual(['py-tiny']);
    expect((await api.models.retrieve('py-tiny')).id).toBe('py-tiny');
    expect((await fetch(`http://${httpOf(tiny)}/health`)).status).toBe(200);
    expect((await fetch(`http://${httpOf(chat)}/health`)).status).toBe(200);  // open for load balancers, token or not
    expect((await fetch(`http://${httpOf(chat)}/metrics`)).status).toBe(401);
    const metrics = await fetch(`http://${httpOf(chat)}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(metrics.status).toBe(200);
    expect(await metrics.text()).toMatch(/nodespeed_/);
    expect((await fetch(`http://${httpOf(tiny)}/metrics`)).status).toBe(404);  // metrics off there
  });
});

describe('completions (py-tiny)', () => {
  const { cases } = reference<PyTinyCase>(PY_TINY);
  let tok: Tokenizer;
  beforeAll(async () => {
    tok = await loadTokenizer(PY_TINY);
  });

  it('greedy: equal to reference.json, to gRPC and to the single-process engine', async () => {
    const c = cases[0]!;
    const r = await api.completions.create({ model: 'py-tiny', prompt: c.text, max_tokens: 48, temperature: 0, ignore_eos: true } as OpenAI.CompletionCreateParamsNonStreaming);
    expect(r.choices[0]!.text).toBe(c.greedy_48_text);
    expect(r.choices[0]!.finish_reason).toBe('length');
    expect(r.usage).toEqual({ prompt_tokens: c.ids.length, completion_tokens: 48, total_tokens: c.ids.length + 48 });
    const g = await stream(tiny.client, { prompt: c.text, maxTokens: 48, ignoreEos: true });
    expect(g.text).toBe(r.choices[0]!.text);
    const engine = await Engine.load(PY_TINY, { device: 'cpu' });
    try {
      const [local] = await generateAll(engine, tok, [{ prompt: c.text, maxTokens: 48, ignoreEos: true }]);
      expect(local!.text).toBe(r.choices[0]!.text);
    } finally {
      engine.dispose();
    }
  });

  it('streams as OpenAI does: text chunks, finish_reason on the last, a usage chunk with include_usage, then [DONE]', async () => {
    const c = cases[1]!;
    const s = await api.completions.create({ model: 'py-tiny', prompt: c.text, max_tokens: 48, temperature: 0, ignore_eos: true, stream: true, stream_options: { include_usage: true } } as OpenAI.CompletionCreateParamsStreaming);
    let text = '';
    let finish: string | null = null;
    let usage: OpenAI.CompletionUsage | null | undefined = null;
    let chunks = 0;
    for await (const ch of s) {
      chunks++;
      if (ch.choices.length) {
        text += ch.choices[0]!.text;
        if (ch.choices[0]!.finish_reason) finish = ch.choices[0]!.finish_reason;
        expect(ch.usage).toBeNull();
      } else {
        usage = ch.usage;
      }
    }
    // Streamed: the first token's chunk, at least one more, then the usage chunk. Tokens that reach the coordinator
    // while a write is in flight go out merged in one event (the next test), so the count follows the load.
    expect(chunks).toBeGreaterThan(2);
    expect(text).toBe(c.greedy_48_text);
    expect(finish).toBe('length');
    expect(usage).toEqual({ prompt_tokens: c.ids.length, completion_tokens: 48, total_tokens: c.ids.length + 48 });
  });

  it('tokens that reach the coordinator together go out together: one event per choice, the same text and logprobs as unstreamed', async () => {
    const c = cases[2]!;
    const body = { model: 'py-tiny', prompt: c.text, max_tokens: 320, temperature: 0, ignore_eos: true, n: 4, logprobs: 5 };
    const whole = await api.completions.create(body as OpenAI.CompletionCreateParamsNonStreaming);
    const s = await api.completions.create({ ...body, stream: true, stream_options: { include_usage: true } } as OpenAI.CompletionCreateParamsStreaming);
    const text = ['', '', '', ''];
    const tokens: string[][] = [[], [], [], []];
    const top: Record<string, number>[][] = [[], [], [], []];
    let events = 0;
    let usage: OpenAI.CompletionUsage | null | undefined = null;
    let paused = false;
    for await (const ch of s) {
      events++;
      if (!ch.choices.length) usage = ch.usage;
      for (const x of ch.choices) {
        text[x.index] += x.text;
        tokens[x.index]!.push(...(x.logprobs?.tokens ?? []));
        top[x.index]!.push(...(x.logprobs?.top_logprobs ?? []));
      }
      if (!paused) {
        // The coordinator stopped for a moment (SIGSTOP) while the replica goes on: the steps it
        // sends meanwhile reach the coordinator together when it goes on, as under a busy event loop.
        paused = true;
        process.kill(tiny.proc.pid!, 'SIGSTOP');
        await new Promise((r) => setTimeout(r, 1500));
        process.kill(tiny.proc.pid!, 'SIGCONT');
      }
    }
    expect(text).toEqual(whole.choices.map((x) => x.text));
    expect(tokens).toEqual(whole.choices.map((x) => x.logprobs!.tokens));
    expect(top).toEqual(whole.choices.map((x) => x.logprobs!.top_logprobs));
    expect(usage).toEqual(whole.usage);
    console.log(`${events} events for 4 x 320 tokens`);
    // One event per update would be 4 x 320 + the usage chunk.
    expect(events).toBeLessThan(4 * 320);
  });

  it('n = 2 with a seed: two different samples of one prompt, each reproducible alone', async () => {
    const body = { model: 'py-tiny', prompt: cases[2]!.text, max_tokens: 24, temperature: 1, seed: 7, n: 2 };
    const r = await api.completions.create(body);
    expect(r.choices.map((c) => c.index)).toEqual([0, 1]);
    expect(r.choices[0]!.text).not.toBe(r.choices[1]!.text);
    expect((await api.completions.create(body)).choices.map((c) => c.text)).toEqual(r.choices.map((c) => c.text));
    expect(r.usage!.completion_tokens).toBe(48);
  });

  it('logprobs: the sampled token first among the top ones for greedy, every token reported as decoding it alone gives', async () => {
    const r = await api.completions.create({ model: 'py-tiny', prompt: cases[0]!.text, max_tokens: 8, temperature: 0, logprobs: 3 });
    const lp = r.choices[0]!.logprobs!;
    expect(lp.tokens).toEqual(cases[0]!.greedy_48.slice(0, 8).map((id) => tok.decode([id])));
    expect(lp.tokens!.join('')).toBe(r.choices[0]!.text);
    lp.top_logprobs!.forEach((top, i) => {
      expect(Object.keys(top).length).toBeGreaterThanOrEqual(1);
      expect(Math.max(...Object.values(top))).toBeCloseTo(lp.token_logprobs![i]!, 5);
    });
  });

  it('stop strings end the text before them with finish_reason stop, streamed and not', async () => {
    const c = cases[0]!;
    const full = c.greedy_48_text;
    const stop = full.slice(12, 15);  // three characters from the middle of the greedy continuation
    const want = full.slice(0, full.indexOf(stop));
    const body = { model: 'py-tiny', prompt: c.text, max_tokens: 48, temperature: 0, stop: [stop, 'never-generated'] };
    const r = await api.completions.create(body);
    expect(r.choices[0]!.text).toBe(want);
    expect(r.choices[0]!.finish_reason).toBe('stop');
    let text = '';
    let finish: string | null = null;
    for await (const ch of await api.completions.create({ ...body, stream: true })) {
      text += ch.choices[0]?.text ?? '';
      finish = ch.choices[0]?.finish_reason ?? finish;
    }
    expect(text).toBe(want);
    expect(finish).toBe('stop');
  });

  it('a batch of prompts, text and token ids, with n = 2 and echo: its choices in order, each prompt echoed as given or decoded', async () => {
    const [a, b] = [cases[0]!, cases[1]!];
    const r = await api.completions.create({ model: 'py-tiny', prompt: [a.text, b.ids] as unknown as string[], max_tokens: 4, temperature: 0, n: 2, echo: true });
    expect(r.choices.map((c) => c.index)).toEqual([0, 1, 2, 3]);
    const echoed = [a.text, a.text, tok.decode(b.ids), tok.decode(b.ids)];
    r.choices.forEach((c, i) => expect(c.text.startsWith(echoed[i]!), `choice ${i}`).toBe(true));
    expect(r.choices[1]!.text).toBe(r.choices[0]!.text);
    expect(r.choices[3]!.text).toBe(r.choices[2]!.text);
    expect(r.usage).toEqual({ prompt_tokens: a.ids.length + b.ids.length, completion_tokens: 16, total_tokens: a.ids.length + b.ids.length + 16 });
  });

  it('echo, logit_bias and penalties take effect', async () => {
    const c = cases[0]!;
    const echo = await api.completions.create({ model: 'py-tiny', prompt: c.text, max_tokens: 4, temperature: 0, echo: true });
    expect(echo.choices[0]!.text.startsWith(c.text)).toBe(true);
    const plain = await api.completions.create({ model: 'py-tiny', prompt: c.text, max_tokens: 16, temperature: 0 });
    const first = c.greedy_48[0]!;
    const banned = await api.completions.create({ model: 'py-tiny', prompt: c.text, max_tokens: 16, temperature: 0, logit_bias: { [first]: -100 } });
    expect(banned.choices[0]!.text).not.toBe(plain.choices[0]!.text);
    const pen = await api.completions.create({ model: 'py-tiny', prompt: c.text, max_tokens: 16, temperature: 0, frequency_penalty: 2, presence_penalty: 1 });
    expect(pen.choices[0]!.text).not.toBe(plain.choices[0]!.text);
  });
});

describe('chat (chat-tiny: a template and generation_config defaults)', () => {
  let tok: Tokenizer;
  beforeAll(async () => {
    tok = await loadTokenizer(CHAT_TINY);
  });
  const messages = [{ role: 'system' as const, content: 'You write Python.' }, { role: 'user' as const, content: 'Sort a list' }];

  it('renders the template, answers as the single-process engine does (greedy), streamed and not', async () => {
    const r = await chatApi.chat.completions.create({ model: 'chat-tiny', messages, max_tokens: 20, temperature: 0 });
    const ids = tok.encodeChat(messages, { addGenerationPrompt: true });
    expect(r.usage!.prompt_tokens).toBe(ids.length);
    const [engine] = await Promise.all([Engine.load(CHAT_TINY, { device: 'cpu' })]);
    try {
      // The model's generation_config.json defaults (its repetition penalty) apply to what the request leaves out.
      const sampling = withModelDefaults({ maxTokens: 20, temperature: 0 }, samplingDefaults(loadGenerationConfig(CHAT_TINY)));
      expect(sampling.repetitionPenalty).toBe(1.05);
      const [local] = await generateAll(engine, tok, [{ promptIds: ids, ...sampling }]);
      expect(r.choices[0]!.message.content).toBe(local!.text);
      expect(r.choices[0]!.message.role).toBe('assistant');
    } finally {
      engine.dispose();
    }
    const s = await chatApi.chat.completions.create({ model: 'chat-tiny', messages, max_tokens: 20, temperature: 0, stream: true });
    let text = '';
    let role = '';
    let finish = '';
    for await (const ch of s) {
      role ||= ch.choices[0]?.delta.role ?? '';
      text += ch.choices[0]?.delta.content ?? '';
      finish ||= ch.choices[0]?.finish_reason ?? '';
    }
    expect(role).toBe('assistant');
    expect(text).toBe(r.choices[0]!.message.content);
    expect(finish).toBe(r.choices[0]!.finish_reason);
  });

  it('streamed chat logprobs: one entry per token, as the non-streamed answer reports them', async () => {
    const body = { model: 'chat-tiny', messages, max_tokens: 6, temperature: 0, logprobs: true, top_logprobs: 2 };
    const whole = await chatApi.chat.completions.create(body);
    const streamed: OpenAI.ChatCompletionTokenLogprob[] = [];
    for await (const ch of await chatApi.chat.completions.create({ ...body, stream: true })) streamed.push(...(ch.choices[0]?.logprobs?.content ?? []));
    expect(streamed.map((t) => t.token)).toEqual(whole.choices[0]!.logprobs!.content!.map((t) => t.token));
    streamed.forEach((t, i) => expect(t.logprob).toBeCloseTo(whole.choices[0]!.logprobs!.content![i]!.logprob, 5));
  });

  it('chat logprobs with top_logprobs; n = 2', async () => {
    const r = await chatApi.chat.completions.create({ model: 'chat-tiny', messages, max_tokens: 6, temperature: 0.9, seed: 3, n: 2, logprobs: true, top_logprobs: 4 });
    expect(r.choices.length).toBe(2);
    for (const c of r.choices) {
      expect(c.logprobs!.content!.length).toBe(6);
      for (const t of c.logprobs!.content!) {
        expect(t.top_logprobs.length).toBe(4);
        expect(t.logprob).toBeLessThanOrEqual(0);
      }
    }
  });

  it('generation_config.json defaults apply when the request leaves them out', async () => {
    const implicit = await chatApi.chat.completions.create({ model: 'chat-tiny', messages, max_tokens: 12, seed: 11 });
    const explicit = await chatApi.chat.completions.create({ model: 'chat-tiny', messages, max_tokens: 12, seed: 11, temperature: 0.8, top_p: 0.95, top_k: 50, repetition_penalty: 1.05 } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    expect(implicit.choices[0]!.message.content).toBe(explicit.choices[0]!.message.content);
  });
});

describe('refusals, each with its status and OpenAI error body', () => {
  async function status(p: Promise<unknown>): Promise<{ status: number; param?: string | null; message: string }> {
    try {
      await p;
    } catch (err) {
      const e = err as InstanceType<typeof OpenAI.APIError>;
      return { status: e.status!, param: (e.error as { param?: string | null } | undefined)?.param, message: e.message };
    }
    throw new Error('no error');
  }

  it('400 naming the field for bad values, 404 for an unknown model, 401 without the token', async () => {
    const base = { model: 'py-tiny', prompt: 'x' };
    for (const [body, param] of [
      [{ temperature: -1 }, 'temperature'], [{ top_p: 0 }, 'top_p'], [{ max_tokens: 0 }, 'max_tokens'], [{ n: 0 }, 'n'],
      [{ logprobs: 21 }, 'logprobs'], [{ logit_bias: { 99999: 1 } }, 'logit_bias'], [{ min_p: 2 }, 'min_p'],
      [{ presence_penalty: 3 }, 'presence_penalty'], [{ repetition_penalty: 0 }, 'repetition_penalty'], [{ stop_token_ids: [-1] }, 'stop_token_ids'],
      [{ prompt: 'x'.repeat(1 << 20) }, 'prompt'],
    ] as [Record<string, unknown>, string][]) {
      const r = await status(api.completions.create({ ...base, ...body } as OpenAI.CompletionCreateParamsNonStreaming));
      expect(r.status, JSON.stringify(body)).toBe(400);
      expect(r.param ?? '', JSON.stringify(body)).toContain(param);
    }
    expect((await status(api.completions.create({ model: 'nope', prompt: 'x' }))).status).toBe(404);
    // The request limits are the gRPC API's (--max-stop-strings, --max-stop-chars, --max-n, --max-logprobs), each refusal naming the flag.
    for (const [body, param, flag] of [
      [{ stop: Array.from({ length: 17 }, (_, i) => `s${i}`) }, 'stop', '--max-stop-strings'], [{ stop: ['x'.repeat(4097)] }, 'stop', '--max-stop-chars'],
      [{ n: 17 }, 'n', '--max-n'], [{ logprobs: 21 }, 'logprobs', '--max-logprobs'],
    ] as [Record<string, unknown>, string, string][]) {
      const r = await status(api.completions.create({ ...base, ...body } as OpenAI.CompletionCreateParamsNonStreaming));
      expect([r.status, r.param, r.message], JSON.stringify(body).slice(0, 80)).toEqual([400, param, expect.stringContaining(flag)]);
    }
    // --max-prompts (6 here): the prompts of a batch, and its prompts × n sequences, refused before any is tokenized.
    for (const [body, param, message] of [
      [{ prompt: Array(7).fill('x') }, 'prompt', 'prompt: 7 prompts, more than 6 (--max-prompts)'],
      [{ prompt: Array(4).fill('x'), n: 2 }, 'n', 'n: 4 prompts × n 2 = 8 sequences, more than 6 (--max-prompts)'],
    ] as [Record<string, unknown>, string, string][]) {
      const r = await status(api.completions.create({ ...base, ...body } as OpenAI.CompletionCreateParamsNonStreaming));
      expect([r.status, r.param, r.message]).toEqual([400, param, expect.stringContaining(message)]);
    }
    const top = await status(chatApi.chat.completions.create({ model: 'chat-tiny', messages: [{ role: 'user', content: 'hi' }], logprobs: true, top_logprobs: 21 }));
    expect([top.status, top.param, top.message]).toEqual([400, 'top_logprobs', expect.stringContaining('--max-logprobs')]);
    const longChat = await status(chatApi.chat.completions.create({ model: 'chat-tiny', messages: [{ role: 'user', content: 'x'.repeat(1 << 20) }] }));
    expect([longChat.status, longChat.param, longChat.message]).toEqual([400, 'messages', expect.stringContaining('it was not tokenized')]);
    const noKey = new OpenAI({ baseURL: `http://${httpOf(chat)}/v1`, apiKey: 'wrong', maxRetries: 0 });
    expect((await status(noKey.models.list())).status).toBe(401);
  });

  it('400 for chat with a model that has no template; bad JSON is 400, never 500', async () => {
    const r = await status(api.chat.completions.create({ model: 'py-tiny', messages: [{ role: 'user', content: 'hi' }] }));
    expect(r.status).toBe(400);
    expect(r.message).toMatch(/no chat template/);
    const res = await fetch(`http://${httpOf(tiny)}/v1/completions`, { method: 'POST', body: '{"model":', headers: { 'content-type': 'application/json' } });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { type: string } }).error.type).toBe('invalid_request_error');
  });

  it("priority: a request class's name or an integer routes the request in that class; an unknown class is 400 naming priority", async () => {
    const routed = async () => Object.fromEntries((await tiny.client.clusterStatus()).classes.map((c) => [c.name, Number(c.routed)]));
    const before = await routed();
    const base = { model: 'py-tiny', prompt: 'def f', max_tokens: 4, temperature: 0 };
    // vLLM's priority field: an integer (150 is in batch's range, from 100) or, here, a class name.
    for (const priority of ['realtime', 150])
      expect((await api.completions.create({ ...base, priority } as OpenAI.CompletionCreateParamsNonStreaming)).choices[0]!.text).not.toBe('');
    const after = await routed();
    expect([after.realtime! - before.realtime!, after.batch! - before.batch!, after.standard! - before.standard!]).toEqual([1, 1, 0]);
    const r = await status(api.completions.create({ ...base, priority: 'nope' } as OpenAI.CompletionCreateParamsNonStreaming));
    expect([r.status, r.param, r.message]).toEqual([400, 'priority', expect.stringContaining('unknown class "nope"')]);
  });

  it('429 when the queue is full', async () => {
    const long = Array.from({ length: 12 }, () => api.completions.create({ model: 'py-tiny', prompt: 'def f', max_tokens: 200, temperature: 0, ignore_eos: true } as OpenAI.CompletionCreateParamsNonStreaming).then(() => 200, (e: { status: number }) => e.status));
    const codes = await Promise.all(long);
    expect(codes).toContain(429);
    expect(codes).toContain(200);
    await idle(tiny);
  });
});

/**
 * POSTs a body that never ends (`frame` makes each 64 KiB block of it: as is after a declared
 * length, or as a chunk) until the server closes the connection; returns what came back.
 */
function endlessBody(addr: string, headers: string, frame: (block: Buffer) => Buffer): Promise<{ response: string; sent: number; closedAfterMs: number }> {
  const at = addr.lastIndexOf(':');
  return new Promise((resolve) => {
    const sock = connect(Number(addr.slice(at + 1)), addr.slice(0, at));
    const block = frame(Buffer.alloc(64 * 1024, 'x'));
    let response = '';
    let sent = 0;
    let answeredAt = 0;
    let timer: NodeJS.Timeout | undefined;
    sock.on('connect', () => {
      sock.write(`POST /v1/completions HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n${headers}\r\n`);
      timer = setInterval(() => {
        if (sock.destroyed || sock.writableLength > 1 << 20) return;
        sock.write(block);
        sent += block.length;
      }, 2);
    });
    sock.on('data', (d: Buffer) => {
      answeredAt ||= Date.now();
      response += d.toString();
    });
    sock.on('error', () => {});  // writing on after the server closed
    sock.on('close', () => {
      clearInterval(timer);
      resolve({ response, sent, closedAfterMs: Date.now() - answeredAt });
    });
  });
}

describe('a body over --max-request-bytes', () => {
  it('is answered 413 in OpenAI\'s shape and its connection closed, declared or chunked, while other requests are served', async () => {
    const addr = httpOf(tiny);
    const limit = DEFAULT_REQUEST_LIMITS.requestBytes;
    const others = async () => {
      await new Promise((r) => setTimeout(r, 300));
      return (await api.completions.create({ model: 'py-tiny', prompt: 'def f', max_tokens: 4, temperature: 0 })).choices[0]!.text;
    };
    for (const [headers, frame, message] of [
      [`content-length: ${1 << 30}\r\n`, (b: Buffer) => b, `the request body is ${1 << 30} bytes, more than the ${limit} bytes accepted (--max-request-bytes)`],
      ['transfer-encoding: chunked\r\n', (b: Buffer) => Buffer.concat([Buffer.from(`${b.length.toString(16)}\r\n`), b, Buffer.from('\r\n')]),
        `the request body is longer than the ${limit} bytes accepted (--max-request-bytes)`],
    ] as [string, (b: Buffer) => Buffer, string][]) {
      const [big, other] = await Promise.all([endlessBody(addr, headers, frame), others()]);
      expect(other.length, headers).toBeGreaterThan(0);
      expect(big.response, headers).toMatch(/^HTTP\/1\.1 413 /);
      expect(big.response.toLowerCase(), headers).toContain('connection: close');
      const body = JSON.parse(big.response.slice(big.response.indexOf('\r\n\r\n') + 4)) as { error: Record<string, unknown> };
      expect(body.error, headers).toEqual({ message, type: 'invalid_request_error', param: null, code: 'request_too_large' });
      // Closed once the answer is out (the client sent on regardless), not read to its end.
      expect(big.closedAfterMs, headers).toBeLessThan(10_000);
      if (headers.startsWith('transfer')) expect(big.sent).toBeGreaterThan(limit);
    }
  });
});

describe('a client that goes away', () => {
  it('frees its KV blocks at once, as a cancelled gRPC stream does', async () => {
    await idle(tiny);
    const before = Number((await tiny.client.clusterStatus()).replicas[0]!.generatedTokens);
    const body = JSON.stringify({ model: 'py-tiny', prompt: 'def main():', max_tokens: 400, temperature: 0, ignore_eos: true, stream: true });
    await new Promise<void>((resolve, reject) => {
      const req = request(`http://${httpOf(tiny)}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' } }, (res) => {
        let n = 0;
        res.on('data', () => {
          if (++n === 3) {
            req.destroy();
            resolve();
          }
        });
      });
      req.on('error', (e) => (e.message.includes('socket hang up') || (e as NodeJS.ErrnoException).code === 'ECONNRESET' ? undefined : reject(e)));
      req.end(body);
    });
    await idle(tiny);
    // Cancelled, not run to its 400 tokens with nobody listening.
    const generated = Number((await tiny.client.clusterStatus()).replicas[0]!.generatedTokens) - before;
    expect(generated).toBeLessThan(200);
  });
});

describe('a coordinator that no replica serves (yet)', () => {
  // The coordinator alone, in this process: its HTTP API is up before any worker joins.
  let coord: Coordinator;
  let base: string;
  beforeAll(async () => {
    const config = loadModelConfig(PY_TINY);
    const tok = await loadTokenizer(PY_TINY);
    const pki = await JobPki.create();
    coord = new Coordinator({
      layout: planLayout(config, [{ host: '127.0.0.1', slots: 1 }], { tp: 1, pp: 1, replicas: 1 }), token: 't', modelDir: PY_TINY,
      maxQueue: 8, heartbeatIntervalMs: 1000, heartbeatTimeoutMs: 5000, requestTimeoutMs: 1000, log: () => {}, bind: '127.0.0.1', port: 0, httpPort: 0, limits: DEFAULT_REQUEST_LIMITS,
      control: { host: '127.0.0.1', port: 0, identity: await pki.serverIdentity(), key: randomBytes(32) },
      model: { name: 'py-tiny', path: PY_TINY, architecture: config.architecture, contextLength: config.maxPosition, vocabSize: config.vocabSize,
        numLayers: config.numLayers, dtype: 'f32', encode: async (t) => tok.encode(t), decode: async (ids) => tok.decode(ids),
        promptBytes: promptBytesLimit(config.maxPosition, tok.maxTokenBytes) },
    });
    await coord.start();
    base = `http://${coord.httpApi!.address}`;
  });
  afterAll(() => coord?.stop());

  it('/health is 503 and a request is refused 503 no_replica, in the OpenAI shape', async () => {
    expect((await fetch(`${base}/health`)).status).toBe(503);
    const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', maxRetries: 0 });
    const err = await client.completions.create({ model: 'py-tiny', prompt: 'def f', max_tokens: 4 }).then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.APIError);
    expect((err as InstanceType<typeof OpenAI.APIError>).status).toBe(503);
    expect((err as InstanceType<typeof OpenAI.APIError>).code).toBe('no_replica');
  });

  it('a body over the limit is 413 before it is read whole; a wrong method is 405', async () => {
    const big = await fetch(`${base}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'py-tiny', prompt: 'x'.repeat(3 << 20) }) });
    expect(big.status).toBe(413);
    const error = ((await big.json()) as { error: { code: string; message: string } }).error;
    expect([error.code, error.message]).toEqual(['request_too_large', expect.stringContaining('--max-request-bytes')]);
    const get = await fetch(`${base}/v1/completions`);
    expect(get.status).toBe(405);
    expect(get.headers.get('allow')).toBe('POST');
  });
});
