// The coordinator behind the HTTP API: each OpenAI request is validated by the same rules and
// request limits as a gRPC one (validateRequest, which tokenizes off the event loop; fields left
// out take generation_config.json's values, then OpenAI's default temperature of 1) and admitted as
// its sequences, prompts x n, through the same request store and router, so it is queued, routed,
// replayed after a failover and cancelled exactly like a gRPC request.
import * as grpc from '@grpc/grpc-js';

import type { TokenTexts } from '../../model/tokenizer-pool.js';
import { FinishReason } from '../../protocol/lifecycle.js';
import { LimitError, checkRequestLimits } from '../../protocol/limits.js';
import { priorityToWire } from '../../protocol/priority.js';
import { InvalidRequestError } from '../api.js';
import type { InferenceApi, RequestInput, ValidRequest } from '../api.js';
import { ApiError } from './errors.js';
import type { ApiErrorKind } from './errors.js';
import type { ServeRequest } from './openai.js';
import type { InferenceService, ServeHandle, ServeSink } from './server.js';

/** OpenAI's API samples at temperature 1 unless told otherwise (or the model's generation_config.json says). */
const OPENAI_TEMPERATURE = 1;

const KIND: Partial<Record<grpc.status, ApiErrorKind>> = {
  [grpc.status.INVALID_ARGUMENT]: 'invalid',
  [grpc.status.UNAUTHENTICATED]: 'unauthenticated',
  [grpc.status.NOT_FOUND]: 'not_found',
  [grpc.status.RESOURCE_EXHAUSTED]: 'busy',
  [grpc.status.UNAVAILABLE]: 'unavailable',
};

/** A gRPC status as the HTTP API reports it. */
export function apiErrorOf(code: grpc.status, details: string): ApiError {
  const kind = KIND[code] ?? 'internal';
  return new ApiError(kind, details, kind === 'invalid' ? details.split(':')[0]! : null);
}

export class CoordinatorService implements InferenceService {
  readonly created = Math.floor(Date.now() / 1000);

  constructor(private readonly api: InferenceApi, readonly metrics?: () => Promise<{ contentType: string; body: string }>) {}

  get modelName(): string {
    return this.api.model.name;
  }

  get contextLength(): number {
    return this.api.model.contextLength;
  }

  serving(): boolean {
    return this.api.serving();
  }

  tokenTexts(): Promise<TokenTexts> {
    const m = this.api.model;
    return m.tokenTexts ? m.tokenTexts() : Promise.reject(new Error('this server has no tokenizer to name logprob tokens'));
  }

  decode(ids: number[], priority?: number): Promise<string> {
    const m = this.api.model;
    return m.decode ? m.decode(ids, priority) : Promise.reject(new Error('this server has no tokenizer to echo token ids'));
  }

  async submit(req: ServeRequest, sink: ServeSink, gone: () => boolean): Promise<ServeHandle | null> {
    const model = this.api.model;
    if (req.model && req.model !== model.name)
      throw new ApiError('not_found', `the model ${JSON.stringify(req.model)} does not exist (this server serves ${JSON.stringify(model.name)})`, 'model');
    const { prompts, model: _name, priority, ...sampling } = req;
    // The class is the GenerateRequest's oneof: its member and which one is set.
    const cls = priority ? priorityToWire(priority) : undefined;
    const oneof = cls ? { ...cls, priority: 'priorityClass' in cls ? 'priorityClass' as const : 'priorityValue' as const } : {};
    const chat = prompts.some((p) => 'messages' in p);
    // The batch as a whole first (--max-prompts: its prompts, and prompts × n sequences), before any
    // prompt is tokenized; each prompt is then checked as one request.
    try {
      checkRequestLimits({ prompts: prompts.length, ...(sampling.n !== undefined ? { n: sampling.n } : {}) }, this.api.limits, model.promptBytes);
    } catch (err) {
      if (err instanceof LimitError) throw ApiError.invalid(err.field, err.message);
      throw err;
    }
    // --max-queue before any prompt is tokenized (admitChoices checks the prompts x n sequences again).
    const full = this.api.queueFull(prompts.length);
    if (full) throw apiErrorOf(full.code, full.details);
    // One prompt at a time: a batch's tokenizing takes turns with other requests' on the tokenizer threads.
    const valid: ValidRequest[] = [];
    for (const [i, p] of prompts.entries()) {
      const input: RequestInput = { ...sampling, model: '', prompt: '', promptIds: [], ignoreEos: sampling.ignoreEos ?? false, stop: sampling.stop ?? [],
        stopTokenIds: sampling.stopTokenIds ?? [], logitBias: sampling.logitBias ?? {}, exact: false, ...oneof } as RequestInput;
      if ('text' in p) input.prompt = p.text;
      else if ('ids' in p) input.promptIds = p.ids;
      else {
        input.messages = p.messages;
        input.addGenerationPrompt = p.addGenerationPrompt;
        input.chatTemplateKwargs = p.templateKwargs;
      }
      try {
        valid.push(await this.api.validate(input, OPENAI_TEMPERATURE));
      } catch (err) {
        if (!(err instanceof InvalidRequestError)) throw err;
        throw ApiError.invalid(this.param(err.field, prompts.length > 1 ? i : -1, chat), err.message);
      }
      if (gone()) return null;
    }
    const n = valid[0]!.n;
    await this.api.admission.turn(valid[0]!.sched.priority);
    if (gone()) return null;
    const admitted = this.api.admitChoices(valid, {
      update: (choice, u) => sink.update({
        choice, tokenIds: u.tokenIds, text: u.text, ...(u.logprobs ? { logprobs: u.logprobs.map((l, k) => ({
          id: u.tokenIds[k]!, logprob: l.logprob, top: l.topIds.map((id, j) => ({ id, logprob: l.topLogprobs[j]! })),
        })) } : {}),
        finishReason: u.finishReason === FinishReason.FINISH_REASON_STOP ? 'stop' : u.finishReason === FinishReason.FINISH_REASON_LENGTH ? 'length' : null,
      }),
      fail: (code, details) => sink.fail(apiErrorOf(code, details)),
    });
    if (!('records' in admitted)) throw apiErrorOf(admitted.code, admitted.details);
    return { promptIds: valid.map((v) => v.promptIds), n, priority: valid[0]!.sched.priority, streamIntervalMs: valid[0]!.sched.cls.streamIntervalMs ?? 0,
      cancel: (why) => admitted.cancel(why) };
  }

  /** The OpenAI request field a validation error is about (`prompt` of a batch: `prompt[i]`; a chat's top count: `top_logprobs`). */
  private param(field: string, batchIndex: number, chat: boolean): string {
    if (batchIndex >= 0 && (field === 'prompt' || field.startsWith('prompt_ids'))) return `prompt[${batchIndex}]`;
    if (chat && field === 'logprobs') return 'top_logprobs';
    if (field === 'priority_class' || field === 'priority_value') return 'priority';
    return field;
  }
}
