// The request lifecycle's table and the sampling rules every entry point shares.
import { describe, expect, it } from 'vitest';

import { FinishReason, RequestStatus, canTransition, finishReasonText, isFinished, transition } from '../../src/protocol/lifecycle.js';
import type { RequestStatus as Status } from '../../src/protocol/lifecycle.js';
import {
  SamplingError, nthSequence, withModelDefaults, parseSamplingNumber, parseSeed, samplingFromWire, samplingToWire, validateSampling, withinContext,
} from '../../src/protocol/sampling.js';

const { QUEUED, RUNNING, PREEMPTED, FINISHED, FAILED, CANCELLED } = RequestStatus;
const ALL: Status[] = [QUEUED, RUNNING, PREEMPTED, FINISHED, FAILED, CANCELLED];

describe('request lifecycle', () => {
  it('has exactly the documented transitions', () => {
    const legal = ALL.flatMap((from) => ALL.filter((to) => canTransition(from, to)).map((to) => `${from}>${to}`));
    expect(legal.sort()).toEqual([
      'preempted>cancelled', 'preempted>failed', 'preempted>finished', 'preempted>queued', 'preempted>running',
      'queued>cancelled', 'queued>failed', 'queued>running',
      'running>cancelled', 'running>failed', 'running>finished', 'running>preempted', 'running>queued',
    ]);
  });

  it('finished, failed and cancelled are terminal; nothing moves out of them', () => {
    expect(ALL.filter(isFinished)).toEqual([FINISHED, FAILED, CANCELLED]);
    for (const from of [FINISHED, FAILED, CANCELLED]) for (const to of ALL) expect(canTransition(from, to)).toBe(false);
    expect(transition(QUEUED, RUNNING)).toBe(RUNNING);
    expect(() => transition(FINISHED, RUNNING)).toThrow(/no transition from finished to running/);
    expect(() => transition(QUEUED, FINISHED)).toThrow(/no transition from queued to finished/);
  });

  it('a finish reason has one short name for the CLI and OpenAI-style output', () => {
    expect(finishReasonText(FinishReason.FINISH_REASON_STOP)).toBe('stop');
    expect(finishReasonText(FinishReason.FINISH_REASON_LENGTH)).toBe('length');
    expect(finishReasonText(FinishReason.FINISH_REASON_UNSPECIFIED)).toBeNull();
  });
});

describe('sampling parameters', () => {
  it('defaults: greedy, no top-k/top-p/min-p, no penalties or bias, what fits the context, no stop strings or ids, no logprobs, a random 64-bit seed', () => {
    const p = validateSampling();
    expect(p).toMatchObject({ temperature: 0, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1, presencePenalty: 0, frequencyPenalty: 0,
      stop: [], stopTokenIds: [], logitBias: [], ignoreEos: false, logprobs: -1 });
    expect(withinContext(p, 100, 512).maxTokens).toBe(412);
    expect(typeof p.seed).toBe('bigint');
    expect(p.seed).not.toBe(validateSampling().seed);
  });

  it("the model's generation_config.json fills what a request leaves out, then the API's own temperature", () => {
    const model = { temperature: 0.6, topP: 0.9, repetitionPenalty: 1.1 };
    expect(withModelDefaults({ topP: 0.5 }, model)).toMatchObject({ temperature: 0.6, topP: 0.5, repetitionPenalty: 1.1 });
    expect(withModelDefaults({}, {}, 1)).toMatchObject({ temperature: 1 });
    expect(withModelDefaults({ temperature: 0 }, model, 1)).toMatchObject({ temperature: 0 });
    expect(nthSequence(validateSampling({ seed: 2n ** 64n - 1n }), 2).seed).toBe(1n);
  });

  it('each broken rule names its field and the value', () => {
    const problem = (o: Parameters<typeof validateSampling>[0]) => {
      try {
        validateSampling(o);
      } catch (err) {
        expect(err).toBeInstanceOf(SamplingError);
        return `${(err as SamplingError).field}: ${(err as SamplingError).problem}`;
      }
      return 'ok';
    };
    expect(problem({ maxTokens: 0 })).toBe('maxTokens: must be an integer >= 1 (got 0)');
    expect(problem({ maxTokens: 2.5 })).toBe('maxTokens: must be an integer >= 1 (got 2.5)');
    expect(problem({ temperature: -0.5 })).toBe('temperature: must be a finite number >= 0 (got -0.5)');
    expect(problem({ temperature: Infinity })).toBe('temperature: must be a finite number >= 0 (got Infinity)');
    expect(problem({ topK: -1 })).toBe('topK: must be an integer >= 0 (got -1)');
    expect(problem({ topP: 0 })).toBe('topP: must be in (0, 1] (got 0)');
    expect(problem({ topP: 1.5 })).toBe('topP: must be in (0, 1] (got 1.5)');
    expect(problem({ stop: ['a', ''] })).toBe('stop[1]: is empty');
    // How many stop strings and how long: the request limits' business (limits.test.ts), not the sampling rules'.
    expect(problem({ stop: ['s', 'x'.repeat(300)] })).toBe('ok');
    expect(problem({ seed: -1 })).toBe('seed: must be an integer in [0, 2^64) (got -1)');
    expect(problem({ seed: 2n ** 64n })).toBe('seed: must be an integer in [0, 2^64) (got 18446744073709551616)');
    expect(problem({ seed: '12x' })).toBe('seed: must be an integer in [0, 2^64) (got 12x)');
    expect(problem({ minP: 1.5 })).toBe('minP: must be in [0, 1] (got 1.5)');
    expect(problem({ repetitionPenalty: 0 })).toBe('repetitionPenalty: must be a finite number > 0 (got 0)');
    expect(problem({ presencePenalty: 2.5 })).toBe('presencePenalty: must be in [-2, 2] (got 2.5)');
    expect(problem({ frequencyPenalty: -3 })).toBe('frequencyPenalty: must be in [-2, 2] (got -3)');
    expect(problem({ logprobs: 21 })).toBe('logprobs: must be an integer in [0, 20] (got 21)');
    expect(problem({ stopTokenIds: [3, -1] })).toBe('stopTokenIds[1]: must be a token id (got -1)');
    expect(problem({ logitBias: [{ token: 3, bias: 101 }] })).toBe('logitBias: the bias of token 3 must be in [-100, 100] (got 101)');
    expect(problem({ logitBias: [{ token: 3, bias: 1 }, { token: 3, bias: 2 }] })).toBe('logitBias: token 3 is listed twice');
    expect(problem({ temperature: 0.7, topK: 40, topP: 0.9, seed: '7', maxTokens: 1, stop: ['x'], minP: 0.1, repetitionPenalty: 1.2,
      presencePenalty: -1, frequencyPenalty: 1, logprobs: 20, stopTokenIds: [5], logitBias: [{ token: 1, bias: -100 }] })).toBe('ok');
    // The vocabulary bounds token ids where it is known.
    expect(() => validateSampling({ stopTokenIds: [512] }, 512)).toThrow('stopTokenIds[0] token id 512 is outside the vocabulary of 512');
    expect(() => validateSampling({ logitBias: [{ token: 600, bias: 1 }] }, 512)).toThrow(/token 600 is outside the vocabulary of 512/);
  });

  it('numbers and seeds from text (CLI flags), seeds from numbers, bigints and decimal strings', () => {
    expect(parseSamplingNumber('topP', '0.25')).toBe(0.25);
    expect(() => parseSamplingNumber('maxTokens', '')).toThrow('maxTokens must be an integer >= 1 (got )');
    expect(() => parseSamplingNumber('topK', 'ten')).toThrow(/topK must be an integer >= 0 \(got ten\)/);
    expect([parseSeed(5), parseSeed(5n), parseSeed('18446744073709551615')]).toEqual([5n, 5n, 2n ** 64n - 1n]);
    expect(() => parseSeed('')).toThrow(SamplingError);
    expect(() => parseSeed(1.5)).toThrow(SamplingError);
  });

  it('the context bounds max tokens; the wire carries the seed as decimal text and back', () => {
    const p = validateSampling({ maxTokens: 100, seed: 2n ** 64n - 2n, stop: ['\n'] });
    expect(withinContext(p, 450, 512).maxTokens).toBe(62);
    expect(withinContext(p, 10, 512).maxTokens).toBe(100);
    const wire = samplingToWire(p);
    expect(wire.seed).toBe('18446744073709551614');
    expect(samplingFromWire({ ...p, ...wire, seed: wire.seed as string })).toEqual(p);
  });
});
