// Single-process generation: admit requests while KV blocks last, prefill them, then decode all
// running sequences together, one engine step per token (prefills of newly admitted requests ride
// in the same steps as decodes). This is the reference the distributed path must equal.
import { BlockAllocator } from './block-allocator.js';
import type { Engine } from './engine.js';
import type { TokenLogprobs } from '../protocol/api.js';
import type { FinishReason } from '../protocol/lifecycle.js';
import { validateSampling, withinContext } from '../protocol/sampling.js';
import type { SamplingInput, SamplingParams } from '../protocol/sampling.js';
import { stepSampling, tokenLogprobs } from './step-sampling.js';
import type { StepSampling } from './step-sampling.js';
import { StopChecker } from './stop-checker.js';

export interface TokenizerLike {
  encode(text: string): number[];
  decode(ids: number[]): string;
  eosTokenIds: number[];
}

export interface GenerateRequest extends SamplingInput {
  /** Text, tokenized with the tokenizer's own special-token rules (BOS where it adds one). */
  prompt?: string;
  /** Or ids, used as given. */
  promptIds?: number[];
}

export interface GenerateResult {
  promptIds: number[];
  tokenIds: number[];
  text: string;
  finishReason: FinishReason;
  /** Request start to first sampled token. */
  ttftMs: number;
  /** Tokens after the first, per second of decoding (0 when fewer than 2 tokens). */
  tokensPerS: number;
  /** One per token id when the request asked for logprobs. */
  logprobs?: TokenLogprobs[];
}

export type GenerateEvent =
  | { index: number; type: 'token'; token: number; delta: string }
  | { index: number; type: 'done'; delta: string; result: GenerateResult };

interface Running {
  index: number;
  promptIds: number[];
  params: SamplingParams;
  step: StepSampling;
  stop: StopChecker;
  logprobs?: TokenLogprobs[];
  pos: number;          // tokens already in the KV cache
  next: number[];       // tokens to feed in the next step
  start: number;
  firstAt?: number;
}

export async function* generate(engine: Engine, tokenizer: TokenizerLike,
  requests: GenerateRequest[]): AsyncGenerator<GenerateEvent> {
  const maxPos = engine.maxPosition;
  const allocator = engine.kvGroups();
  const waiting: Running[] = requests.map((req, index) => {
    const { prompt, promptIds: ids, ...sampling } = req;
    const asked = validateSampling(sampling, engine.config.vocabSize);
    const promptIds = ids ? [...ids] : tokenizer.encode(prompt ?? '');
    if (promptIds.length === 0) throw new RangeError(`request ${index}: empty prompt`);
    if (promptIds.length >= maxPos)
      throw new RangeError(`request ${index}: prompt of ${promptIds.length} tokens leaves no room in the model's context of ${maxPos}`);
    const params = withinContext(asked, promptIds.length, maxPos);
    const stop = new StopChecker({ eosTokenIds: tokenizer.eosTokenIds, stopTokenIds: params.stopTokenIds, stop: params.stop,
      maxTokens: params.maxTokens, ignoreEos: params.ignoreEos, decode: (ids) => tokenizer.decode(ids) });
    return { index, promptIds, params, step: stepSampling(params, promptIds.length), stop, pos: 0, next: promptIds, start: performance.now(),
      ...(params.logprobs >= 0 ? { logprobs: [] } : {}) };
  });
  const running: Running[] = [];
  // Reserve a sequence's whole budget (prompt + max output) on admission: no preemption needed.
  const budget = (r: Running) => r.promptIds.length + r.params.maxTokens;
  try {
    while (waiting.length || running.length) {
      // The prompt is the longest step a sequence runs (one prefill, then single tokens).
      while (waiting.length && allocator.canAllocate(waiting[0]!.index, budget(waiting[0]!), waiting[0]!.promptIds.length)) {
        const r = waiting.shift()!;
        allocator.allocate(r.index, budget(r), r.promptIds.length);
        running.push(r);
      }
      if (running.length === 0) {
        const r = waiting[0]!;
        throw new Error(`request ${r.index}: ${allocator.neverFits(budget(r), r.promptIds.length) ?? 'does not fit the KV cache'}`);
      }
      const res = await engine.step({
        seqs: running.map((r) => ({
          tokens: Int32Array.from(r.next),
          pos: r.pos,
          ...allocator.tables(r.index),
          ...r.step,
        })),
      });
      const now = performance.now();
      const finished: Running[] = [];
      for (let i = 0; i < running.length; i++) {
        const r = running[i]!;
        const token = res.sampled[i]!;
        r.pos += r.next.length;
        r.next = [token];
        r.firstAt ??= now;
        const before = r.stop.tokens.length;
        const upd = r.stop.push(token);
        if (r.logprobs && res.logprobs && r.stop.tokens.length > before) r.logprobs.push(tokenLogprobs(res.logprobs, i, r.params.logprobs));
        if (!upd.done) {
          yield { index: r.index, type: 'token', token, delta: upd.delta };
          continue;
        }
        finished.push(r);
        const n = r.stop.tokens.length;
        const decodeMs = now - r.firstAt;
        yield {
          index: r.index, type: 'done', delta: upd.delta,
          result: {
            promptIds: r.promptIds, tokenIds: [...r.stop.tokens], text: r.stop.text, finishReason: upd.finishReason!,
            ttftMs: r.firstAt - r.start, tokensPerS: n > 1 && decodeMs > 0 ? ((n - 1) * 1000) / decodeMs : 0,
            ...(r.logprobs ? { logprobs: r.logprobs } : {}),
          },
        };
      }
      for (const r of finished) {
        allocator.free(r.index);
        running.splice(running.indexOf(r), 1);
      }
    }
  } finally {
    for (const r of running) allocator.free(r.index);
  }
}

/** Runs requests to completion and returns their results in request order. */
export async function generateAll(engine: Engine, tokenizer: TokenizerLike, requests: GenerateRequest[]): Promise<GenerateResult[]> {
  const out: GenerateResult[] = new Array(requests.length);
  for await (const ev of generate(engine, tokenizer, requests)) if (ev.type === 'done') out[ev.index] = ev.result;
  return out;
}
