// The coordinator's truth about requests: each accepted request's prompt, parameters and every
// token already streamed to the client. Workers are replaceable; this store is what a replay after
// a failover starts from.

import type { SamplingParams } from '../engine/sampling.js';

/** Validated sampling and stopping rules: the same record the single-process engine uses. */
export type RequestParams = SamplingParams;

export interface RequestUpdate {
  tokenIds: number[];
  text: string;
  /** Index of tokenIds[0] among the generated tokens. */
  index: number;
  /** 0 running, 1 stop, 2 length (nodespeed.v1.FinishReason numbering). */
  finishReason: number;
}

export interface RequestSink {
  update(u: RequestUpdate): void;
  /** The request cannot complete (no replica, worker failure, driver refusal). */
  fail(code: number, message: string): void;
}

export class RequestRecord {
  replica: number | null = null;
  readonly tokens: number[] = [];
  text = '';
  finishReason = 0;
  done = false;
  readonly createdAt = Date.now();
  firstTokenAt: number | undefined;
  /** Since when the request waits for a replica (set when a failover re-queues it). */
  pendingSince: number | undefined;
  /** How many times a failover moved it. */
  replays = 0;

  constructor(readonly id: string, readonly promptIds: number[], readonly params: RequestParams, readonly sink: RequestSink) {}
}

export class RequestStore {
  private readonly records = new Map<string, RequestRecord>();
  private nextId = 1;
  completed = 0;

  newId(): string {
    return `req-${(this.nextId++).toString(36)}-${Date.now().toString(36)}`;
  }

  add(r: RequestRecord): void {
    this.records.set(r.id, r);
  }

  get(id: string): RequestRecord | undefined {
    return this.records.get(id);
  }

  /** Forgets a finished, failed or cancelled request. */
  remove(id: string): void {
    if (this.records.delete(id)) this.completed++;
  }

  get size(): number {
    return this.records.size;
  }

  values(): IterableIterator<RequestRecord> {
    return this.records.values();
  }

  onReplica(replica: number): RequestRecord[] {
    return [...this.records.values()].filter((r) => r.replica === replica);
  }

  pending(): RequestRecord[] {
    return [...this.records.values()].filter((r) => r.replica === null);
  }
}
