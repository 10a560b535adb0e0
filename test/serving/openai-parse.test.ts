// OpenAI request bodies into nodespeed's request (src/coordinator/http/openai.ts): shapes, the
// endpoint-specific rules, and errors that name the field a client sent.
import { describe, expect, it } from 'vitest';

import { ApiError } from '../../src/coordinator/http/errors.js';
import {
  LOGPROBS_SLICE_TOKENS, chatLogprobs, chatLogprobsJson, completionLogprobs, completionLogprobsJson, parseChat, parseCompletion,
} from '../../src/coordinator/http/openai.js';
import type { TokenLogprob } from '../../src/coordinator/http/openai.js';

function fails(fn: () => unknown, param: string | null, message: RegExp): void {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ApiError);
    expect((err as ApiError).kind).toBe('invalid');
    expect((err as ApiError).status).toBe(400);
    expect((err as ApiError).param).toBe(param);
    expect((err as ApiError).message).toMatch(message);
    return;
  }
  expect.unreachable('no error');
}

describe('completions', () => {
  it('maps OpenAI and vLLM-style fields to the public API names', () => {
    const p = parseCompletion({
      model: 'm', prompt: 'hi', max_tokens: 7, temperature: 0.5, top_p: 0.9, top_k: 40, min_p: 0.05, presence_penalty: 0.5,
      frequency_penalty: -0.2, repetition_penalty: 1.1, seed: 42, stop: 'x', stop_token_ids: [3, 4], ignore_eos: true,
      logprobs: 3, logit_bias: { 5: -100, 6: 2 }, n: 2, stream: true, stream_options: { include_usage: true },
    });
    expect(p.req).toEqual({
      model: 'm', prompts: [{ text: 'hi' }], maxTokens: 7, temperature: 0.5, topP: 0.9, topK: 40, minP: 0.05, presencePenalty: 0.5,
      frequencyPenalty: -0.2, repetitionPenalty: 1.1, seed: '42', stop: ['x'], stopTokenIds: [3, 4], ignoreEos: true, logprobs: 3,
      logitBias: { 5: -100, 6: 2 }, n: 2,
    });
    expect(p.stream).toBe(true);
    expect(p.includeUsage).toBe(true);
  });

  it('takes a string, token ids, or a batch of either', () => {
    expect(parseCompletion({ model: 'm', prompt: [1, 2, 3] }).req.prompts).toEqual([{ ids: [1, 2, 3] }]);
    expect(parseCompletion({ model: 'm', prompt: ['a', [4, 5]] }).req.prompts).toEqual([{ text: 'a' }, { ids: [4, 5] }]);
    fails(() => parseCompletion({ model: 'm', prompt: [1.5] }), 'prompt[0]', /must be an integer/);
    fails(() => parseCompletion({ model: 'm', prompt: [{}] }), 'prompt[0]', /string or a list of token ids/);
    // How many prompts a request may batch is a request limit (--max-prompts), checked by the service (http-api.test.ts).
    expect(parseCompletion({ model: 'm', prompt: Array(300).fill('a') }).req.prompts.length).toBe(300);
  });

  it("takes vLLM's top_k -1 as off", () => {
    expect(parseCompletion({ model: 'm', prompt: 'x', top_k: -1 }).req.topK).toBe(0);
  });

  it('names the field of a wrong type, and refuses what it cannot do', () => {
    fails(() => parseCompletion({ prompt: 'x' }), 'model', /model: is required/);
    fails(() => parseCompletion({ model: 'm' }), 'prompt', /is required/);
    fails(() => parseCompletion({ model: 'm', prompt: 'x', temperature: 'hot' }), 'temperature', /must be a number/);
    fails(() => parseCompletion({ model: 'm', prompt: 'x', max_tokens: 2.5 }), 'max_tokens', /must be an integer/);
    fails(() => parseCompletion({ model: 'm', prompt: 'x', stop: [1] }), 'stop', /string or a list of strings/);
    fails(() => parseCompletion({ model: 'm', prompt: 'x', logit_bias: { 5: 'a' } }), 'logit_bias.5', /must be a number/);
    fails(() => parseCompletion({ model: 'm', prompt: 'x', best_of: 3 }), 'best_of', /not supported/);
    fails(() => parseCompletion({ model: 'm', prompt: 'x', suffix: 'y' }), 'suffix', /not supported/);
    fails(() => parseCompletion({ model: 'm', prompt: 'x', echo: true, logprobs: 1 }), 'echo', /prompt logprobs/);
    fails(() => parseCompletion({ model: 'm', prompt: 'x', stream_options: { include_usage: true } }), 'stream_options', /only allowed when stream/);
    fails(() => parseCompletion([]), null, /JSON object/);
  });

  it('writes OpenAI logprobs: token strings, {token: logprob} maps, text offsets', () => {
    const text = (id: number) => ['a', 'bc', ' d'][id]!;
    const lp = completionLogprobs([{ id: 1, logprob: -0.5, top: [{ id: 1, logprob: -0.5 }, { id: 0, logprob: -1 }] }, { id: 2, logprob: -2, top: [] }], text, 3);
    expect(lp).toEqual({ tokens: ['bc', ' d'], token_logprobs: [-0.5, -2], top_logprobs: [{ bc: -0.5, a: -1 }, {}], text_offset: [3, 5] });
  });
});

describe('chat', () => {
  it('maps messages, logprobs / top_logprobs, max_completion_tokens and template options', () => {
    const p = parseChat({
      model: 'm', messages: [{ role: 'user', content: 'hi' }], logprobs: true, top_logprobs: 5, max_completion_tokens: 9,
      add_generation_prompt: false, chat_template_kwargs: { enable_thinking: false },
    });
    expect(p.req.logprobs).toBe(5);
    expect(p.req.maxTokens).toBe(9);
    expect(p.req.prompts).toEqual([{ messages: [{ role: 'user', content: 'hi' }], addGenerationPrompt: false, templateKwargs: { enable_thinking: false } }]);
    expect(parseChat({ model: 'm', messages: [{ role: 'user', content: 'hi' }], logprobs: true }).req.logprobs).toBe(0);
    expect(parseChat({ model: 'm', messages: [{ role: 'user', content: 'hi' }] }).req.logprobs).toBeUndefined();
  });

  it('refuses what a text-only server without tool calling cannot honour, naming the field', () => {
    const m = [{ role: 'user', content: 'hi' }];
    fails(() => parseChat({ model: 'm', messages: [] }), 'messages', /non-empty list/);
    fails(() => parseChat({ model: 'm', messages: [{ content: 'x' }] }), 'messages[0].role', /non-empty string/);
    fails(() => parseChat({ model: 'm', messages: [{ role: 'user', content: 5 }] }), 'messages[0].content', /string, a list of content parts or null/);
    fails(() => parseChat({ model: 'm', messages: m, top_logprobs: 2 }), 'top_logprobs', /needs logprobs/);
    fails(() => parseChat({ model: 'm', messages: m, logprobs: true, top_logprobs: -1 }), 'top_logprobs', />= 0/);  // the upper bound: --max-logprobs (http-api.test.ts)
    fails(() => parseChat({ model: 'm', messages: m, tools: [] }), 'tools', /tool calling is not supported/);
    fails(() => parseChat({ model: 'm', messages: m, response_format: { type: 'json_object' } }), 'response_format', /only \{"type": "text"\}/);
  });

  it('writes chat logprobs with token text and UTF-8 bytes', () => {
    const text = (id: number) => ['é', 'x'][id]!;
    expect(chatLogprobs([{ id: 0, logprob: -0.1, top: [{ id: 1, logprob: -3 }] }], text)).toEqual([
      { token: 'é', logprob: -0.1, bytes: [195, 169], top_logprobs: [{ token: 'x', logprob: -3, bytes: [120] }] },
    ]);
  });
});

describe('a long answer\'s logprobs, a slice at a time', () => {
  it('are the JSON of the whole answer, the event loop given a turn between slices', async () => {
    // Token texts that an object orders first (array indices, ascending), and ones it does not.
    const words = ['a', 'bc', ' d', 'é', '"q"', '\n', '', '7', '12', '01', '-3', '4294967295', '3'];
    const text = (id: number) => words[id % words.length]!;
    for (const length of [0, 1, LOGPROBS_SLICE_TOKENS, 2 * LOGPROBS_SLICE_TOKENS + 7]) {
      const lps: TokenLogprob[] = Array.from({ length }, (_, i) => ({
        // Some tops name one token twice: the first (most likely) stays.
        id: i, logprob: -i / 7, top: [...Array.from({ length: i % 4 }, (_, j) => ({ id: i + j, logprob: -j - 0.25 })), ...(i % 5 === 1 ? [{ id: i, logprob: -9 }] : [])],
      }));
      let turns = 0;
      const between = async () => void turns++;
      expect(await completionLogprobsJson(lps, text, 5, between)).toBe(JSON.stringify(completionLogprobs(lps, text, 5)));
      expect(await chatLogprobsJson(lps, text, between)).toBe(JSON.stringify(chatLogprobs(lps, text)));
      expect(turns, `${length} tokens`).toBe(2 * Math.max(0, Math.ceil(length / LOGPROBS_SLICE_TOKENS) - 1));
    }
  });
});
