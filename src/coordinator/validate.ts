// Checks a public GenerateRequest and turns it into the prompt ids and parameters the driver
// runs. Every error names the proto field it is about, and becomes INVALID_ARGUMENT.
import { randomBytes } from 'node:crypto';

import type { GenerateRequest } from '../protocol/api.js';
import type { RequestParams } from './requests.js';

export const DEFAULT_MAX_TOKENS = 128;

export class InvalidRequestError extends Error {
  constructor(readonly field: string, message: string) {
    super(`${field}: ${message}`);
    this.name = 'InvalidRequestError';
  }
}

export interface ModelFacts {
  name: string;
  contextLength: number;
  vocabSize: number;
  encode(text: string): number[];
}

function bad(field: string, message: string): never {
  throw new InvalidRequestError(field, message);
}

export function parseSeed(v: unknown): bigint {
  if (v === undefined || v === null || v === '') return randomBytes(8).readBigUInt64LE(0);
  try {
    const s = BigInt(v as string | number | bigint);
    if (s >= 0n && s < 1n << 64n) return s;
  } catch {
    /* fall through */
  }
  return bad('seed', `must be an integer in [0, 2^64) (got ${String(v)})`);
}

export function validateRequest(m: GenerateRequest, model: ModelFacts): { promptIds: number[]; params: RequestParams } {
  if (m.model && m.model !== model.name) bad('model', `unknown model "${m.model}" (this server serves "${model.name}")`);
  const ids = m.promptIds ?? [];
  if (m.prompt && ids.length) bad('prompt', 'give either prompt or prompt_ids, not both');
  let promptIds: number[];
  if (ids.length) {
    const at = ids.findIndex((t) => !Number.isInteger(t) || t < 0 || t >= model.vocabSize);
    if (at >= 0) bad(`prompt_ids[${at}]`, `token id ${ids[at]} is outside the vocabulary of ${model.vocabSize}`);
    promptIds = [...ids];
  } else {
    if (!m.prompt) bad('prompt', 'is empty');
    promptIds = model.encode(m.prompt);
    if (promptIds.length === 0) bad('prompt', 'tokenizes to no tokens');
  }
  if (promptIds.length >= model.contextLength)
    bad('prompt', `is ${promptIds.length} tokens, which leaves no room in the model's context of ${model.contextLength}`);
  const maxTokens = m.maxTokens ?? DEFAULT_MAX_TOKENS;
  if (!Number.isInteger(maxTokens) || maxTokens < 1) bad('max_tokens', `must be >= 1 (got ${maxTokens})`);
  const temperature = m.temperature ?? 0;
  if (!Number.isFinite(temperature) || temperature < 0) bad('temperature', `must be >= 0 (got ${temperature})`);
  const topP = m.topP ?? 1;
  if (!(topP > 0 && topP <= 1)) bad('top_p', `must be in (0, 1] (got ${topP})`);
  const topK = m.topK ?? 0;
  const stop = m.stop ?? [];
  const empty = stop.findIndex((s) => s.length === 0);
  if (empty >= 0) bad(`stop[${empty}]`, 'is empty');
  return {
    promptIds,
    params: {
      temperature, topK, topP, seed: parseSeed(m.seed),
      // The context bounds the output too; that ends as 'length' like max_tokens.
      maxTokens: Math.min(maxTokens, model.contextLength - promptIds.length),
      stop: [...stop], ignoreEos: m.ignoreEos ?? false,
    },
  };
}
