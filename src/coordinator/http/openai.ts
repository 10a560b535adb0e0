// OpenAI's request and response shapes for /v1/completions and /v1/chat/completions, and the
// translation of a request into nodespeed's own (ServeRequest: the public API's field names).
// Only JSON shapes and OpenAI-specific rules are checked here (types, the chat logprobs /
// top_logprobs pair, best_of, echo); the values are checked where every API's are, and those
// errors name the same snake_case fields OpenAI clients send.
import type { ChatMessage } from '../../model/chat-template.js';
import { ApiError } from './errors.js';

/** Sampling and stopping controls in nodespeed's public field names (proto GenerateRequest, camelCase). */
export interface SamplingRequest {
  maxTokens?: number;
  temperature?: number;
  topP?: number;
  topK?: number;
  minP?: number;
  presencePenalty?: number;
  frequencyPenalty?: number;
  repetitionPenalty?: number;
  seed?: string;
  stop?: string[];
  stopTokenIds?: number[];
  ignoreEos?: boolean;
  /** Top logprobs per token (0 to --max-logprobs); absent: none. */
  logprobs?: number;
  /** Token id -> bias added to its logit. */
  logitBias?: Record<string, number>;
  n?: number;
}

export type ServePrompt = { text: string } | { ids: number[] } | { messages: ChatMessage[]; addGenerationPrompt: boolean; templateKwargs: Record<string, unknown> };

export interface ServeRequest extends SamplingRequest {
  model: string;
  prompts: ServePrompt[];
}

export interface ParsedCompletion {
  kind: 'completion';
  req: ServeRequest;
  stream: boolean;
  includeUsage: boolean;
  echo: boolean;
}

export interface ParsedChat {
  kind: 'chat';
  req: ServeRequest;
  stream: boolean;
  includeUsage: boolean;
}

type Json = Record<string, unknown>;

function bad(param: string, message: string): never {
  throw ApiError.invalid(param, `${param}: ${message}`);
}

function object(body: unknown): Json {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw ApiError.invalid(null, 'the request body must be a JSON object');
  return body as Json;
}

const present = (v: unknown) => v !== undefined && v !== null;

function num(o: Json, key: string): number | undefined {
  const v = o[key];
  if (!present(v)) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v)) bad(key, `must be a number (got ${JSON.stringify(v)})`);
  return v;
}

function int(o: Json, key: string): number | undefined {
  const v = num(o, key);
  if (v !== undefined && !Number.isInteger(v)) bad(key, `must be an integer (got ${v})`);
  return v;
}

function bool(o: Json, key: string): boolean | undefined {
  const v = o[key];
  if (!present(v)) return undefined;
  if (typeof v !== 'boolean') bad(key, `must be a boolean (got ${JSON.stringify(v)})`);
  return v;
}

function str(o: Json, key: string): string | undefined {
  const v = o[key];
  if (!present(v)) return undefined;
  if (typeof v !== 'string') bad(key, `must be a string (got ${JSON.stringify(v)})`);
  return v;
}

function ints(v: unknown, key: string): number[] {
  if (!Array.isArray(v)) bad(key, 'must be a list of integers');
  const at = v.findIndex((x) => typeof x !== 'number' || !Number.isInteger(x));
  if (at >= 0) bad(`${key}[${at}]`, `must be an integer (got ${JSON.stringify(v[at])})`);
  return v as number[];
}

function stops(o: Json): string[] | undefined {
  const v = o.stop;
  if (!present(v)) return undefined;
  const list = typeof v === 'string' ? [v] : v;
  if (!Array.isArray(list) || list.some((s) => typeof s !== 'string')) bad('stop', 'must be a string or a list of strings');
  return list as string[];
}

function logitBias(o: Json): Record<string, number> | undefined {
  const v = o.logit_bias;
  if (!present(v)) return undefined;
  if (typeof v !== 'object' || Array.isArray(v)) bad('logit_bias', 'must be an object mapping token ids to biases');
  const out: Record<string, number> = {};
  for (const [k, b] of Object.entries(v as Json)) {
    if (typeof b !== 'number' || !Number.isFinite(b)) bad(`logit_bias.${k}`, `must be a number (got ${JSON.stringify(b)})`);
    out[k] = b;
  }
  return out;
}

function seed(o: Json): string | undefined {
  const v = o.seed;
  if (!present(v)) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v)) bad('seed', `must be an integer (got ${JSON.stringify(v)})`);
  return BigInt(v).toString();
}

/** The controls both endpoints share (OpenAI's and the vLLM-style extras). */
function sampling(o: Json, maxTokensKey: string): SamplingRequest {
  const s: SamplingRequest = {};
  const set = <K extends keyof SamplingRequest>(k: K, v: SamplingRequest[K] | undefined) => {
    if (v !== undefined) s[k] = v;
  };
  set('maxTokens', int(o, maxTokensKey));
  set('temperature', num(o, 'temperature'));
  set('topP', num(o, 'top_p'));
  // vLLM's clients send top_k -1 for "off" (nodespeed's 0).
  const topK = int(o, 'top_k');
  set('topK', topK === -1 ? 0 : topK);
  set('minP', num(o, 'min_p'));
  set('presencePenalty', num(o, 'presence_penalty'));
  set('frequencyPenalty', num(o, 'frequency_penalty'));
  set('repetitionPenalty', num(o, 'repetition_penalty'));
  set('seed', seed(o));
  set('stop', stops(o));
  if (present(o.stop_token_ids)) s.stopTokenIds = ints(o.stop_token_ids, 'stop_token_ids');
  set('ignoreEos', bool(o, 'ignore_eos'));
  set('logitBias', logitBias(o));
  set('n', int(o, 'n'));
  const bestOf = int(o, 'best_of');
  if (bestOf !== undefined && bestOf !== (s.n ?? 1)) bad('best_of', 'is not supported (only best_of equal to n)');
  return s;
}

function model(o: Json): string {
  const m = str(o, 'model');
  if (m === undefined) bad('model', 'is required');
  return m;
}

function streamFlags(o: Json): { stream: boolean; includeUsage: boolean } {
  const stream = bool(o, 'stream') ?? false;
  const so = o.stream_options;
  let includeUsage = false;
  if (present(so)) {
    if (typeof so !== 'object' || Array.isArray(so)) bad('stream_options', 'must be an object');
    if (!stream) bad('stream_options', 'is only allowed when stream is true');
    includeUsage = bool(so as Json, 'include_usage') ?? false;
  }
  return { stream, includeUsage };
}

function prompts(v: unknown): ServePrompt[] {
  if (typeof v === 'string') return [{ text: v }];
  if (!Array.isArray(v) || v.length === 0) bad('prompt', 'must be a string, a list of strings, a list of token ids or a list of such lists');
  if (v.every((x) => typeof x === 'number')) return [{ ids: ints(v, 'prompt') }];
  // How many a request may batch is a request limit (--max-prompts), checked before any is tokenized.
  return v.map((p, i) => {
    if (typeof p === 'string') return { text: p };
    if (Array.isArray(p)) return { ids: ints(p, `prompt[${i}]`) };
    return bad(`prompt[${i}]`, 'must be a string or a list of token ids');
  });
}

export function parseCompletion(body: unknown): ParsedCompletion {
  const o = object(body);
  const m = model(o);
  if (!present(o.prompt)) bad('prompt', 'is required');
  const suffix = str(o, 'suffix');
  if (suffix) bad('suffix', 'is not supported');
  const s = sampling(o, 'max_tokens');
  const lp = int(o, 'logprobs');
  if (lp !== undefined && lp < 0) bad('logprobs', `must be an integer >= 0 (got ${lp})`);
  if (lp !== undefined) s.logprobs = lp;
  const echo = bool(o, 'echo') ?? false;
  if (echo && lp !== undefined) bad('echo', 'together with logprobs needs prompt logprobs, which this server does not compute');
  return { kind: 'completion', req: { model: m, prompts: prompts(o.prompt), ...s }, ...streamFlags(o), echo };
}

function messages(v: unknown): ChatMessage[] {
  if (!Array.isArray(v) || v.length === 0) bad('messages', 'must be a non-empty list of messages');
  return v.map((m, i) => {
    if (typeof m !== 'object' || m === null || Array.isArray(m)) bad(`messages[${i}]`, 'must be an object');
    const msg = m as Json;
    if (typeof msg.role !== 'string' || !msg.role) bad(`messages[${i}].role`, 'must be a non-empty string');
    const c = msg.content;
    if (c !== null && c !== undefined && typeof c !== 'string' && !Array.isArray(c))
      bad(`messages[${i}].content`, 'must be a string, a list of content parts or null');
    return { ...msg, role: msg.role, content: (c ?? null) as ChatMessage['content'] };
  });
}

export function parseChat(body: unknown): ParsedChat {
  const o = object(body);
  const m = model(o);
  const msgs = messages(o.messages);
  if (present(o.tools) || present(o.tool_choice) || present(o.functions)) bad(present(o.tools) ? 'tools' : present(o.tool_choice) ? 'tool_choice' : 'functions', 'tool calling is not supported');
  const rf = o.response_format;
  if (present(rf) && (rf as Json).type !== 'text') bad('response_format', 'only {"type": "text"} is supported');
  const s = sampling(o, present(o.max_completion_tokens) ? 'max_completion_tokens' : 'max_tokens');
  const want = bool(o, 'logprobs') ?? false;
  const top = int(o, 'top_logprobs');
  if (top !== undefined && !want) bad('top_logprobs', 'needs logprobs set to true');
  // The upper bound is the request limits' (--max-logprobs), checked with the other APIs'.
  if (top !== undefined && top < 0) bad('top_logprobs', `must be an integer >= 0 (got ${top})`);
  if (want) s.logprobs = top ?? 0;
  const kwargs = o.chat_template_kwargs;
  if (present(kwargs) && (typeof kwargs !== 'object' || Array.isArray(kwargs))) bad('chat_template_kwargs', 'must be an object');
  const prompt: ServePrompt = {
    messages: msgs,
    addGenerationPrompt: bool(o, 'add_generation_prompt') ?? true,
    templateKwargs: (kwargs ?? {}) as Record<string, unknown>,
  };
  return { kind: 'chat', req: { model: m, prompts: [prompt], ...s }, ...streamFlags(o) };
}

// ---- responses ----

export type FinishReasonName = 'stop' | 'length';

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export function usage(prompt: number, completion: number): Usage {
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
}

/** One generated token's logprob and the most likely alternatives, as the sampler reported them. */
export interface TokenLogprob {
  id: number;
  logprob: number;
  top: { id: number; logprob: number }[];
}

export interface CompletionLogprobs {
  tokens: string[];
  token_logprobs: number[];
  top_logprobs: Record<string, number>[];
  text_offset: number[];
}

/** /v1/completions logprobs: token strings, their logprobs, {token: logprob} maps and text offsets. */
export function completionLogprobs(lps: TokenLogprob[], tokenText: (id: number) => string, offset0: number): CompletionLogprobs {
  const out: CompletionLogprobs = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
  let off = offset0;
  for (const t of lps) {
    const s = tokenText(t.id);
    out.tokens.push(s);
    out.token_logprobs.push(t.logprob);
    const top: Record<string, number> = {};
    for (const x of t.top) top[tokenText(x.id)] ??= x.logprob;
    out.top_logprobs.push(top);
    out.text_offset.push(off);
    off += s.length;
  }
  return out;
}

export interface ChatTokenLogprob {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs: { token: string; logprob: number; bytes: number[] }[];
}

/** /v1/chat/completions logprobs.content entries. */
export function chatLogprobs(lps: TokenLogprob[], tokenText: (id: number) => string): ChatTokenLogprob[] {
  const entry = (id: number, logprob: number) => {
    const token = tokenText(id);
    return { token, logprob, bytes: [...Buffer.from(token, 'utf8')] };
  };
  return lps.map((t) => ({ ...entry(t.id, t.logprob), top_logprobs: t.top.map((x) => entry(x.id, x.logprob)) }));
}

// ---- a long answer's logprobs, rendered a slice at a time ----
//
// A non-streamed answer carries every token's logprobs at once: n × max_tokens × (top + 1) token
// strings and numbers, seconds of work for the largest the request limits admit. It is rendered as
// JSON text a slice of tokens at a time, the event loop serving every other stream between slices.

/** Tokens per slice: a few milliseconds of rendering with 20 top logprobs each. */
export const LOGPROBS_SLICE_TOKENS = 128;

/** Gives the event loop a turn (what runs between slices). */
export const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** A JSON array's elements without its brackets. */
const elements = (a: unknown[]) => JSON.stringify(a).slice(1, -1);

/** Hands `lps` to `render` slice by slice, awaiting `between` after each slice but the last. */
async function sliced(lps: TokenLogprob[], between: () => Promise<void>, render: (slice: TokenLogprob[]) => void): Promise<void> {
  for (let at = 0; at < lps.length; at += LOGPROBS_SLICE_TOKENS) {
    if (at > 0) await between();
    render(lps.slice(at, at + LOGPROBS_SLICE_TOKENS));
  }
}

/** A canonical array index ("0", "17"): an object holds such keys first, ascending, and JSON.stringify writes them so. */
const isIndexKey = (k: string) => /^(?:0|[1-9]\d{0,9})$/.test(k) && Number(k) < 2 ** 32 - 1;

/**
 * A token's top_logprobs map as JSON.stringify writes the object completionLogprobs builds, without
 * building it: objects keyed by thousands of different token texts cost V8 a new shape per key.
 */
function topLogprobsJson(top: TokenLogprob['top'], tokenText: (id: number) => string): string {
  const seen: string[] = [];
  const index: [number, string][] = [];
  const named: string[] = [];
  for (const x of top) {
    const k = tokenText(x.id);
    if (seen.includes(k)) continue;  // the first, most likely, wins (??=)
    seen.push(k);
    const entry = `${JSON.stringify(k)}:${JSON.stringify(x.logprob)}`;
    if (isIndexKey(k)) index.push([Number(k), entry]);
    else named.push(entry);
  }
  index.sort((a, b) => a[0] - b[0]);
  return `{${[...index.map((e) => e[1]), ...named].join(',')}}`;
}

/** JSON.stringify(completionLogprobs(lps, tokenText, offset0)), rendered a slice at a time. */
export async function completionLogprobsJson(lps: TokenLogprob[], tokenText: (id: number) => string, offset0: number,
  between: () => Promise<void> = nextTurn): Promise<string> {
  const cols: Record<keyof CompletionLogprobs, string[]> = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
  let offset = offset0;
  await sliced(lps, between, (slice) => {
    for (const t of slice) {
      const text = tokenText(t.id);
      cols.tokens.push(JSON.stringify(text));
      cols.token_logprobs.push(JSON.stringify(t.logprob));
      cols.top_logprobs.push(topLogprobsJson(t.top, tokenText));
      cols.text_offset.push(String(offset));
      offset += text.length;
    }
  });
  return jsonObject((Object.keys(cols) as (keyof CompletionLogprobs)[]).map((k) => [k, `[${cols[k].join(',')}]`]));
}

/** JSON.stringify(chatLogprobs(lps, tokenText)), rendered a slice at a time. */
export async function chatLogprobsJson(lps: TokenLogprob[], tokenText: (id: number) => string, between: () => Promise<void> = nextTurn): Promise<string> {
  const parts: string[] = [];
  await sliced(lps, between, (slice) => void parts.push(elements(chatLogprobs(slice, tokenText))));
  return `[${parts.join(',')}]`;
}

/** A JSON object from its fields' names and their values already rendered as JSON text. */
export function jsonObject(fields: [string, string][]): string {
  return `{${fields.map(([k, v]) => `${JSON.stringify(k)}:${v}`).join(',')}}`;
}
