// The worker's end of the control plane: one bidirectional stream to the coordinator. Sends Join
// first, heartbeats from then on (every message carries the membership epoch), and hands the
// coordinator's messages to the worker as events. Also the communicator rendezvous: every member
// of a group offers a blob, the coordinator answers with all of them in rank order.
import { EventEmitter } from 'node:events';

import * as grpc from '@grpc/grpc-js';

import { CONTROL_SERVER_NAME } from '../protocol/job-secrets.js';
import type { TlsIdentity } from '../protocol/job-secrets.js';
import { controlChannelOptions } from '../protocol/limits.js';
import { probeLiveness } from '../protocol/liveness.js';
import { CONTROL_SERVICE, controlPackageDefinition, serviceDefinition } from '../protocol/proto.js';
import { encodeTokensMessage } from '../protocol/tokens-wire.js';
import { CoalescingWriter, batches, joinTokenRun, mergeByKey } from '../protocol/coalesce.js';
import type {
  Abort, Assignment, Cancel, ControlStub, CoordinatorMessage, JoinIn, OutgoingWorkerMessage, ReplicaLoadIn, Start, Stop, Submit, TokenUpdateIn,
} from '../protocol/control.js';
import { FinishReason } from '../protocol/lifecycle.js';

/** Whether `next` goes on where `last` stopped: the same running request's next tokens, neither a refusal nor a preemption notice. */
function continues(last: TokenUpdateIn, next: TokenUpdateIn): boolean {
  const plain = (u: TokenUpdateIn) => !u.error && !u.preempted;
  return plain(last) && plain(next) && (last.finishReason ?? FinishReason.FINISH_REASON_UNSPECIFIED) === FinishReason.FINISH_REASON_UNSPECIFIED &&
    next.index === (last.index ?? 0) + (last.tokenIds?.length ?? 0);
}

/**
 * What the worker sent while a write was in flight, as the messages to write now: consecutive
 * Tokens messages of one epoch become one, each request's updates in it one update (the steps that
 * ran while the coordinator was slow to read reach it as one update per request, as its Generate
 * streams would merge them anyway), then batches of at most BATCH_MAX_BYTES.
 */
export function packWorkerMessages(ms: OutgoingWorkerMessage[]): OutgoingWorkerMessage[] {
  const out: OutgoingWorkerMessage[] = [];
  for (let i = 0; i < ms.length;) {
    const tokens = ms[i]!.tokens;
    let j = i + 1;
    if (tokens) while (j < ms.length && ms[j]!.tokens && String(ms[j]!.tokens!.epoch) === String(tokens.epoch)) j++;
    if (j === i + 1) out.push(ms[i]!);
    else {
      const updates = ms.slice(i, j).flatMap((m) => m.tokens!.updates ?? []);
      out.push({ tokens: { epoch: tokens!.epoch, updates: mergeByKey(updates, (u) => u.requestId ?? '', continues, (run) => ({ ...joinTokenRun(run), index: run[0]!.index ?? 0 })) } });
    }
    i = j;
  }
  return batches(out, (messages) => ({ batch: { messages } }));
}

/**
 * The Control service as the worker calls it: a step's Tokens message is written by
 * protocol/tokens-wire.ts (the same bytes, a fraction of protobufjs's time on the driver's
 * thread), every other message by the loaded definition's serializer.
 */
export function controlService(): grpc.ServiceDefinition {
  const def = serviceDefinition(controlPackageDefinition(), CONTROL_SERVICE);
  const connect = def.Connect!;
  const serialize = connect.requestSerialize;
  return { ...def, Connect: { ...connect, requestSerialize: (m: unknown) => encodeTokensMessage(m) ?? serialize(m) } };
}

export interface ControlEvents {
  assignment: [Assignment];
  start: [Start];
  submit: [Submit];
  cancel: [Cancel];
  stop: [Stop];
  abort: [Abort];
  /** The stream ended or failed: the coordinator is gone or refused us. */
  closed: [Error | null];
}

export class ControlClient extends EventEmitter<ControlEvents> {
  epoch = '0';
  private readonly client: ControlStub;
  private readonly call: grpc.ClientDuplexStream<OutgoingWorkerMessage, CoordinatorMessage>;
  /** What the worker sends while a write is in flight goes out in one batch after it. */
  private readonly out: CoalescingWriter<OutgoingWorkerMessage>;
  private readonly rendezvous = new Map<string, { resolve: (payloads: Buffer[]) => void; reject: (err: Error) => void }>();
  private beating = true;
  private heartbeat: NodeJS.Timeout | undefined;
  private lastHeard = Date.now();
  private timeoutMs = 0;
  private livenessPort = 0;
  private probing = false;
  private excused = false;
  private closed = false;
  /** Filled by the replica driver: sent with every heartbeat. */
  load: (() => ReplicaLoadIn) | undefined;

  /**
   * `address`: the coordinator's control plane (host:port). The stream is mutual TLS: this worker's
   * slot certificate, and the coordinator's checked against the job CA under CONTROL_SERVER_NAME.
   * `key`: the job's key, which the coordinator's liveness responder answers with.
   */
  constructor(private readonly address: string, join: JoinIn, heartbeatMs: number, identity: TlsIdentity, private readonly key: Uint8Array) {
    super();
    const Ctor = grpc.makeClientConstructor(controlService(), CONTROL_SERVICE);
    const credentials = grpc.credentials.createSsl(Buffer.from(identity.ca), Buffer.from(identity.key), Buffer.from(identity.cert));
    this.client = new Ctor(address, credentials, {
      'grpc.keepalive_time_ms': 10_000, 'grpc.ssl_target_name_override': CONTROL_SERVER_NAME, 'grpc.default_authority': CONTROL_SERVER_NAME,
      ...controlChannelOptions(),
    }) as unknown as ControlStub;
    // The decoded messages are the oneof union of protocol/control.ts (the loader sets `msg`).
    this.call = this.client.Connect() as unknown as grpc.ClientDuplexStream<OutgoingWorkerMessage, CoordinatorMessage>;
    this.out = new CoalescingWriter((m, done) => this.call.write(m, done), packWorkerMessages);
    this.call.on('data', (m: CoordinatorMessage) => this.onMessage(m));
    this.call.on('error', (err: Error) => this.finish(err));
    this.call.on('end', () => this.finish(null));
    this.out.send({ join });
    this.startHeartbeat(heartbeatMs);
  }

  private startHeartbeat(ms: number): void {
    clearInterval(this.heartbeat);
    this.heartbeat = setInterval(() => {
      if (!this.beating) return;
      // A coordinator that is silent past the timeout is hung or cut off: stop rather than serve
      // on — unless its liveness responder (a thread of its own) answers: then the process lives
      // and only its event loop is late (protocol/liveness.ts), and this worker waits for it.
      if (this.timeoutMs > 0 && Date.now() - this.lastHeard > this.timeoutMs && !this.probing) void this.judgeSilence();
      this.send({ heartbeat: { epoch: this.epoch, sentAtMs: Date.now(), ...(this.load ? { load: this.load() } : {}) } });
    }, ms);
  }

  private async judgeSilence(): Promise<void> {
    this.probing = true;
    const silent = Date.now() - this.lastHeard;
    const host = this.address.slice(0, this.address.lastIndexOf(':')).replace(/^\[|\]$/g, '');
    const alive = this.livenessPort > 0 && await probeLiveness(host, this.livenessPort, this.key, Math.min(2000, this.timeoutMs));
    this.probing = false;
    if (this.closed || Date.now() - this.lastHeard <= this.timeoutMs) return;
    if (alive) {
      if (!this.excused) process.stderr.write(`worker: the coordinator sent nothing for ${silent} ms but its liveness responder answers: waiting for it\n`);
      this.excused = true;
      return;
    }
    this.finish(new Error(`no message from the coordinator for ${Date.now() - this.lastHeard} ms (its liveness responder does not answer either)`));
    this.call.cancel();
    this.close();
  }

  private onMessage(m: CoordinatorMessage): void {
    this.lastHeard = Date.now();
    this.excused = false;
    switch (m.msg) {
      case 'batch':
        for (const x of m.batch.messages) this.onMessage(x as CoordinatorMessage);
        return;
      case 'assignment':
        this.epoch = m.assignment.epoch;
        this.timeoutMs = m.assignment.heartbeatTimeoutMs;
        this.livenessPort = m.assignment.livenessPort;
        if (m.assignment.heartbeatIntervalMs > 0) this.startHeartbeat(m.assignment.heartbeatIntervalMs);
        this.emit('assignment', m.assignment);
        return;
      case 'heartbeat':
        return; // proof the coordinator is alive; nothing to do
      case 'commPeers':
        if (m.commPeers.epoch !== this.epoch) return;
        this.rendezvous.get(m.commPeers.group)?.resolve(m.commPeers.payloads);
        this.rendezvous.delete(m.commPeers.group);
        return;
      default: {
        const body = (m as unknown as Record<string, { epoch: string }>)[m.msg]!;
        if (body.epoch !== this.epoch) return; // stale: another membership epoch
        this.emit(m.msg as 'start', body as never);
      }
    }
  }

  private finish(err: Error | null): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.heartbeat);
    this.cancelRendezvous(`control stream closed${err ? `: ${err.message}` : ''}`);
    this.emit('closed', err);
  }

  /** Fails every pending rendezvous (its epoch was aborted: the coordinator dropped the group). */
  cancelRendezvous(why: string): void {
    for (const [group, r] of this.rendezvous) {
      this.rendezvous.delete(group);
      r.reject(new Error(`rendezvous ${group}: ${why}`));
    }
  }

  /**
   * The worker declared itself wedged: no more heartbeats, so the coordinator's heartbeat timeout
   * confirms the loss even if the worker's own report got lost. Other messages still flow.
   */
  stopBeating(): void {
    this.beating = false;
  }

  send(m: OutgoingWorkerMessage): void {
    if (this.closed) return;
    this.out.send(m);
  }

  /** Messages waiting for the write in flight (NODESPEED_REQUEST_TRACE shows it). */
  get backlog(): number {
    return this.out.backlog;
  }

  /** Sends this member's blob of `group` and resolves with every member's, by group rank. */
  exchange(group: string, groupRank: number, groupSize: number, payload: Uint8Array): Promise<Buffer[]> {
    return new Promise((resolve, reject) => {
      if (this.closed) return reject(new Error(`rendezvous ${group}: the control stream is closed`));
      this.rendezvous.set(group, { resolve, reject });
      this.send({ commOffer: { epoch: this.epoch, group, groupRank, groupSize, payload: Buffer.from(payload) } });
    });
  }

  /** Ends the stream once what was sent has been written, and closes the channel. */
  close(): void {
    clearInterval(this.heartbeat);
    const wasOpen = !this.closed;
    this.closed = true;
    this.out.whenIdle(() => {
      if (wasOpen) {
        try {
          this.call.end();
        } catch {
          /* already closed */
        }
      }
      this.client.close();
    });
  }
}
