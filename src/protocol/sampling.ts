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

/** The defaults, defined once: greedy, no top-k/top-p, 128 tokens, no stop strings; the seed is random. */
export const SAMPLING_DEFAULTS = { temperature: 0, topK: 0, topP: 1, maxTokens: 128, ignoreEos: false } as const;
export const DEFAULT_MAX_TOKENS = SAMPLING_DEFAULTS.maxTokens;

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
};
export type NumericSamplingField = keyof typeof RULES;

/** One numeric field from a number or its text (a CLI flag); throws SamplingError naming it. */
export function parseSamplingNumber(field: NumericSamplingField, raw: unknown): number {
  const v = typeof raw === 'string' ? (raw.trim() === '' ? NaN : Number(raw)) : raw;
  if (typeof v !== 'number' || !RULES[field].ok(v)) throw new SamplingError(field, `must ${RULES[field].must} (got ${String(raw)})`);
  return v;
}

/** The seed from a number, bigint or decimal text; absent (undefined or null) draws a random one. */
export function parseSeed(raw: unknown): bigint {
  if (raw === undefined || raw === null) return randomBytes(8).readBigUInt64LE(0);
  let s: bigint | undefined;
  if (typeof raw === 'bigint') s = raw;
  else if (typeof raw === 'number' && Number.isSafeInteger(raw)) s = BigInt(raw);
  else if (typeof raw === 'string' && /^\d+$/.test(raw)) s = BigInt(raw);
  if (s === undefined || s < 0n || s >= U64_END) throw new SamplingError('seed', `must be an integer in [0, 2^64) (got ${String(raw)})`);
  return s;
}

/** Fills the defaults and checks every field; the first broken rule throws a SamplingError. */
export function validateSampling(o: SamplingInput = {}): SamplingParams {
  const d = SAMPLING_DEFAULTS;
  const maxTokens = parseSamplingNumber('maxTokens', o.maxTokens ?? d.maxTokens);
  const temperature = parseSamplingNumber('temperature', o.temperature ?? d.temperature);
  const topK = parseSamplingNumber('topK', o.topK ?? d.topK);
  const topP = parseSamplingNumber('topP', o.topP ?? d.topP);
  const stop = o.stop ?? [];
  if (!Array.isArray(stop)) throw new SamplingError('stop', 'must be a list of strings');
  stop.forEach((s, i) => {
    if (typeof s !== 'string') throw new SamplingError(`stop[${i}]`, 'must be a string');
    if (s.length === 0) throw new SamplingError(`stop[${i}]`, 'is empty');
  });
  return { temperature, topK, topP, seed: parseSeed(o.seed), maxTokens, stop: [...stop], ignoreEos: o.ignoreEos ?? d.ignoreEos };
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
