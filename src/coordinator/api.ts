// The public service nodespeed.v1.Inference: validation (INVALID_ARGUMENT naming the proto field;
// the sampling rules are protocol/sampling.ts's, the limits protocol/limits.ts's, the priority's
// protocol/priority.ts's and the server's classes), admission (RESOURCE_EXHAUSTED when the queue is
// full, or when no replica the request's class may use can take it), optional bearer-token auth,
// streaming of the driver's tokens, and cancellation/deadlines propagated to the driver so it frees
// the KV blocks.
import * as grpc from '@grpc/grpc-js';

import type {
  ClusterStatusMsg, CompleteResponseIn, FailoverCountersMsg, FailureStatusMsg, GenerateRequest, GenerateResponseIn, InferenceHandlers, QuarantinedRequestMsg,
  TokenLogprobs,
} from '../protocol/api.js';
import { FinishReason, RequestStatus } from '../protocol/lifecycle.js';
import { LIMIT_FLAGS, LimitError, checkRequestLimits } from '../protocol/limits.js';
import type { RequestLimits, RequestSize } from '../protocol/limits.js';
import { PriorityError, parsePriority } from '../protocol/priority.js';
import type { Priority } from '../protocol/priority.js';
import { SamplingError, nthSequence, validateSampling, withModelDefaults, withinContext } from '../protocol/sampling.js';
import type { ModelSamplingDefaults, SamplingParams } from '../protocol/sampling.js';
import { ChatTemplateError } from '../model/chat-template.js';
import type { ChatMessage, ChatRenderOptions } from '../model/chat-template.js';
import type { TokenTexts } from '../model/tokenizer-pool.js';
import type { ClassTable } from './classes.js';
import type { ClassCounters } from './class-stats.js';
import { groupOf } from './layout.js';
import type { Membership } from './membership.js';
import type { ApiMetrics } from './metrics.js';
import { RequestRecord } from './requests.js';
import type { RequestSink, RequestStore, RequestUpdate } from './requests.js';
import { bearerMatches } from './public-auth.js';
import { AdmissionQueue } from './admission.js';
import { CoalescingWriter, joinTokenRun, mergeByKey } from '../protocol/coalesce.js';
import { nowMs, requestTrace } from '../protocol/request-trace.js';
import type { Route, Router } from './router.js';

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
  /**
   * Tokenizes off the event loop (model/tokenizer-pool.ts), the request's class priority first
   * (lower goes first) where prompts wait for a tokenizer thread.
   */
  encode(text: string, priority?: number): Promise<number[]>;
  /** A chat rendered with the model's chat template and tokenized, off the event loop (rejects with ChatTemplateError); priority as encode's. */
  encodeChat?(messages: ChatMessage[], opts: ChatRenderOptions, priority?: number): Promise<number[]>;
  /** The most bytes a prompt can have and still fit the context (protocol/limits.ts promptBytesLimit). */
  promptBytes: number;
  /** generation_config.json's sampling defaults. */
  defaults?: ModelSamplingDefaults;
  /** Token ids to text, off the event loop (the HTTP API's echo of a prompt given as ids); priority as encode's. */
  decode?(ids: number[], priority?: number): Promise<string>;
  /** Every token's text, built once off the event loop (the HTTP API's logprob tokens). */
  tokenTexts?(): Promise<TokenTexts>;
}

/** What validateRequest reads: the public GenerateRequest, with chat messages as OpenAI's API allows them. */
export type RequestInput = Omit<GenerateRequest, 'messages' | 'seed'> & { messages?: ChatMessage[]; seed?: string | number | bigint | null;
  chatTemplateKwargs?: Record<string, unknown> };


function bad(field: string, message: string): never {
  throw new InvalidRequestError(field, message);
}

/** A sampling field as GenerateRequest names it: maxTokens → max_tokens, stop[2] stays. */
function protoName(field: string): string {
  return field.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

/** A validated request: its prompt, the parameters of sequence 0 of its n (sequence i: nthSequence), its class. */
export interface ValidRequest {
  promptIds: number[];
  params: SamplingParams;
  n: number;
  /** Absent: the default class. */
  priority?: Priority;
  /** Its class in the server's classes, and where it sits in their order. */
  sched: ReturnType<ClassTable['resolve']>;
  exact: boolean;
}

/** The request's priority oneof: a class name or an integer (which class it is, the server's classes say). */
function priorityOf(m: RequestInput): Priority | undefined {
  try {
    if (m.priority === 'priorityClass') return parsePriority(m.priorityClass ?? '');
    if (m.priority === 'priorityValue') return parsePriority(m.priorityValue ?? 0);
  } catch (err) {
    if (err instanceof PriorityError) bad(m.priority === 'priorityClass' ? 'priority_class' : 'priority_value', err.message);
    throw err;
  }
  return undefined;
}

/** The request's class in `classes` (INVALID_ARGUMENT for a class name it does not have). */
function classOf(classes: ClassTable, p: Priority | undefined, field: string): ReturnType<ClassTable['resolve']> {
  try {
    return classes.resolve(p);
  } catch (err) {
    if (err instanceof PriorityError) bad(field, err.message);
    throw err;
  }
}

/**
 * The text of a chat's messages, as the prompt-bytes limit counts it: the template only adds to it,
 * so a chat whose messages alone are over the limit cannot fit the context either.
 */
function messagesText(msgs: ChatMessage[]): string {
  return msgs.map((x) => (typeof x.content === 'string' ? x.content : Array.isArray(x.content) ? x.content.map((p) => p?.text ?? '').join('') : '')).join('');
}

async function chatPrompt(m: RequestInput, model: ModelFacts, priority: number): Promise<number[]> {
  if (!model.encodeChat) bad('messages', 'this server cannot render chats');
  try {
    return await model.encodeChat(m.messages!, { addGenerationPrompt: m.addGenerationPrompt ?? true, ...(m.chatTemplateKwargs ? { extra: m.chatTemplateKwargs } : {}) },
      priority);
  } catch (err) {
    if (err instanceof ChatTemplateError) bad('messages', err.message);
    throw err;
  }
}

/**
 * Checks a request and turns it into the prompt ids and parameters the driver runs, and its class
 * among `classes`. Everything cheap comes first (the request limits, the sampling rules, the
 * priority and its class, the prompt's bytes), so a request that breaks a rule is refused without
 * tokenizing it; the tokenizing (and a chat's template) runs off the event loop, in its class's
 * priority order among the prompts waiting for a tokenizer thread. Fields the request
 * leaves out take the model's generation_config.json values, then the API's defaults
 * (`apiTemperature`: OpenAI's 1 for the HTTP API, greedy for gRPC).
 */
export async function validateRequest(m: RequestInput, model: ModelFacts, limits: RequestLimits, classes: ClassTable,
  apiTemperature?: number): Promise<ValidRequest> {
  if (m.model && m.model !== model.name) bad('model', `unknown model "${m.model}" (this server serves "${model.name}")`);
  const ids = m.promptIds ?? [];
  const chat = !!m.messages?.length;
  const given = [m.prompt ? 'prompt' : '', ids.length ? 'prompt_ids' : '', chat ? 'messages' : ''].filter(Boolean);
  if (given.length > 1) bad(given[1]!, `give one of prompt, prompt_ids and messages (got ${given.join(' and ')})`);
  const n = m.n ?? 1;
  if (!Number.isInteger(n) || n < 1) bad('n', `must be an integer >= 1 (got ${n})`);
  const size: RequestSize = { stop: m.stop ?? [], n, ...(m.logprobs !== undefined && m.logprobs !== null && m.logprobs >= 0 ? { logprobs: m.logprobs } : {}) };
  if (m.prompt) size.prompt = m.prompt;
  else if (chat) size.prompt = messagesText(m.messages!);
  try {
    checkRequestLimits(size, limits, model.promptBytes);
  } catch (err) {
    if (err instanceof LimitError) bad(err.field === 'prompt' && chat ? 'messages' : err.field, err.message.slice(err.field.length + 2));
    throw err;
  }
  const bias = Object.entries(m.logitBias ?? {}).map(([token, b]) => ({ token: Number(token), bias: Number(b) }));
  let params: SamplingParams;
  try {
    const input = withModelDefaults({
      temperature: m.temperature, topK: m.topK, topP: m.topP, minP: m.minP, seed: m.seed, maxTokens: m.maxTokens, stop: m.stop,
      ignoreEos: m.ignoreEos, repetitionPenalty: m.repetitionPenalty, presencePenalty: m.presencePenalty, frequencyPenalty: m.frequencyPenalty,
      stopTokenIds: m.stopTokenIds, logprobs: m.logprobs, logitBias: bias,
    }, model.defaults ?? {}, apiTemperature);
    params = validateSampling(input, model.vocabSize);
  } catch (err) {
    if (err instanceof SamplingError) bad(protoName(err.field), err.problem);
    throw err;
  }
  const priority = priorityOf(m);
  const sched = classOf(classes, priority, m.priority === 'priorityValue' ? 'priority_value' : 'priority_class');
  let promptIds: number[];
  if (ids.length) {
    if (ids.length >= model.contextLength)
      bad('prompt_ids', `has ${ids.length} tokens, which leaves no room in the model's context of ${model.contextLength}`);
    const at = ids.findIndex((t) => !Number.isInteger(t) || t < 0 || t >= model.vocabSize);
    if (at >= 0) bad(`prompt_ids[${at}]`, `token id ${ids[at]} is outside the vocabulary of ${model.vocabSize}`);
    promptIds = [...ids];
  } else if (chat) {
    promptIds = await chatPrompt(m, model, sched.priority);
    if (promptIds.length === 0) bad('messages', 'render to no tokens');
  } else {
    if (!m.prompt) bad('prompt', 'is empty');
    promptIds = await model.encode(m.prompt, sched.priority);
    if (promptIds.length === 0) bad('prompt', 'tokenizes to no tokens');
  }
  if (promptIds.length >= model.contextLength)
    bad(chat ? 'messages' : 'prompt', `is ${promptIds.length} tokens, which leaves no room in the model's context of ${model.contextLength}`);
  return { promptIds, params: withinContext(params, promptIds.length, model.contextLength), n, ...(priority ? { priority } : {}), sched,
    exact: m.exact ?? false };
}

export interface ApiOptions {
  model: ModelFacts & { path: string; architecture: string; numLayers: number; dtype: string };
  /** Most requests accepted and not finished, over the whole cluster. */
  maxQueue: number;
  /** What one request may ask for (--max-request-bytes, --max-stop-strings, ...), on every API. */
  limits: RequestLimits;
  /** When set, every call must carry `authorization: Bearer <token>`. */
  authToken?: string;
  state: () => string;
  /** Failures and failover counters (ClusterStatus fields 12-13), from the failover module. */
  failover?: () => { failures: FailureStatusMsg[]; failover: FailoverCountersMsg; spares: number; quarantined: QuarantinedRequestMsg[] };
  /** Counts requests and streamed tokens for Prometheus (--metrics-port). */
  metrics?: ApiMetrics;
}

const NOT_FINISHED = FinishReason.FINISH_REASON_UNSPECIFIED;

/**
 * A stream's messages gathered while its previous write was going out, as fewer messages: each
 * sequence's updates from one replica become one update (its tokens, text and logprobs in order,
 * from the index of its first), as a client that reads slower than the tokens come sees them. An
 * update that ends its sequence ends its group; one from another replica (after a failover) opens
 * a new one.
 */
export function mergeResponses(ms: GenerateResponseIn[]): GenerateResponseIn[] {
  const joins = (p: GenerateResponseIn, m: GenerateResponseIn) =>
    p.replica === m.replica && p.group === m.group && (p.finishReason ?? NOT_FINISHED) === NOT_FINISHED;
  return mergeByKey(ms, (m) => m.choice ?? 0, joins, (run) => {
    const m = joinTokenRun(run);  // a fresh object: set in place, not copied again
    m.index = run[0]!.index;
    return m;
  });
}

/** The empty list of a message's field left empty (not one per token); frozen, so nothing can add to it. */
const NONE: never[] = Object.freeze([]) as unknown as never[];

// A request larger than --max-request-bytes is never decoded: its deserializer hands the handler
// this marker instead, and the handler answers INVALID_ARGUMENT naming the limit (gRPC's own
// message-size refusal, for what exceeds the transport's ceiling, is RESOURCE_EXHAUSTED).
const OVERSIZE = Symbol('oversize');

/** Wraps a method's request deserializer so that requests over `limit` bytes are not decoded. */
export function limitedDeserializer(decode: (b: Buffer) => unknown, limit: number): (b: Buffer) => unknown {
  return (buf: Buffer) => (buf.length > limit ? { [OVERSIZE]: buf.length } : decode(buf));
}

function oversizeOf(req: unknown): number | undefined {
  return (req as Record<symbol, number | undefined>)[OVERSIZE];
}

export type Status = { code: grpc.status; details: string };

/** Where the tokens of a request's sequences go: `choice` is the sequence (prompt index * n + i). */
export interface ChoicesSink {
  update(choice: number, u: RequestUpdate): void;
  /** The request cannot complete; the API has cancelled its other sequences. */
  fail(code: grpc.status, message: string): void;
}

/** A request admitted as its sequences (one record each); cancel() frees them all. */
export interface Admitted {
  records: RequestRecord[];
  cancel(why: string): void;
}

export class InferenceApi {
  /** Validated requests wait here for their turn to be admitted, most urgent first (admission.ts). */
  readonly admission = new AdmissionQueue();
  /** Requests being validated now (their prompts on or waiting for a tokenizer thread). */
  private validating = 0;

  constructor(private readonly members: Membership, private readonly store: RequestStore,
    private readonly router: Router, private readonly o: ApiOptions) {}

  get model(): ApiOptions['model'] {
    return this.o.model;
  }

  /** Whether a replica serves now. */
  serving(): boolean {
    return this.members.replicas.some((r) => r.state === 'serving');
  }

  get limits(): RequestLimits {
    return this.o.limits;
  }

  private authorize(md: grpc.Metadata): Status | null {
    if (!this.o.authToken || bearerMatches(String(md.get('authorization')[0] ?? ''), this.o.authToken)) return null;
    return { code: grpc.status.UNAUTHENTICATED, details: 'authorization: a valid "Bearer <token>" is required' };
  }

  /** Counts the outcome of an admission for Prometheus. */
  private counted(r: Admitted | Status): Admitted | Status {
    const m = this.o.metrics;
    if (m && 'records' in r) m.accepted();
    else if (m) m.rejected(grpc.status[(r as Status).code] ?? String((r as Status).code));
    return r;
  }

  /** The request classes requests are validated against (the router's). */
  get classes(): ClassTable {
    return this.router.classes;
  }

  /** Requests in flight as --max-queue counts them: being validated, waiting for their admission turn, admitted and not finished. */
  private get inFlight(): number {
    return this.store.size + this.admission.size + this.validating;
  }

  /**
   * RESOURCE_EXHAUSTED when `n` more requests would pass --max-queue, else null: checked before a
   * request is validated too, so a flood of prompts to tokenize is refused at the limit instead of
   * waiting for the tokenizer threads without bound.
   */
  queueFull(n: number): Status | null {
    const inFlight = this.inFlight;
    if (inFlight + n <= this.o.maxQueue) return null;
    return { code: grpc.status.RESOURCE_EXHAUSTED, details: `queue full: ${inFlight} requests in flight (--max-queue ${this.o.maxQueue})` };
  }

  /** validateRequest against this server's model, limits and classes, counted in flight meanwhile. */
  async validate(m: RequestInput, apiTemperature?: number): Promise<ValidRequest> {
    this.validating++;
    try {
      return await validateRequest(m, this.o.model, this.o.limits, this.router.classes, apiTemperature);
    } finally {
      this.validating--;
    }
  }

  /**
   * Admits the sequences of already validated prompts (each prompt's n, seeds seed + i) all at
   * once, or none: the queue limit counts them all, and RESOURCE_EXHAUSTED when no replica their
   * class may use can take them. The sink gets every sequence's tokens; the first failure cancels
   * the others and fails the request.
   */
  admitChoices(prompts: ValidRequest[], sink: ChoicesSink, arrivedAt = nowMs()): Admitted | Status {
    const total = prompts.reduce((a, p) => a + p.n, 0);
    if (!this.router.anyAlive()) return this.counted({ code: grpc.status.UNAVAILABLE, details: 'no replica is serving' });
    const counters: ClassCounters[] = prompts.map((p) => this.router.stats.of(p.sched.cls));
    const refuse = (s: Status): Status => {
      for (const c of new Set(counters)) c.rejected++;
      return this.counted(s) as Status;
    };
    const full = this.queueFull(total);
    if (full) return refuse(full);
    const m = this.o.metrics;
    const records: RequestRecord[] = [];
    let failed = false;
    const admitted: Admitted = {
      records,
      cancel: (why) => {
        for (const r of records) if (this.store.finish(r, { status: RequestStatus.CANCELLED })) this.router.cancel(r, why);
      },
    };
    prompts.forEach((p) => {
      for (let i = 0; i < p.n; i++) {
        const choice = records.length;
        // The router hands the sink only tokens the client has not seen: a replay's prefix counts once.
        const rs: RequestSink = {
          update: (u) => {
            m?.streamed(u.tokenIds.length);
            sink.update(choice, u);
          },
          fail: (code, details) => {
            if (failed) return;
            failed = true;
            admitted.cancel(`sequence ${choice} of the request failed`);
            sink.fail(code, details);
          },
        };
        records.push(new RequestRecord(this.store.newId(), p.promptIds, nthSequence(p.params, i), rs, { ...p.sched, exact: p.exact }));
      }
    });
    // A prompt's sequences share its budget and class: its first tells whether any replica can take them.
    // Each prompt's first sequence is routed as chosen here (the router's estimate is the costly part of admission).
    const firstRoutes = new Map<RequestRecord, Route>();
    let at = 0;
    for (const p of prompts) {
      const route = this.router.choose(records[at]!);
      if ('exhausted' in route) return refuse({ code: grpc.status.RESOURCE_EXHAUSTED, details: route.exhausted });
      firstRoutes.set(records[at]!, route);
      at += p.n;
    }
    for (const r of records) this.store.add(r);
    const trace = requestTrace('coord');
    for (const r of records) {
      if (trace?.wants(r.sched.cls.rank, r.id)) {
        r.traced = true;
        trace.event(r.id, 'arrive', { cls: r.sched.cls.name }, arrivedAt);
      }
    }
    for (const r of records) this.router.submit(r, firstRoutes.get(r));
    return this.counted(admitted);
  }

  /**
   * Validates one gRPC request (its prompt is tokenized off the event loop meanwhile) and admits
   * its sequences; null when the client left while it was being validated (nothing is admitted).
   */
  private async accept(req: GenerateRequest, md: grpc.Metadata, sink: ChoicesSink, gone: () => boolean, arrivedAt: number): Promise<Admitted | Status | null> {
    const denied = this.authorize(md);
    if (denied) return this.counted(denied);
    const tooLarge = oversizeOf(req);
    if (tooLarge !== undefined)
      return this.counted({ code: grpc.status.INVALID_ARGUMENT, details: `request: ${tooLarge} bytes, more than ${this.o.limits.requestBytes} (${LIMIT_FLAGS.requestBytes})` });
    const full = this.queueFull(1);
    if (full) return this.counted(full);
    let v: ValidRequest;
    try {
      v = await this.validate(req);
    } catch (err) {
      if (err instanceof InvalidRequestError) return this.counted({ code: grpc.status.INVALID_ARGUMENT, details: err.message });
      throw err;
    }
    if (gone()) return null;
    await this.admission.turn(v.sched.priority);
    if (gone()) return null;
    return this.admitChoices([v], sink, arrivedAt);
  }

  /**
   * Admits a call's request and keeps it tied to the call: 'cancelled' (client cancellation or an
   * expired deadline), also while the request is still being validated, cancels its sequences.
   */
  private serve(call: grpc.ServerUnaryCall<GenerateRequest, unknown> | grpc.ServerWritableStream<GenerateRequest, unknown>, sink: ChoicesSink,
    admitted: (a: Admitted) => void, refuse: (s: Status) => void): void {
    const arrivedAt = nowMs();
    let a: Admitted | undefined;
    let cancelled = false;
    call.on('cancelled', () => {
      cancelled = true;
      a?.cancel('client cancelled or deadline exceeded');
    });
    void this.accept(call.request, call.metadata, sink, () => cancelled, arrivedAt).then((r) => {
      if (r && 'records' in r) admitted((a = r));
      else if (r) refuse(r);
    }, (err: unknown) => refuse({ code: grpc.status.INTERNAL, details: (err as Error).message }));
  }

  private generate(call: grpc.ServerWritableStream<GenerateRequest, GenerateResponseIn>): void {
    let admitted: Admitted | undefined;
    let open = 0;
    const out = new CoalescingWriter<GenerateResponseIn>((m, done) => call.write(m, done), mergeResponses);
    const sink: ChoicesSink = {
      update: (choice, u) => {
        const last = u.finishReason !== NOT_FINISHED;
        if (!u.tokenIds.length && !u.text && !last) return;
        const rec = admitted?.records[choice];
        out.send({
          tokenIds: u.tokenIds, text: u.text, index: u.index, finishReason: u.finishReason, choice, logprobs: u.logprobs ?? NONE,
          usage: last && rec ? { promptTokens: rec.promptIds.length, completionTokens: rec.tokens.length } : null,
          requestId: rec?.id ?? '', promptIds: last && rec ? rec.promptIds : NONE, group: u.group ?? '', replica: u.replica ?? 0,
        });
        if (last && --open === 0) out.whenIdle(() => call.end());  // after the merged messages still going out
      },
      // After the tokens still going out (or waiting for the class's stream interval): the client keeps what was generated.
      fail: (code, details) => out.whenIdle(() => call.emit('error', { code, details })),
    };
    this.serve(call, sink, (r) => {
      admitted = r;
      open = r.records.length;
      out.pace(r.records[0]?.sched.cls.streamIntervalMs ?? 0);
    }, (s) => call.emit('error', s));
  }

  private complete(call: grpc.ServerUnaryCall<GenerateRequest, CompleteResponseIn>,
    cb: grpc.sendUnaryData<CompleteResponseIn>): void {
    let admitted: Admitted | undefined;
    const logprobs: TokenLogprobs[][] = [];
    // Each sequence's text, its updates' pieces in order (the router keeps no text of a request).
    const texts: string[][] = [];
    let open = 0;
    const sink: ChoicesSink = {
      update: (choice, u) => {
        (logprobs[choice] ??= []).push(...(u.logprobs ?? []));
        (texts[choice] ??= []).push(u.text);
        if (u.finishReason === NOT_FINISHED || !admitted || --open > 0) return;
        const recs = admitted.records;
        const text = (i: number) => texts[i]?.join('') ?? '';
        const choices = recs.map((r, i) => ({ index: i, tokenIds: r.tokens, text: text(i), finishReason: r.finishReason, logprobs: logprobs[i] ?? [] }));
        const first = recs[0]!;
        cb(null, {
          tokenIds: first.tokens, text: text(0), finishReason: first.finishReason, requestId: first.id, logprobs: logprobs[0] ?? [],
          usage: { promptTokens: first.promptIds.length, completionTokens: recs.reduce((a, r) => a + r.tokens.length, 0) },
          promptIds: first.promptIds, choices, group: u.group ?? '', replica: u.replica ?? 0,
        });
      },
      fail: (code, details) => cb({ code, details }),
    };
    this.serve(call, sink, (r) => {
      admitted = r;
      open = r.records.length;
    }, (s) => cb(s));
  }

  status(): ClusterStatusMsg {
    const now = Date.now();
    const layout = this.members.layout;
    // The ranks each replica has now (a replica re-formed with a smaller layout has fewer).
    const ranks = this.members.replicas.flatMap((r) => r.ranks).sort((a, b) => a - b).map((r) => layout.ranks[r]!);
    const first = layout.groups[0]!;
    const live = [...this.store.values()];
    return {
      model: this.o.model.name, tp: first.tp, pp: first.pp, replicaCount: layout.replicas, generation: String(this.members.epoch),
      state: this.o.state(),
      hosts: [...new Set(ranks.map((r) => r.host))],
      pendingRequests: this.store.pendingCount(),
      activeRequests: this.store.size,
      replicas: this.members.replicas.map((r) => ({
        id: r.id, state: r.state, running: r.load?.running ?? 0, queued: r.load?.queued ?? 0,
        kvBlocksTotal: r.load?.kvBlocksTotal ?? r.kvBlocks, kvBlocksFree: r.load?.kvBlocksFree ?? r.kvBlocks,
        kvBlockSize: r.kvBlockSize, steps: r.load?.steps ?? '0', generatedTokens: r.load?.generatedTokens ?? '0',
        recentStepBatch: r.load?.recentStepBatch ?? [], maxStepBatch: r.load?.maxStepBatch ?? 0, ranks: r.ranks,
        maxInFlight: r.load?.maxInFlight ?? 0, requests: this.store.countOn(r.id), tp: r.tp, pp: r.pp,
        precision: r.precision,
        group: groupOf(layout, r.id).name, preemptions: r.load?.preemptions ?? 0,
        stepMs: r.load && r.load.stepMsBase + r.load.stepMsPerToken > 0 ? r.load.stepMsBase + r.load.stepMsPerToken * (r.load.running || 1) : 0,
        kvWindowBlocksTotal: r.load?.kvWindowBlocksTotal ?? r.kvWindowBlocks, kvWindowBlocksFree: r.load?.kvWindowBlocksFree ?? r.kvWindowBlocks,
      })),
      workers: ranks.map((p) => {
        const w = this.members.workers.get(p.rank);
        // No worker: still to join, or its replica was retired (lost for good).
        const rep = this.members.replicas[p.replica];
        const none = rep && rep.state === 'lost' && !rep.reforming ? 'lost' : 'starting';
        return {
          rank: p.rank, replica: p.replica, stage: p.stage, tpRank: p.tpRank, host: p.host, pid: w?.join.pid ?? 0,
          state: w?.state ?? none, device: w?.join.device?.kind ?? '', layerStart: p.layerStart, layerEnd: p.layerEnd,
          lastHeartbeatMsAgo: w ? now - w.lastHeartbeat : -1,
          loadProgress: w && w.loadTotal > 0 ? w.loadDone / w.loadTotal : 0,
          engine: w?.describe ?? '',
        };
      }),
      groups: layout.groups.map((g) => ({
        name: g.name, device: g.serving.device, precision: g.precision, tp: g.tp, pp: g.pp, threads: g.serving.threads,
        replicas: g.replicas, maxSeqs: g.serving.maxSeqs,
      })),
      classes: this.router.classes.list.map((c) => {
        const k = this.router.stats.of(c);
        const mine = live.filter((r) => r.sched.cls.name === c.name);
        return {
          name: c.name, priority: c.priority, groups: c.groups, ttftP99TargetMs: c.ttftP99Ms ?? 0,
          waiting: mine.filter((r) => r.firstTokenAt === undefined).length,
          running: mine.filter((r) => r.firstTokenAt !== undefined && r.status === RequestStatus.RUNNING).length,
          preempted: mine.filter((r) => r.status === RequestStatus.PREEMPTED).length,
          routed: String(k.routed), overflowed: String(k.overflowed), rejected: String(k.rejected), preemptions: String(k.preemptions),
          finished: String(k.finished), routedByGroup: Object.fromEntries([...k.routedByGroup].map(([g, n]) => [g, String(n)])),
          ttft: k.ttft.percentiles(now), itl: k.itl.percentiles(now),
        };
      }),
      ...(this.o.failover?.() ?? { failures: [], failover: { failures: 0, recoveries: 0, replayedRequests: 0, replayedTokens: 0, quarantinedRequests: 0 },
        spares: 0, quarantined: [] }),
    };
  }

  handlers(): InferenceHandlers {
    return {
      Generate: (call) => this.generate(call),
      Complete: (call, cb) => this.complete(call, cb),
      ListModels: (call, cb) => {
        const denied = this.authorize(call.metadata);
        if (denied) return cb(denied);
        const m = this.o.model;
        cb(null, { models: [{ name: m.name, path: m.path, architecture: m.architecture, contextLength: m.contextLength,
          vocabSize: m.vocabSize, numLayers: m.numLayers, dtype: m.dtype }] });
      },
      ClusterStatus: (call, cb) => {
        const denied = this.authorize(call.metadata);
        if (denied) return cb(denied);
        cb(null, this.status());
      },
    };
  }
}
