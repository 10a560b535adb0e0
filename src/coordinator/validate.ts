// Checks a public GenerateRequest and turns it into the prompt ids and the sampling parameters the
// driver runs (their rules: protocol/sampling.ts). Every error names the proto field it is about,
// and becomes INVALID_ARGUMENT.
import type { GenerateRequest } from '../protocol/api.js';
import { SamplingError, validateSampling, withinContext } from '../protocol/sampling.js';
import type { SamplingParams } from '../protocol/sampling.js';

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

/** A sampling field as GenerateRequest names it: maxTokens → max_tokens, stop[2] stays. */
function protoName(field: string): string {
  return field.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

export function validateRequest(m: GenerateRequest, model: ModelFacts): { promptIds: number[]; params: SamplingParams } {
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
  let params: SamplingParams;
  try {
    params = validateSampling({ temperature: m.temperature, topK: m.topK, topP: m.topP, seed: m.seed, maxTokens: m.maxTokens,
      stop: m.stop, ignoreEos: m.ignoreEos });
  } catch (err) {
    if (err instanceof SamplingError) bad(protoName(err.field), err.problem);
    throw err;
  }
  return { promptIds, params: withinContext(params, promptIds.length, model.contextLength) };
}
