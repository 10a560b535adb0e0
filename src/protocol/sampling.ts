// A request's sampling and stopping parameters: one typed record, checked by one set of rules
// where a request enters (the gRPC API, the CLI's flags, the in-process engine API), then carried
// as it is to the replica's driver (Submit.params) and the engine. Its fields are control.proto's
// SamplingParams: a new parameter is added there (the type follows) and gets its rule and default
// here. The seed is a bigint here and a decimal string on the wire.
import { randomBytes } from 'node:crypto';

import type { SamplingParams as WireSamplingParams, SamplingParamsIn } from './generated/nodespeed/control/v1/SamplingParams.js';

export type SamplingParams = Omit<WireSamplingParams, 'seed'> & { seed: bigint };

/** What a caller gives: every field optional (SAMPLING_DEFAULTS), the seed as a number, bigint or decimal string. */
export type SamplingInput = Partial<Omit<SamplingParams, 'seed'>> & { seed?: number | bigint | string | null };

/**
 * The defaults, defined once: greedy, no top-k / top-p / min-p, no penalties or bias, as many tokens
 * as the model's context leaves (withinContext() makes that a number), no stop strings or ids, no
 * logprobs; the seed is random. A model's generation_config.json may change the sampling ones
 * (modelDefaults()).
 */
export const SAMPLING_DEFAULTS = {
  temperature: 0, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1, presencePenalty: 0, frequencyPenalty: 0,
  maxTokens: Number.MAX_SAFE_INTEGER, ignoreEos: false, logprobs: -1,
} as const;
/** The most top logprobs a token may ask for (OpenAI's limit), and the most logit-bias entries a request may carry. */
export const MAX_LOGPROBS = 20;
export const MAX_LOGIT_BIAS = 1024;
export const MAX_STOP_TOKEN_IDS = 64;
// Stop strings (how many, how long in total) are bounded where a request enters a server, by the
// request limits (protocol/limits.ts, --max-stop-strings / --max-stop-chars).

/** A parameter that breaks its rule: `field` (camelCase, `stop[i]` for one stop string) and what is wrong. */
export class SamplingError extends RangeError {
  constructor(readonly field: string, readonly problem: string) {
    super(`${field} ${problem}`);
    this.name = 'SamplingError';
  }
}

const U64_END = 1n << 64n;

/** The numeric fields' rules: what the value must be, and the test. */
const RULES = {
  temperature: { must: 'be a finite number >= 0', ok: (v: number) => Number.isFinite(v) && v >= 0 },
  topK: { must: 'be an integer >= 0', ok: (v: number) => Number.isInteger(v) && v >= 0 },
  topP: { must: 'be in (0, 1]', ok: (v: number) => v > 0 && v <= 1 },
  maxTokens: { must: 'be an integer >= 1', ok: (v: number) => Number.isInteger(v) && v >= 1 },
  minP: { must: 'be in [0, 1]', ok: (v: number) => v >= 0 && v <= 1 },
  repetitionPenalty: { must: 'be a finite number > 0', ok: (v: number) => Number.isFinite(v) && v > 0 },
  presencePenalty: { must: 'be in [-2, 2]', ok: (v: number) => v >= -2 && v <= 2 },
  frequencyPenalty: { must: 'be in [-2, 2]', ok: (v: number) => v >= -2 && v <= 2 },
  logprobs: { must: `be an integer in [0, ${MAX_LOGPROBS}]`, ok: (v: number) => Number.isInteger(v) && v >= 0 && v <= MAX_LOGPROBS },
};
export type NumericSamplingField = keyof typeof RULES;

/** One numeric field from a number or its text (a CLI flag); throws SamplingError naming it. */
export function parseSamplingNumber(field: NumericSamplingField, raw: unknown): number {
  const v = typeof raw === 'string' ? (raw.trim() === '' ? NaN : Number(raw)) : raw;
  if (typeof v !== 'number' || !RULES[field].ok(v)) throw new SamplingError(field, `must ${RULES[field].must} (got ${String(raw)})`);
  return v;
}

/** The seed from a number, bigint or decimal text; absent (undefined or null) draws a random one. */
// Random seeds are drawn from a pool filled 512 at a time: one getrandom call per request cost as
// much as routing it under a flood.
let seedPool = Buffer.alloc(0);
let seedAt = 0;
function randomSeed(): bigint {
  if (seedAt + 8 > seedPool.length) {
    seedPool = randomBytes(4096);
    seedAt = 0;
  }
  const s = seedPool.readBigUInt64LE(seedAt);
  seedAt += 8;
  return s;
}

export function parseSeed(raw: unknown): bigint {
  if (raw === undefined || raw === null) return randomSeed();
  let s: bigint | undefined;
  if (typeof raw === 'bigint') s = raw;
  else if (typeof raw === 'number' && Number.isSafeInteger(raw)) s = BigInt(raw);
  else if (typeof raw === 'string' && /^\d+$/.test(raw)) s = BigInt(raw);
  if (s === undefined || s < 0n || s >= U64_END) throw new SamplingError('seed', `must be an integer in [0, 2^64) (got ${String(raw)})`);
  return s;
}

/** Token ids checked as ids (integers >= 0, below `vocab` when given). */
function tokenIds(field: string, raw: unknown, vocab: number | undefined, max: number): number[] {
  if (!Array.isArray(raw)) throw new SamplingError(field, 'must be a list of token ids');
  if (raw.length > max) throw new SamplingError(field, `has ${raw.length} entries; at most ${max}`);
  raw.forEach((t, i) => {
    if (!Number.isInteger(t) || (t as number) < 0) throw new SamplingError(`${field}[${i}]`, `must be a token id (got ${String(t)})`);
    if (vocab !== undefined && (t as number) >= vocab) throw new SamplingError(`${field}[${i}]`, `token id ${String(t)} is outside the vocabulary of ${vocab}`);
  });
  return [...(raw as number[])];
}

function logitBias(raw: unknown, vocab: number | undefined): SamplingParams['logitBias'] {
  if (!Array.isArray(raw)) throw new SamplingError('logitBias', 'must be a list of {token, bias}');
  if (raw.length > MAX_LOGIT_BIAS) throw new SamplingError('logitBias', `has ${raw.length} entries; at most ${MAX_LOGIT_BIAS}`);
  const seen = new Set<number>();
  return raw.map((e: { token?: unknown; bias?: unknown }) => {
    const t = e?.token, b = e?.bias;
    if (!Number.isInteger(t) || (t as number) < 0) throw new SamplingError('logitBias', `token ${String(t)} is not a token id`);
    if (vocab !== undefined && (t as number) >= vocab) throw new SamplingError('logitBias', `token ${String(t)} is outside the vocabulary of ${vocab}`);
    if (typeof b !== 'number' || !(b >= -100 && b <= 100)) throw new SamplingError('logitBias', `the bias of token ${String(t)} must be in [-100, 100] (got ${String(b)})`);
    if (seen.has(t as number)) throw new SamplingError('logitBias', `token ${String(t)} is listed twice`);
    seen.add(t as number);
    return { token: t as number, bias: b };
  });
}

/**
 * Fills the defaults and checks every field; the first broken rule throws a SamplingError. `vocab`
 * (when known) bounds the token ids of stopTokenIds and logitBias.
 */
export function validateSampling(o: SamplingInput = {}, vocab?: number): SamplingParams {
  const d = SAMPLING_DEFAULTS;
  const num = (f: NumericSamplingField & keyof typeof d) => (o[f] === undefined || o[f] === null ? d[f] : parseSamplingNumber(f, o[f]));
  const stop = o.stop ?? [];
  if (!Array.isArray(stop)) throw new SamplingError('stop', 'must be a list of strings');
  stop.forEach((s, i) => {
    if (typeof s !== 'string') throw new SamplingError(`stop[${i}]`, 'must be a string');
    if (s.length === 0) throw new SamplingError(`stop[${i}]`, 'is empty');
  });
  const logprobs = o.logprobs === undefined || o.logprobs === null || o.logprobs === -1 ? -1 : parseSamplingNumber('logprobs', o.logprobs);
  return {
    temperature: num('temperature'), topK: num('topK'), topP: num('topP'), minP: num('minP'), seed: parseSeed(o.seed),
    maxTokens: num('maxTokens'), stop: [...stop], ignoreEos: o.ignoreEos ?? d.ignoreEos,
    repetitionPenalty: num('repetitionPenalty'), presencePenalty: num('presencePenalty'), frequencyPenalty: num('frequencyPenalty'),
    stopTokenIds: tokenIds('stopTokenIds', o.stopTokenIds ?? [], vocab, MAX_STOP_TOKEN_IDS),
    logitBias: logitBias(o.logitBias ?? [], vocab), logprobs,
  };
}

/** A model's own defaults (generation_config.json) for what a request leaves out. */
export interface ModelSamplingDefaults {
  temperature?: number;
  topK?: number;
  topP?: number;
  minP?: number;
  repetitionPenalty?: number;
}

/** The sampling fields of generation_config.json (model/config.ts's GenerationConfig has them). */
export type GenerationSampling = ModelSamplingDefaults & { doSample?: boolean };

/**
 * generation_config.json's sampling values, the defaults of requests that leave them out (as
 * transformers and vLLM apply them); its temperature only where sampling is on (do_sample false
 * means greedy in transformers).
 */
export function samplingDefaults(g: GenerationSampling): ModelSamplingDefaults {
  const d: ModelSamplingDefaults = {};
  if (g.temperature !== undefined && g.doSample !== false) d.temperature = g.temperature;
  if (g.topK !== undefined) d.topK = g.topK;
  if (g.topP !== undefined) d.topP = g.topP;
  if (g.minP !== undefined) d.minP = g.minP;
  if (g.repetitionPenalty !== undefined) d.repetitionPenalty = g.repetitionPenalty;
  return d;
}

/**
 * `o` with the model's defaults filled in where it leaves a field out, as transformers and vLLM
 * apply generation_config.json; `apiTemperature` is the API's own default when the model has none
 * (OpenAI's API: 1; nodespeed's: greedy).
 */
export function withModelDefaults(o: SamplingInput, model: ModelSamplingDefaults, apiTemperature: number = SAMPLING_DEFAULTS.temperature): SamplingInput {
  const out: SamplingInput = { ...o };
  const absent = (v: unknown) => v === undefined || v === null;
  if (absent(out.temperature)) out.temperature = model.temperature ?? apiTemperature;
  for (const f of ['topK', 'topP', 'minP', 'repetitionPenalty'] as const) if (absent(out[f]) && model[f] !== undefined) out[f] = model[f];
  return out;
}

/** Sequence i of a request's n: the same parameters, seed + i (wrapping at 2^64). */
export function nthSequence(p: SamplingParams, i: number): SamplingParams {
  return i === 0 ? p : { ...p, seed: (p.seed + BigInt(i)) % U64_END };
}

/** The parameters of a prompt of `promptTokens`: the model's context bounds the output too (that ends as LENGTH). */
export function withinContext(p: SamplingParams, promptTokens: number, contextLength: number): SamplingParams {
  return { ...p, maxTokens: Math.min(p.maxTokens, contextLength - promptTokens) };
}

export function samplingToWire(p: SamplingParams): SamplingParamsIn {
  return { ...p, seed: p.seed.toString() };
}

export function samplingFromWire(w: WireSamplingParams): SamplingParams {
  return { ...w, seed: BigInt(w.seed) };
}
