// The typed client of a nodespeed server (nodespeed.v1.Inference):
//   import { NodespeedClient } from 'nodespeed/client';
//   const c = new NodespeedClient('localhost:50051');
//   for await (const m of c.generate({ prompt: 'def f(x):', maxTokens: 32 })) process.stdout.write(m.text);
import * as grpc from '@grpc/grpc-js';

import type {
  ClusterStatusMsg, CompleteResponseMsg, GenerateRequestMsg, GenerateResponseMsg, GenerateRequestIn, InferenceClient, ListModelsResponse, ModelInfoMsg,
} from '../protocol/api.js';
import { parsePriority, priorityToWire } from '../protocol/priority.js';
import { INFERENCE_SERVICE, clientConstructor, inferencePackageDefinition } from '../protocol/proto.js';

export type {
  ClassStatusMsg, ClusterStatusMsg, CompleteResponseMsg, FailoverCountersMsg, FailureStatusMsg, FinishReasonName, GenerateRequestMsg, GenerateResponseMsg,
  GroupStatusMsg, LatencyPercentilesMsg, ModelInfoMsg, PrecisionMsg, RecoveryName, ReplicaStatusMsg, UsageMsg, WorkerStatusMsg,
} from '../protocol/api.js';
export { INFERENCE_PROTO, CONTROL_PROTO } from '../protocol/proto.js';

export interface ClientOptions {
  /** Sent as `authorization: Bearer <token>` when the server requires it. */
  authToken?: string;
  credentials?: grpc.ChannelCredentials;
}

export interface CallOptions {
  /** Milliseconds from now; the server stops the work when it passes. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export class NodespeedError extends Error {
  constructor(readonly code: grpc.status, readonly details: string) {
    super(`${grpc.status[code] ?? code}: ${details}`);
    this.name = 'NodespeedError';
  }
}

function wrap(err: unknown): Error {
  const e = err as grpc.ServiceError;
  return typeof e?.code === 'number' ? new NodespeedError(e.code, e.details ?? e.message) : (err as Error);
}

/** The wire form of a request: a bigint seed as its decimal string, the priority as its oneof member. */
function wire(req: GenerateRequestMsg): GenerateRequestIn {
  const { priority, seed, ...rest } = req;
  return {
    ...rest, ...(seed !== undefined ? { seed: typeof seed === 'bigint' ? seed.toString() : seed } : {}),
    ...(priority !== undefined ? priorityToWire(parsePriority(priority)) : {}),
  };
}

export class NodespeedClient {
  private readonly client: InferenceClient;

  constructor(readonly address: string, private readonly o: ClientOptions = {}) {
    const Ctor = clientConstructor(inferencePackageDefinition(), INFERENCE_SERVICE);
    this.client = new Ctor(address, o.credentials ?? grpc.credentials.createInsecure()) as unknown as InferenceClient;
  }

  private md(): grpc.Metadata {
    const md = new grpc.Metadata();
    if (this.o.authToken) md.set('authorization', `Bearer ${this.o.authToken}`);
    return md;
  }

  private callOpts(c: CallOptions): grpc.CallOptions {
    return c.timeoutMs ? { deadline: Date.now() + c.timeoutMs } : {};
  }

  private unary<Res>(c: CallOptions, start: (md: grpc.Metadata, o: grpc.CallOptions, cb: grpc.requestCallback<Res>) => grpc.ClientUnaryCall): Promise<Res> {
    return new Promise((resolve, reject) => {
      const call = start(this.md(), this.callOpts(c), (err, res) => (err ? reject(wrap(err)) : resolve(res!)));
      c.signal?.addEventListener('abort', () => call.cancel(), { once: true });
    });
  }

  /** Streams the generation; breaking out of the loop (or the signal) cancels it on the server. */
  async *generate(req: GenerateRequestMsg, c: CallOptions = {}): AsyncGenerator<GenerateResponseMsg> {
    const call = this.client.Generate(wire(req), this.md(), this.callOpts(c));
    const onAbort = () => call.cancel();
    c.signal?.addEventListener('abort', onAbort, { once: true });
    let finished = false;
    try {
      for await (const m of call as AsyncIterable<GenerateResponseMsg>) yield m;
      finished = true;  // the server ended the stream: every sequence finished (n > 1 streams several)
    } catch (err) {
      throw wrap(err);
    } finally {
      c.signal?.removeEventListener('abort', onAbort);
      if (!finished) call.cancel();
    }
  }

  complete(req: GenerateRequestMsg, c: CallOptions = {}): Promise<CompleteResponseMsg> {
    return this.unary<CompleteResponseMsg>(c, (md, o, cb) => this.client.Complete(wire(req), md, o, cb));
  }

  async listModels(c: CallOptions = {}): Promise<ModelInfoMsg[]> {
    return (await this.unary<ListModelsResponse>(c, (md, o, cb) => this.client.ListModels({}, md, o, cb))).models;
  }

  clusterStatus(c: CallOptions = {}): Promise<ClusterStatusMsg> {
    return this.unary<ClusterStatusMsg>(c, (md, o, cb) => this.client.ClusterStatus({}, md, o, cb));
  }

  /** Resolves when the channel is connected (or rejects after timeoutMs). */
  waitForReady(timeoutMs = 10_000): Promise<void> {
    return new Promise((resolve, reject) =>
      this.client.waitForReady(Date.now() + timeoutMs, (err) => (err ? reject(err) : resolve())));
  }

  close(): void {
    this.client.close();
  }
}
