// The coordinator's truth about requests: each accepted request's prompt, parameters, status and
// every token already streamed to the client. Workers are replaceable; this store is what a replay
// after a failover starts from. Status changes go through protocol/lifecycle.ts, and finish() is
// the one place where a request ends.
import type * as grpc from '@grpc/grpc-js';

import type { TokenLogprobs } from '../protocol/api.js';
import type { Job } from './estimate.js';
import { FinishReason, RequestStatus, isFinished, transition } from '../protocol/lifecycle.js';
import type { SamplingParams } from '../protocol/sampling.js';
import type { RequestClass } from './classes.js';

export interface RequestUpdate {
  tokenIds: number[];
  text: string;
  /** Index of tokenIds[0] among the generated tokens. */
  index: number;
  /** UNSPECIFIED until the last update. */
  finishReason: FinishReason;
  /** The replica (and its group) that produced these tokens. */
  replica?: number;
  group?: string;
  /** One per token id when the request asked for logprobs. */
  logprobs?: TokenLogprobs[];
}

/** Where a request's output goes (the API call that accepted it). */
export interface RequestSink {
  update(u: RequestUpdate): void;
  /** The request cannot complete (no replica, worker failure, driver refusal). */
  fail(code: grpc.status, message: string): void;
}

/** How a request ends, and what its client is told. */
export type RequestEnd =
  /** `last`: the final update, its finishReason set. */
  | { status: typeof RequestStatus.FINISHED; last: RequestUpdate }
  | { status: typeof RequestStatus.FAILED; code: grpc.status; message: string }
  /** The client is gone: it is told nothing. */
  | { status: typeof RequestStatus.CANCELLED };

/** How the router treats a request: its class, its integer priority, whether a replay must keep its numerics. */
export interface RequestScheduling {
  cls: RequestClass;
  priority: number;
  exact: boolean;
}

let arrivals = 0;

export class RequestRecord implements Job {
  status: RequestStatus = RequestStatus.QUEUED;
  /** The replica it runs on (status running or preempted); null while it waits for one. */
  replica: number | null = null;
  /** It streamed a token since it was routed to `replica`: it is in that replica's batch (the TTFT estimate). */
  started = false;
  /** The numerics (device and precision) of the replica that produced its first tokens (an `exact` replay keeps them). */
  numerics: string | undefined;
  /** Arrival order, for equal priorities. */
  readonly order = arrivals++;
  // What the router's TTFT estimate (estimate.ts: the record is its own Job) reads of every request
  // on a replica at every routing, hundreds under a flood for each arrival: numbers kept in the
  // record itself, beside `started`, `order` and `tokens`, so that a routing reads one object a
  // request (and its token list's length), not also its scheduling and parameters, each elsewhere
  // in memory. They never change: the prompt, the parameters and the class are the request's.
  readonly priority: number;
  readonly classRank: number;
  /** Its KV budget: prompt + max_tokens. */
  readonly budgetTokens: number;
  private readonly promptTokens: number;
  private readonly maxTokens: number;
  readonly tokens: number[] = [];
  // No text: a replay starts from the token ids, and a stream's text goes out with its updates. A
  // text joined here a token at a time would be a chain of strings as long-lived as the request,
  // all of it promoted to the old generation under a flood; the unary Complete gathers its own.
  lastTokenAt: number | undefined;
  finishReason: FinishReason = FinishReason.FINISH_REASON_UNSPECIFIED;
  readonly createdAt = Date.now();
  firstTokenAt: number | undefined;
  /** Since when the request waits for a replica (set when a failover re-queues it). */
  pendingSince: number | undefined;
  /** How many times a failover moved it. */
  replays = 0;
  /** Its timeline goes to NODESPEED_REQUEST_TRACE. */
  traced = false;

  constructor(readonly id: string, readonly promptIds: number[], readonly params: SamplingParams, readonly sink: RequestSink,
    readonly sched: RequestScheduling) {
    this.priority = sched.priority;
    this.classRank = sched.cls.rank;
    this.promptTokens = promptIds.length;
    this.maxTokens = params.maxTokens;
    this.budgetTokens = promptIds.length + params.maxTokens;
  }

  /** The estimate's tokens to prefill: the prompt and those streamed (a replay's). */
  get prefillTokens(): number {
    return this.promptTokens + this.tokens.length;
  }

  /** The estimate's tokens still to generate, at most. */
  get remainingTokens(): number {
    return Math.max(0, this.maxTokens - this.tokens.length);
  }
}

export class RequestStore {
  private readonly records = new Map<string, RequestRecord>();
  /** Live requests by the replica they run on (the router reads it for every routing: no scan of all). */
  private readonly byReplica = new Map<number, Set<RequestRecord>>();
  /** Live requests waiting for a replica (queued): the router asks after every step that ended a request, with hundreds live. */
  private readonly queued = new Set<RequestRecord>();
  private nextId = 1;
  /** Requests that ended (finished, failed or cancelled). */
  completed = 0;

  newId(): string {
    return `req-${(this.nextId++).toString(36)}-${Date.now().toString(36)}`;
  }

  add(r: RequestRecord): void {
    this.records.set(r.id, r);
    if (r.status === RequestStatus.QUEUED) this.queued.add(r);
  }

  /** A live request (queued or running); ended ones are forgotten. */
  get(id: string): RequestRecord | undefined {
    return this.records.get(id);
  }

  get size(): number {
    return this.records.size;
  }

  values(): IterableIterator<RequestRecord> {
    return this.records.values();
  }

  onReplica(replica: number): RequestRecord[] {
    return [...this.on(replica)];
  }

  /** The live requests on `replica`, not copied (not to be changed while iterated). */
  on(replica: number): Iterable<RequestRecord> {
    return this.byReplica.get(replica) ?? [];
  }

  /** How many live requests run on `replica`. */
  countOn(replica: number): number {
    return this.byReplica.get(replica)?.size ?? 0;
  }

  private place(r: RequestRecord, replica: number | null): void {
    if (r.replica !== null) this.byReplica.get(r.replica)?.delete(r);
    r.replica = replica;
    if (replica === null) return;
    let on = this.byReplica.get(replica);
    if (!on) this.byReplica.set(replica, (on = new Set()));
    on.add(r);
  }

  pendingCount(): number {
    return this.queued.size;
  }

  /** Requests waiting for a replica, most urgent first (priority, then arrival). */
  pending(): RequestRecord[] {
    return [...this.queued].sort((a, b) => a.priority - b.priority || a.order - b.order);
  }

  /** queued → running on `replica`. */
  route(r: RequestRecord, replica: number): void {
    r.status = transition(r.status, RequestStatus.RUNNING);
    this.queued.delete(r);
    this.place(r, replica);
    r.started = false;
    r.pendingSince = undefined;
  }

  /** running → preempted: its replica took it out of the batch for a more urgent class; it resumes there. */
  preempt(r: RequestRecord): void {
    r.status = transition(r.status, RequestStatus.PREEMPTED);
    r.started = false;
  }

  /** preempted → running: tokens again (it resumed by recompute). */
  resume(r: RequestRecord): void {
    r.status = transition(r.status, RequestStatus.RUNNING);
  }

  /** running or preempted → queued: its replica was lost; it is replayed from its prompt and the tokens streamed. */
  requeue(r: RequestRecord, now = Date.now()): void {
    r.status = transition(r.status, RequestStatus.QUEUED);
    this.queued.add(r);
    this.place(r, null);
    r.started = false;
    r.pendingSince = now;
    r.replays++;
  }

  /**
   * Ends a live request: its final status, forgotten by the store, its client told (the last
   * update, or the failure). False, and nothing done, when it had already ended.
   */
  finish(r: RequestRecord, end: RequestEnd): boolean {
    if (isFinished(r.status) || this.records.get(r.id) !== r) return false;
    r.status = transition(r.status, end.status);
    this.records.delete(r.id);
    this.queued.delete(r);
    if (r.replica !== null) this.byReplica.get(r.replica)?.delete(r);
    this.completed++;
    if (end.status === RequestStatus.FINISHED) {
      r.finishReason = end.last.finishReason;
      r.sink.update(end.last);
    } else if (end.status === RequestStatus.FAILED) {
      r.sink.fail(end.code, end.message);
    }
    return true;
  }
}
