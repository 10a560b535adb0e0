// The public service nodespeed.v1.Inference: validation (INVALID_ARGUMENT naming the proto field;
// the sampling rules are protocol/sampling.ts's), admission (RESOURCE_EXHAUSTED when the queue is
// full), optional bearer-token auth, streaming of the driver's tokens, and cancellation/deadlines
// propagated to the driver so it frees the KV blocks.
import { timingSafeEqual } from 'node:crypto';

import * as grpc from '@grpc/grpc-js';

import type {
  ClusterStatusMsg, CompleteResponseIn, FailoverCountersMsg, FailureStatusMsg, GenerateRequest, GenerateResponseIn, InferenceHandlers,
} from '../protocol/api.js';
import { FinishReason, RequestStatus } from '../protocol/lifecycle.js';
import { SamplingError, validateSampling, withinContext } from '../protocol/sampling.js';
import type { SamplingParams } from '../protocol/sampling.js';
import type { Membership } from './membership.js';
import type { ApiMetrics } from './metrics.js';
import { RequestRecord } from './requests.js';
import type { RequestSink, RequestStore, RequestUpdate } from './requests.js';
import type { Router } from './router.js';

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

export interface ApiOptions {
  model: ModelFacts & { path: string; architecture: string; numLayers: number; dtype: string };
  /** Most requests accepted and not finished, over the whole cluster. */
  maxQueue: number;
  /** When set, every call must carry `authorization: Bearer <token>`. */
  authToken?: string;
  state: () => string;
  /** Failures and failover counters (ClusterStatus fields 12-13), from the failover module. */
  failover?: () => { failures: FailureStatusMsg[]; failover: FailoverCountersMsg; spares: number };
  /** Counts requests and streamed tokens for Prometheus (--metrics-port). */
  metrics?: ApiMetrics;
}

const NOT_FINISHED = FinishReason.FINISH_REASON_UNSPECIFIED;

type Status = { code: grpc.status; details: string };

export class InferenceApi {
  constructor(private readonly members: Membership, private readonly store: RequestStore,
    private readonly router: Router, private readonly o: ApiOptions) {}

  private authorize(md: grpc.Metadata): Status | null {
    if (!this.o.authToken) return null;
    const h = String(md.get('authorization')[0] ?? '');
    const want = Buffer.from(`Bearer ${this.o.authToken}`);
    const got = Buffer.from(h);
    if (got.length === want.length && timingSafeEqual(got, want)) return null;
    return { code: grpc.status.UNAUTHENTICATED, details: 'authorization: a valid "Bearer <token>" is required' };
  }

  /** Validates, admits and routes a request; the sink receives its tokens. */
  private accept(req: GenerateRequest, md: grpc.Metadata, sink: RequestSink): RequestRecord | Status {
    const r = this.admit(req, md, sink);
    const m = this.o.metrics;
    if (m && r instanceof RequestRecord) m.accepted();
    else if (m) m.rejected(grpc.status[(r as Status).code] ?? String((r as Status).code));
    return r;
  }

  private admit(req: GenerateRequest, md: grpc.Metadata, sink: RequestSink): RequestRecord | Status {
    const denied = this.authorize(md);
    if (denied) return denied;
    let v: ReturnType<typeof validateRequest>;
    try {
      v = validateRequest(req, this.o.model);
    } catch (err) {
      if (err instanceof InvalidRequestError) return { code: grpc.status.INVALID_ARGUMENT, details: err.message };
      throw err;
    }
    if (!this.router.anyAlive()) return { code: grpc.status.UNAVAILABLE, details: 'no replica is serving' };
    if (this.store.size >= this.o.maxQueue)
      return { code: grpc.status.RESOURCE_EXHAUSTED, details: `queue full: ${this.store.size} requests in flight (--max-queue ${this.o.maxQueue})` };
    const m = this.o.metrics;
    // The router hands the sink only tokens the client has not seen: a replay's prefix counts once.
    const counted: RequestSink = m ? { update: (u) => (m.streamed(u.tokenIds.length), sink.update(u)), fail: (c, d) => sink.fail(c, d) } : sink;
    const rec = new RequestRecord(this.store.newId(), v.promptIds, v.params, counted);
    this.store.add(rec);
    this.router.submit(rec);
    return rec;
  }

  /** Client cancellation or deadline: forget the request and tell its driver to free its blocks. */
  private abandon(rec: RequestRecord, why: string): void {
    if (this.store.finish(rec, { status: RequestStatus.CANCELLED })) this.router.cancel(rec, why);
  }

  private generate(call: grpc.ServerWritableStream<GenerateRequest, GenerateResponseIn>): void {
    let rec: RequestRecord | undefined;
    const sink: RequestSink = {
      update: (u: RequestUpdate) => {
        const last = u.finishReason !== NOT_FINISHED;
        if (!u.tokenIds.length && !u.text && !last) return;
        call.write({
          tokenIds: u.tokenIds, text: u.text, index: u.index, finishReason: u.finishReason,
          usage: last && rec ? { promptTokens: rec.promptIds.length, completionTokens: rec.tokens.length } : null,
          requestId: rec?.id ?? '', promptIds: last && rec ? rec.promptIds : [],
        });
        if (last) call.end();
      },
      fail: (code, details) => call.emit('error', { code, details }),
    };
    const r = this.accept(call.request, call.metadata, sink);
    if (!(r instanceof RequestRecord)) {
      call.emit('error', r);
      return;
    }
    rec = r;
    // 'cancelled' fires on client cancellation and on an expired deadline.
    call.on('cancelled', () => this.abandon(r, 'client cancelled or deadline exceeded'));
  }

  private complete(call: grpc.ServerUnaryCall<GenerateRequest, CompleteResponseIn>,
    cb: grpc.sendUnaryData<CompleteResponseIn>): void {
    let rec: RequestRecord | undefined;
    const sink: RequestSink = {
      update: (u) => {
        if (u.finishReason === NOT_FINISHED || !rec) return;
        cb(null, {
          tokenIds: rec.tokens, text: rec.text, finishReason: u.finishReason, requestId: rec.id,
          usage: { promptTokens: rec.promptIds.length, completionTokens: rec.tokens.length }, promptIds: rec.promptIds,
        });
      },
      fail: (code, details) => cb({ code, details }),
    };
    const r = this.accept(call.request, call.metadata, sink);
    if (!(r instanceof RequestRecord)) {
      cb(r);
      return;
    }
    rec = r;
    call.on('cancelled', () => this.abandon(r, 'client cancelled or deadline exceeded'));
  }

  status(): ClusterStatusMsg {
    const now = Date.now();
    const layout = this.members.layout;
    // The ranks each replica has now (a replica re-formed with a smaller layout has fewer).
    const ranks = this.members.replicas.flatMap((r) => r.ranks).sort((a, b) => a - b).map((r) => layout.ranks[r]!);
    return {
      model: this.o.model.name, tp: layout.tp, pp: layout.pp, replicaCount: layout.replicas, generation: String(this.members.epoch),
      state: this.o.state(),
      hosts: [...new Set(ranks.map((r) => r.host))],
      pendingRequests: this.store.pending().length,
      activeRequests: this.store.size,
      replicas: this.members.replicas.map((r) => ({
        id: r.id, state: r.state, running: r.load?.running ?? 0, queued: r.load?.queued ?? 0,
        kvBlocksTotal: r.load?.kvBlocksTotal ?? r.kvBlocks, kvBlocksFree: r.load?.kvBlocksFree ?? r.kvBlocks,
        kvBlockSize: r.kvBlockSize, steps: r.load?.steps ?? '0', generatedTokens: r.load?.generatedTokens ?? '0',
        recentStepBatch: r.load?.recentStepBatch ?? [], maxStepBatch: r.load?.maxStepBatch ?? 0, ranks: r.ranks,
        maxInFlight: r.load?.maxInFlight ?? 0, requests: this.store.onReplica(r.id).length, tp: r.tp, pp: r.pp,
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
      ...(this.o.failover?.() ?? { failures: [], failover: { failures: 0, recoveries: 0, replayedRequests: 0, replayedTokens: 0 }, spares: 0 }),
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
