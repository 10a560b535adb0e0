// Who is in the job: workers join over their control stream with the job token, get their
// assignment from the layout, meet their communicator peers through the coordinator (rendezvous),
// report load progress and readiness, and heartbeat both ways from the first message on. Owns the
// membership epoch that every control message carries; a message of another epoch is
// stale and ignored.
import { timingSafeEqual } from 'node:crypto';
import { EventEmitter } from 'node:events';

import * as grpc from '@grpc/grpc-js';

import type { Precision } from '../model/precision.js';
import type { Join, Tokens, WorkerMessage } from '../protocol/control.js';
import { slotOfCommonName } from '../protocol/job-secrets.js';
import type { Layout } from './layout.js';
import { printable } from './log-text.js';
import { RefusalLog } from './refusals.js';
import { Rendezvous } from './rendezvous.js';
import { Slots } from './spares.js';
import type { SlotInfo, Spare } from './spares.js';
import { Replica, WorkerConn } from './worker-conn.js';
import type { ControlCall } from './worker-conn.js';

export { Replica, WorkerConn } from './worker-conn.js';
export type { ReplicaState, WorkerState } from './worker-conn.js';

export interface MembershipOptions {
  token: string;
  modelDir: string;
  maxQueue: number;
  heartbeatIntervalMs: number;
  heartbeatTimeoutMs: number;
  /** Every launcher slot (spares included), by slot; default: the layout's ranks, no spares. */
  slots?: SlotInfo[];
  /**
   * The control plane runs mutual TLS with per-slot certificates: a Join is admitted only for the
   * slot its connection's certificate names.
   */
  slotCertificates?: boolean;
  /** A connection that has not sent its Join after this long is ended (default 10 s). */
  joinDeadlineMs?: number;
  /** Encrypt replicas' TCP data planes between hosts (--encrypt-data-plane). */
  encryptDataPlane?: boolean;
  /** The liveness responder's port, told to workers in their assignment (0: none). */
  livenessPort?: () => number;
  log: (line: string) => void;
}

export interface MembershipEvents {
  progress: [done: number, total: number];
  'replica-serving': [replica: Replica];
  'replica-lost': [replica: Replica, reason: string];
  'worker-lost': [worker: WorkerConn, reason: string];
  tokens: [replica: Replica, msg: Tokens];
  refused: [join: Join, reason: string];
  /** A spare left the pool (its stream ended, its process exited, it went silent). */
  'spare-lost': [slot: number, reason: string];
}

/** A Join's worker-supplied text, escaped once at the door (it reaches logs and ClusterStatus). */
function sanitizeJoin(j: Join): Join {
  return { ...j, host: printable(j.host, 253), ...(j.device ? { device: { ...j.device, name: printable(j.device.name, 200), kind: printable(j.device.kind, 16) } } : {}),
    listenAddresses: (j.listenAddresses ?? []).slice(0, 16).map((a) => printable(a, 300)) };
}

export class Membership extends EventEmitter<MembershipEvents> {
  /** The membership epoch: moved on by every re-form (users see it as ClusterStatus `generation`). */
  epoch = 1n;
  readonly workers = new Map<number, WorkerConn>();
  readonly replicas: Replica[];
  readonly slots: Slots;
  private readonly rendezvous = new Rendezvous();
  private readonly monitor: NodeJS.Timeout;
  private lastTick = Date.now();
  private stopping = false;
  /** Refused connections and Joins, logged once per source and reason, then summarised. */
  readonly refusals: RefusalLog;

  /** Most requests a replica's driver keeps waiting for admission. */
  get maxQueue(): number {
    return this.o.maxQueue;
  }

  constructor(readonly layout: Layout, private readonly o: MembershipOptions) {
    super();
    this.slots = new Slots(o.slots ?? layout.ranks.map((p) => ({ host: p.host, localRank: p.localRank })), layout.world);
    // Ranks grouped in one pass (a filter per replica took a minute for 80,000 single-rank replicas).
    const ranksOf: number[][] = Array.from({ length: layout.replicas }, () => []);
    for (const p of layout.ranks) ranksOf[p.replica]!.push(p.rank);
    this.replicas = ranksOf.map((ranks, r) => {
      const gi = layout.replicaGroup[r]!;
      const g = layout.groups[gi]!;
      return new Replica(r, ranks, g.tp, g.pp, gi, g.precision);
    });
    this.refusals = new RefusalLog(o.log);
    // One timer both sends the coordinator's heartbeats and declares silent workers lost.
    this.monitor = setInterval(() => this.tick(), o.heartbeatIntervalMs);
    this.monitor.unref();
  }

  /** The Control.Connect handler: one call per worker for its whole life. */
  handleStream(call: ControlCall): void {
    let worker: WorkerConn | undefined;
    let spare: number | undefined;
    let joined = false;
    // A connection that never joins holds nothing for long.
    const deadline = this.o.joinDeadlineMs ?? 10_000;
    const joinTimer = setTimeout(() => {
      if (!joined) this.refuse(call, null, `no Join within ${deadline / 1000} s of connecting`, grpc.status.DEADLINE_EXCEEDED);
    }, deadline);
    joinTimer.unref();
    call.on('data', (m: WorkerMessage) => {
      try {
        if (!worker && spare !== undefined) {
          const s = this.slots.spare(spare);
          if (s) s.lastHeartbeat = Date.now();
          return;
        }
        if (!worker) {
          if (joined) return; // refused: nothing it sends counts
          joined = true;
          clearTimeout(joinTimer);
          if (m.msg !== 'join') return this.refuse(call, null, 'the first message must be Join');
          worker = this.admit(call, sanitizeJoin(m.join), (slot) => {
            spare = slot;
          }, (rank) => {
            worker = this.workers.get(rank);
          });
          return;
        }
        this.onMessage(worker, m);
      } catch (err) {
        this.o.log(`coordinator: control message from rank ${worker?.rank ?? '?'}: ${(err as Error).message}`);
      }
    });
    const gone = (why: string) => {
      clearTimeout(joinTimer);
      if (!worker && spare !== undefined && this.slots.dropSpare(spare, call)) {
        this.o.log(`coordinator: spare in slot ${spare} gone: ${why}`);
        if (!this.stopping) this.emit('spare-lost', spare, why);
      }
      if (worker && this.workers.get(worker.rank) === worker) this.lose(worker, why);
    };
    call.on('end', () => {
      gone('control stream closed');
      try {
        call.end();
      } catch {
        /* already ended */
      }
    });
    call.on('error', (err) => gone(`control stream failed: ${err.message}`));
    call.on('cancelled', () => gone('control stream cancelled'));
  }

  private refuse(call: ControlCall, join: Join | null, reason: string, code = grpc.status.PERMISSION_DENIED): undefined {
    const peer = call.getPeer?.() ?? '?';
    this.refusals.refused(peer.replace(/:\d+$/, ''), join ? `the Join of slot ${join.rank} (pid ${join.pid} on ${join.host || '?'})` : 'a connection', reason);
    if (join) this.emit('refused', join, reason);
    // grpc-js: emitting 'error' on a server stream ends the call with that status.
    call.emit('error', { code, details: reason, metadata: new grpc.Metadata() });
    return undefined;
  }

  private tokenOk(given: string): boolean {
    const a = Buffer.from(given);
    const b = Buffer.from(this.o.token);
    return a.length === b.length && timingSafeEqual(a, b);
  }

  /**
   * A Join names the worker's launcher slot (RANK). A slot holding a layout rank gets that rank's
   * assignment; a spare slot's worker waits as a spare (`asSpare`) until `takeOver` hands it a rank.
   */
  private admit(call: ControlCall, join: Join, asSpare: (slot: number) => void, takeOver: (rank: number) => void): WorkerConn | undefined {
    if (this.o.slotCertificates) {
      const cn = call.getAuthContext?.()?.sslPeerCertificate?.subject?.CN;
      const slot = slotOfCommonName(Array.isArray(cn) ? cn[0] : cn);
      if (slot === undefined) return this.refuse(call, join, 'its connection carries no slot certificate of this job', grpc.status.UNAUTHENTICATED);
      if (slot !== join.rank) return this.refuse(call, join, `the certificate of slot ${slot} cannot join as slot ${join.rank}`);
    }
    if (!this.tokenOk(join.token)) return this.refuse(call, join, 'wrong job token');
    if (join.rank >= this.slots.info.length)
      return this.refuse(call, join, `rank ${join.rank} is not in this job's ${this.slots.info.length} launcher slots`, grpc.status.INVALID_ARGUMENT);
    const rank = this.slots.rankOf(join.rank);
    if (rank === undefined) {
      if (this.slots.spare(join.rank)) return this.refuse(call, join, `spare slot ${join.rank} already joined`, grpc.status.ALREADY_EXISTS);
      this.slots.addSpare({ slot: join.rank, join, call, lastHeartbeat: Date.now(), bind: takeOver });
      asSpare(join.rank);
      this.o.log(`coordinator: spare joined in slot ${join.rank} from ${join.host} (pid ${join.pid}); ${this.slots.spareCount} spare(s) ready`);
      return undefined;
    }
    const plan = this.layout.ranks[rank]!;
    const old = this.workers.get(rank);
    const replica = this.replicas[plan.replica]!;
    if (old && old.state !== 'lost') return this.refuse(call, join, `rank ${join.rank} already joined (pid ${old.join.pid})`, grpc.status.ALREADY_EXISTS);
    // A rank lost in this epoch cannot come back into it: its peers have aborted their
    // communicators. Only a re-formed membership (a new epoch) may take it again.
    if (old && !replica.reforming) return this.refuse(call, join, `rank ${join.rank} was lost in generation ${replica.epoch} (${old.lostReason}); it cannot rejoin it`,
      grpc.status.FAILED_PRECONDITION);
    // A retired replica takes nobody back (a restart still under way when it was retired).
    if (replica.state === 'lost' && !replica.reforming)
      return this.refuse(call, join, `rank ${join.rank}'s replica ${replica.id} was retired`, grpc.status.FAILED_PRECONDITION);
    const w = new WorkerConn(plan, join, call, replica.epoch);
    this.workers.set(rank, w);
    if (replica.state === 'forming') replica.state = 'loading';
    this.o.log(`coordinator: rank ${plan.rank} joined from ${join.host} (pid ${join.pid}, ${join.device?.kind ?? '?'})` +
      (replica.holding ? `; its assignment waits until replica ${replica.id}'s layout is settled` : ''));
    if (!replica.holding) this.assign(w);
    return w;
  }

  /**
   * A respawn restarts the replica's ranks, but which layout they get depends on which hosts still
   * answer (a smaller one when some do not, shrink.ts): until release(), ranks that join wait.
   */
  hold(replica: Replica): void {
    replica.holding = true;
  }

  /** Ends hold(): every rank of the replica that joined meanwhile gets its assignment (plan and epoch as they are now). */
  release(replica: Replica): void {
    replica.holding = false;
    for (const r of replica.ranks) {
      const w = this.workers.get(r);
      if (!w || w.state !== 'joined') continue;
      w.plan = this.layout.ranks[r]!;
      w.epoch = replica.epoch;
      this.assign(w);
    }
  }

  /** Sends the worker its assignment in its epoch (the peers are the replica's current hosts). */
  private assign(w: WorkerConn): void {
    const plan = w.plan;
    const replica = this.replicas[plan.replica]!;
    const g = this.layout.groups[replica.group]!.serving;
    const peers = replica.ranks.map((r) => {
      const p = this.layout.ranks[r]!;
      return { rank: r, host: p.host, listenAddresses: this.workers.get(r)?.join.listenAddresses ?? [] };
    });
    w.send({
      assignment: {
        epoch: w.epoch, rank: plan.rank, replica: plan.replica, stage: plan.stage, tpRank: plan.tpRank,
        tp: replica.tp, pp: replica.pp, layerStart: plan.layerStart, layerEnd: plan.layerEnd,
        modelDir: this.o.modelDir, dtype: g.dtype, device: g.device, deviceIndex: plan.localRank,
        peers, kvBlocks: g.kvBlocks, threads: g.threads, heartbeatIntervalMs: this.o.heartbeatIntervalMs,
        maxBatchTokens: g.maxBatchTokens, maxQueue: this.o.maxQueue, heartbeatTimeoutMs: this.o.heartbeatTimeoutMs, maxSeqs: g.maxSeqs,
        livenessPort: this.o.livenessPort?.() ?? 0, encryptDataPlane: this.o.encryptDataPlane ?? false,
        quantize: g.quantize, kvCacheDtype: g.kvCacheDtype,
      },
    });
  }

  private stale(w: WorkerConn, epoch: string): boolean {
    if (epoch === w.epoch) return false;
    // '0': a worker that has no assignment yet (held, see hold()) heartbeats; nothing to report.
    if (epoch !== '0') this.o.log(`coordinator: ignored a stale message of generation ${epoch} from rank ${w.rank} (assigned ${w.epoch})`);
    return true;
  }

  private onMessage(w: WorkerConn, m: WorkerMessage): void {
    if (m.msg === 'batch') {
      for (const x of m.batch.messages) this.onMessage(w, x as WorkerMessage);
      return;
    }
    if (w.state === 'lost') {
      // Declared lost (a hang that ended, a SIGCONT): its replica moved on without it. It cannot
      // rejoin any epoch on this stream; ending the stream makes it exit.
      if (!w.toldLost) {
        w.toldLost = true;
        this.o.log(`coordinator: rank ${w.rank} (pid ${w.join.pid}) spoke after it was declared lost (${w.lostReason}); ` +
          `its ${m.msg} of generation ${(m as unknown as Record<string, { epoch?: string }>)[m.msg]?.epoch ?? '?'} is ignored and its stream ended`);
        w.call.emit('error', { code: grpc.status.FAILED_PRECONDITION, details: `rank ${w.rank} was declared lost (${w.lostReason}); it cannot rejoin`,
          metadata: new grpc.Metadata() });
      }
      return;
    }
    w.lastHeartbeat = Date.now(); // any message proves the worker alive
    switch (m.msg) {
      case 'heartbeat':
        if (this.stale(w, m.heartbeat.epoch)) return;
        if (m.heartbeat.load) this.replicas[w.plan.replica]!.load = m.heartbeat.load;
        return;
      case 'loadProgress':
        if (this.stale(w, m.loadProgress.epoch)) return;
        w.state = 'loading';
        w.loadDone = Number(m.loadProgress.done);
        w.loadTotal = Number(m.loadProgress.total);
        this.emit('progress', ...this.progress());
        return;
      case 'ready':
        if (this.stale(w, m.ready.epoch)) return;
        w.state = 'ready';
        w.kvBlocks = m.ready.kvBlocks;
        w.kvWindowBlocks = m.ready.kvWindowBlocks;
        w.kvBlockSize = m.ready.kvBlockSize;
        w.describe = printable(m.ready.describe, 1000);
        w.loadDone = w.loadTotal = Math.max(w.loadTotal, 1);
        this.o.log(`coordinator: rank ${w.rank} ready (${w.describe})`);
        this.emit('progress', ...this.progress());
        this.maybeStart(this.replicas[w.plan.replica]!);
        return;
      case 'commOffer':
        if (this.stale(w, m.commOffer.epoch)) return;
        this.rendezvous.offer(w, m.commOffer.group, m.commOffer.groupRank, m.commOffer.groupSize, m.commOffer.payload, (r) => this.workers.get(r));
        return;
      case 'tokens':
        if (this.stale(w, m.tokens.epoch)) return;
        this.emit('tokens', this.replicas[w.plan.replica]!, m.tokens);
        return;
      case 'error':
        if (this.stale(w, m.error.epoch)) return;
        // The worker printed the message itself (its output reaches the launcher's log); remember it as the cause.
        if (m.error.fatal) {
          const message = printable(m.error.message, 1000);
          if (w.reported?.epoch !== w.epoch) w.reported = { epoch: w.epoch, message };
          this.reportedFailure(w, message);
        }
        return;
      case 'join':
        this.o.log(`coordinator: rank ${w.rank} sent Join twice; ignored`);
    }
  }

  /** Sum of every worker's load progress (a worker that has not reported counts as 0 of 1). */
  progress(): [number, number] {
    let done = 0;
    let total = 0;
    for (const rank of this.replicas.flatMap((r) => r.ranks)) {
      const w = this.workers.get(rank);
      const t = w && w.loadTotal > 0 ? w.loadTotal : 1;
      total += t;
      done += w ? Math.min(w.loadDone, t) : 0;
    }
    return [done, total];
  }

  private maybeStart(replica: Replica): void {
    const ws = replica.ranks.map((r) => this.workers.get(r));
    if (ws.some((w) => !w || w.state !== 'ready')) return;
    replica.kvBlocks = Math.min(...ws.map((w) => w!.kvBlocks));
    replica.kvWindowBlocks = Math.min(...ws.map((w) => w!.kvWindowBlocks));
    replica.kvBlockSize = ws[0]!.kvBlockSize;
    replica.state = 'serving';
    replica.reforming = false;
    for (const w of ws) {
      w!.state = 'serving';
      w!.send({ start: { epoch: w!.epoch, kvBlocks: replica.kvBlocks, kvBlockSize: replica.kvBlockSize, kvWindowBlocks: replica.kvWindowBlocks } });
    }
    const windowed = replica.kvWindowBlocks ? ` + ${replica.kvWindowBlocks} for the windowed layers` : '';
    this.o.log(`coordinator: replica ${replica.id} serving (${replica.kvBlocks} KV blocks${windowed} of ${replica.kvBlockSize} tokens)`);
    this.emit('replica-serving', replica);
  }

  /** The replica's driver (stage 0, TP rank 0): the one that schedules and streams tokens. */
  driver(replica: Replica): WorkerConn | undefined {
    return this.workers.get(replica.ranks[0]!);
  }

  /**
   * A launcher slot's process exited: its rank is lost, or its spare leaves the pool. Returns the
   * layout rank the slot held, if any.
   */
  loseSlot(slot: number, reason: string): number | undefined {
    const rank = this.slots.rankOf(slot);
    if (rank === undefined) {
      const s = this.slots.spare(slot);
      if (s && this.slots.dropSpare(slot)) {
        this.o.log(`coordinator: spare in slot ${slot} (pid ${s.join.pid}) ${reason}`);
        if (!this.stopping) this.emit('spare-lost', slot, reason);
      }
      return undefined;
    }
    const w = this.workers.get(rank);
    if (w) this.lose(w, reason);
    else this.loseUnjoined(rank, `${reason} before it joined`);
    return rank;
  }

  /**
   * The slot's process ended before its rank joined (a restart that died at start-up, or one that
   * never joined in time): when its replica is being re-formed, that re-form failed and the
   * replica is lost again (failover tries once more or retires it). Without this the replica would
   * wait for a join that cannot come.
   */
  loseUnjoined(rank: number, reason: string): void {
    const replica = this.replicas[this.layout.ranks[rank]!.replica]!;
    if (this.stopping || !replica.reforming || replica.state === 'lost' || this.workers.has(rank)) return;
    this.o.log(`coordinator: rank ${rank} of replica ${replica.id} (generation ${replica.epoch}) ${reason}`);
    this.replicaLost(replica, rank, `rank ${rank} lost: ${reason}`);
  }

  /**
   * A worker reported a fatal error. When it is a survivor whose collective failed on a dead peer,
   * the peer's own loss (its stream closing, its process exiting, its heartbeats stopping) usually
   * arrives a moment later: wait for it briefly, so the loss is recorded against the rank that was
   * really lost and a spare replaces that one, not the survivor. If nothing else happened meanwhile,
   * the reporting worker is the lost one.
   */
  private reportedFailure(w: WorkerConn, message: string): void {
    const epoch = w.epoch;
    const grace = Math.min(this.o.heartbeatTimeoutMs + this.o.heartbeatIntervalMs, 3000);
    setTimeout(() => {
      if (this.workers.get(w.rank) === w && w.epoch === epoch) this.lose(w, message);
    }, grace).unref();
  }

  /**
   * Re-forms a lost replica in place with a spare (failover.ts recovery (a)): a new epoch, the
   * spare takes the lost rank (the rank moves to the spare's slot and host), the survivors keep their
   * processes and loaded shards and get the new epoch's assignment (fresh communicators, new
   * unique id). Returns the spare, or undefined (and changes nothing) when no spare is joined or a
   * survivor is not connected.
   */
  reformWithSpare(replica: Replica, lost: number): Spare | undefined {
    const survivors = replica.ranks.filter((r) => r !== lost).map((r) => this.workers.get(r));
    if (survivors.some((w) => !w || w.state === 'lost')) return undefined;
    const old = this.workers.get(lost);
    const spare = this.slots.takeSpare(lost, this.slots.info[this.slots.slotOf(lost)]!.host, this.layout.groups[replica.group]!.serving.device);
    if (!spare) return undefined;
    const epoch = this.newEpoch(replica);
    if (old && old.state !== 'lost') {
      old.state = 'lost';
      old.lostReason = `replaced by the spare in slot ${spare.slot} in generation ${epoch}`;
    }
    this.workers.delete(lost);
    const where = this.slots.info[spare.slot]!;
    const plan = { ...this.layout.ranks[lost]!, host: where.host, localRank: where.localRank };
    this.layout.ranks[lost] = plan;
    const w = new WorkerConn(plan, spare.join, spare.call, epoch);
    this.workers.set(lost, w);
    spare.bind(lost);
    for (const s of survivors) {
      s!.epoch = epoch;
      s!.state = 'joined';
    }
    this.o.log(`coordinator: the spare in slot ${spare.slot} (${where.host} pid ${spare.join.pid}) takes rank ${lost} of replica ${replica.id}; ` +
      `survivors ${survivors.map((s) => s!.rank).join(', ') || '(none)'} re-form in place in generation ${epoch}`);
    for (const r of replica.ranks) this.assign(this.workers.get(r)!);
    return spare;
  }

  /** A new epoch for the replica's re-form (also used by shrink.ts). */
  newEpoch(replica: Replica): string {
    this.epoch++;
    this.rendezvous.dropReplica(replica.id);
    replica.state = 'forming';
    replica.reforming = true;
    replica.load = null;
    replica.epoch = String(this.epoch);
    return replica.epoch;
  }

  /**
   * Starts re-forming a lost replica: a new membership epoch, its old workers forgotten (a
   * late message of theirs is ignored: their connections stay marked lost), its ranks free to join
   * again, and only into the new epoch.
   */
  reform(replica: Replica): string {
    this.newEpoch(replica);
    for (const r of replica.ranks) {
      // The survivors' connections go quiet too: whatever they still send (a collective that
      // failed on the dead peer, a late heartbeat) belongs to the old epoch and is ignored.
      const w = this.workers.get(r);
      if (w && w.state !== 'lost') {
        w.state = 'lost';
        w.lostReason = `replica ${replica.id} re-formed in generation ${this.epoch}`;
      }
      this.workers.delete(r);
    }
    this.o.log(`coordinator: re-forming replica ${replica.id} in generation ${replica.epoch}`);
    return replica.epoch;
  }

  /** The replica cannot be re-formed: it stays lost and the others carry the load. */
  retire(replica: Replica): void {
    replica.reforming = false;
    replica.state = 'lost';
  }

  get isStopping(): boolean {
    return this.stopping;
  }

  private lose(w: WorkerConn, reason: string): void {
    if (w.state === 'lost' || this.stopping || this.workers.get(w.rank) !== w) return;
    // A worker that reported a fatal error and then exited is lost to that error, not to its closed stream.
    if (w.reported?.epoch === w.epoch) reason = w.reported.message;
    w.state = 'lost';
    w.lostReason = reason;
    this.o.log(`coordinator: rank ${w.rank} (${w.join.host} pid ${w.join.pid}) lost: ${reason}`);
    this.emit('worker-lost', w, reason);
    const replica = this.replicas[w.plan.replica]!;
    if (replica.state === 'lost') return;
    this.replicaLost(replica, w.rank, `rank ${w.rank} lost: ${reason}`);
  }

  private replicaLost(replica: Replica, rank: number, reason: string): void {
    replica.state = 'lost';
    // The survivors must not block forever on the dead peer: tell them to abort their communicators.
    for (const r of replica.ranks) if (r !== rank) for (const s of [this.workers.get(r)]) s?.send({ abort: { epoch: s.epoch, reason } });
    this.emit('replica-lost', replica, reason);
  }

  private tick(): void {
    const now = Date.now();
    // Liveness is judged only over time this process could listen. When its own event loop was
    // held up (this tick came late), heartbeats may be queued unread: the delay is not the
    // workers' silence, so it is excused instead of failing healthy workers over.
    const late = now - this.lastTick - this.o.heartbeatIntervalMs;
    this.lastTick = now;
    if (late > this.o.heartbeatIntervalMs) {
      this.o.log(`coordinator: the event loop was held up for ${late} ms; that time does not count as silence of the workers`);
      for (const w of this.workers.values()) w.lastHeartbeat = Math.min(now, w.lastHeartbeat + late);
      this.slots.excuse(late);
    }
    for (const w of this.workers.values()) {
      if (w.state === 'lost') continue;
      if (now - w.lastHeartbeat > this.o.heartbeatTimeoutMs) {
        this.lose(w, `no heartbeat for ${now - w.lastHeartbeat} ms`);
        continue;
      }
      w.send({ heartbeat: { epoch: w.epoch, sentAtMs: now } });
    }
    for (const slot of this.slots.tickSpares(now, this.o.heartbeatTimeoutMs, this.o.log)) this.emit('spare-lost', slot, 'no heartbeat');
  }

  /** Tells every worker to stop and closes the streams. */
  stopAll(reason: string): void {
    this.stopping = true;
    clearInterval(this.monitor);
    this.refusals.dispose();
    for (const w of this.workers.values()) {
      w.send({ stop: { epoch: w.epoch, reason } });
      w.close();
    }
    this.slots.stopSpares(reason);
  }
}
