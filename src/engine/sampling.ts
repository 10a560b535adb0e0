// Validation of per-request sampling parameters (the fields of ns::SamplingParams plus the
// stopping rules), with errors that name the field.
import { randomBytes } from 'node:crypto';

export interface SamplingOptions {
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number | bigint;
  maxTokens?: number;
  stop?: string[];
  ignoreEos?: boolean;
}

export interface SamplingParams {
  temperature: number;
  topK: number;
  topP: number;
  seed: bigint;
  maxTokens: number;
  stop: string[];
  ignoreEos: boolean;
}

export const DEFAULT_MAX_TOKENS = 128;

/** Fills defaults (greedy, no top-k/p, a random seed, 128 tokens) and checks every field. */
export function validateSampling(o: SamplingOptions = {}): SamplingParams {
  const temperature = o.temperature ?? 0;
  if (typeof temperature !== 'number' || !Number.isFinite(temperature) || temperature < 0)
    throw new RangeError(`temperature must be a finite number >= 0 (got ${String(o.temperature)})`);
  const topK = o.topK ?? 0;
  if (!Number.isInteger(topK) || topK < 0) throw new RangeError(`topK must be an integer >= 0 (got ${String(o.topK)})`);
  const topP = o.topP ?? 1;
  if (typeof topP !== 'number' || !(topP > 0 && topP <= 1)) throw new RangeError(`topP must be in (0, 1] (got ${String(o.topP)})`);
  let seed: bigint;
  if (o.seed === undefined) seed = randomBytes(8).readBigUInt64LE(0);
  else if (typeof o.seed === 'bigint') seed = o.seed;
  else if (Number.isSafeInteger(o.seed)) seed = BigInt(o.seed);
  else throw new RangeError(`seed must be a non-negative integer (got ${String(o.seed)})`);
  if (seed < 0n || seed >= 1n << 64n) throw new RangeError(`seed must be in [0, 2^64) (got ${seed})`);
  const maxTokens = o.maxTokens ?? DEFAULT_MAX_TOKENS;
  if (!Number.isInteger(maxTokens) || maxTokens < 1) throw new RangeError(`maxTokens must be an integer >= 1 (got ${String(o.maxTokens)})`);
  const stop = o.stop ?? [];
  if (!Array.isArray(stop) || stop.some((s) => typeof s !== 'string' || s.length === 0))
    throw new RangeError('stop must be a list of non-empty strings');
  return { temperature, topK, topP, seed, maxTokens, stop: [...stop], ignoreEos: o.ignoreEos ?? false };
}
