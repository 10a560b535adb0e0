// A sequence's sampling parameters as a step carries them to the engine (native/addon.ts's
// StepSeq): the four every step reads, and the rest under `sampling` only when one differs from
// its neutral value, so a plain decode step stays as cheap to pass as before.
import { MAX_LOGPROBS } from '../native/addon.js';
import type { SamplingExtrasJS, StepLogprobs, StepSeq } from '../native/addon.js';
import type { TokenLogprobs } from '../protocol/api.js';
import type { SamplingParams } from '../protocol/sampling.js';

export type StepSampling = Pick<StepSeq, 'temperature' | 'topK' | 'topP' | 'seed' | 'sampling'>;

/** `promptLen`: the tokens of the prompt proper (a replay feeds prompt and output from position 0). */
export function stepSampling(p: SamplingParams, promptLen: number): StepSampling {
  const out: StepSampling = { temperature: p.temperature, topK: p.topK, topP: p.topP, seed: p.seed };
  const extras: SamplingExtrasJS = {};
  if (p.minP > 0) extras.minP = p.minP;
  if (p.repetitionPenalty !== 1 || p.presencePenalty !== 0 || p.frequencyPenalty !== 0) {
    extras.repetitionPenalty = p.repetitionPenalty;
    extras.presencePenalty = p.presencePenalty;
    extras.frequencyPenalty = p.frequencyPenalty;
    extras.promptLen = promptLen;
  }
  if (p.logitBias.length) {
    extras.logitBiasIds = Int32Array.from(p.logitBias, (b) => b.token);
    extras.logitBiasValues = Float32Array.from(p.logitBias, (b) => b.bias);
  }
  if (p.logprobs >= 0) extras.logprobs = p.logprobs;
  if (Object.keys(extras).length) out.sampling = extras;
  return out;
}

/** Sampled sequence j's token logprob and its `k` top ones, from a step's result. */
export function tokenLogprobs(lp: StepLogprobs, j: number, k: number): TokenLogprobs {
  const at = j * MAX_LOGPROBS;
  return { logprob: lp.sampled[j]!, topIds: Array.from(lp.topIds.subarray(at, at + k)), topLogprobs: Array.from(lp.top.subarray(at, at + k)) };
}
