// Heartbeat-driven failover: when a rank of a serving replica is lost (its control stream
// closes, its process exits, or it misses heartbeats past --heartbeat-timeout), the membership has
// already stopped routing to the replica and told the survivors to abort their communicators. This
// module then
//   1. re-queues every request of that replica: each is replayed from prompt + the tokens the
//      client already has, on another serving replica or on the re-formed one; seeded sampling is a
//      function of (seed, position), so the continuation is the one a fault-free run produces and
//      the router drops nothing the client has not seen (no repeat, no gap);
//   2. re-forms the replica, in this order of preference:
//      (a) with a spare (--spares): a joined spare takes the lost rank, the survivors keep their
//          processes and shards and re-form in place in a new epoch (fresh communicators);
//          once the replica serves, the lost rank's old slot is killed and started again as a
//          spare (the pool is topped up; after recovery so a slow kill never delays serving);
//      (b) by respawn: a new epoch, the replica's surviving ranks stopped through the launcher,
//          every rank of the replica restarted on its host (job.restartRank), fresh rendezvous and
//          reload; also the fallback when a re-form with a spare fails;
//      (c) when some ranks cannot be restarted (their host no longer answers), the ranks that were
//          restarted get the largest smaller layout that fits their memory (shrink.ts: fewer TP
//          ranks and/or pipeline stages) in a new epoch and load their new shards; ranks that
//          layout leaves out are started again as spares once it serves;
//      (d) when nothing smaller fits, or the replica keeps failing, it is retired: its processes
//          are stopped and the other replicas carry the load.
//   3. answers UNAVAILABLE to any request that waited longer than --request-timeout for a replica.
// Every failure is recorded (who, when, cause, recovery, time to recover) for ClusterStatus.
import { EventEmitter } from 'node:events';

import * as grpc from '@grpc/grpc-js';

import type { FailoverCountersMsg, FailureStatusMsg, QuarantinedRequestMsg, RecoveryName } from '../protocol/api.js';
import type { Membership, Replica, WorkerConn } from './membership.js';
import type { RequestStore } from './requests.js';
import type { Router } from './router.js';
import { applyShrink, planShrink, shape } from './shrink.js';
import type { ShrinkContext } from './shrink.js';

/**
 * The job's worker processes, as failover uses them (the launcher's Job is one): a slot's process
 * exiting, and killing or starting a slot's process again. Slots are the launcher's ranks.
 */
export interface WorkerProcesses {
  on(event: 'rank-exit', listener: (e: { rank: number; code: number; signal: string | null; expected: boolean }) => void): unknown;
  rankState(slot: number): { running: boolean };
  killRank(slot: number, signal?: NodeJS.Signals): Promise<void>;
  restartRank(slot: number): Promise<void>;
}

export interface FailoverOptions {
  /** A request waiting this long for a serving replica fails with UNAVAILABLE. */
  requestTimeoutMs: number;
  /** A restarted rank that has not joined after this long fails the re-form attempt (0: no limit). */
  joinTimeoutMs?: number;
  /** A request in flight through this many replica losses is failed instead of replayed again (default 2). */
  quarantineAfter?: number;
  /** What recovery (c) needs to pick a smaller layout; without it a replica that cannot be respawned is retired. */
  shrink?: ShrinkContext;
  log: (line: string) => void;
}

/**
 * replacing → spare (a spare took the lost rank); respawning → respawned; respawning → shrinking →
 * shrunk (re-formed with a smaller layout on the ranks that could be restarted); any → retired.
 */
export type Recovery = RecoveryName;

export interface FailureRecord {
  rank: number;
  host: string;
  pid: number;
  replica: number;
  cause: string;
  at: number;
  /** The epoch the replica is re-formed in. */
  epoch: string;
  recovery: Recovery;
  recoveredAt?: number;
  recoveryMs?: number;
  replayedRequests: number;
  replayedTokens: number;
  /** shrinking/shrunk: the replica's new layout and the one before, for the log. */
  shape?: string;
}

export type FailoverCounters = FailoverCountersMsg;

/** ClusterStatus fields 12-14: every failure, the totals, the spares joined and waiting (--spares). */
export interface FailoverStatusMsg {
  failures: FailureStatusMsg[];
  failover: FailoverCounters;
  spares: number;
  quarantined: QuarantinedRequestMsg[];
}

/** Quarantined requests kept for ClusterStatus (the newest). */
const QUARANTINE_KEPT = 100;

export interface FailoverEvents {
  recovered: [record: FailureRecord];
  retired: [replica: Replica, reason: string];
}

/** Causes observed on the lost rank itself (as opposed to a survivor's report about its peer). */
const DIRECT_CAUSE = /^rank \d+ lost: (control stream|no heartbeat|process exited)/;

/** Consecutive failures of a replica while it re-forms, before it is retired. */
const MAX_ATTEMPTS = 3;
/** Restarts of a spare slot whose spare died or hung, before the slot is left empty (a crash loop). */
const MAX_SPARE_RESTARTS = 3;
/** How long the survivors of a lost replica may take to exit once the launcher kills them. */
const EXIT_WAIT_MS = 10_000;

export class Failover extends EventEmitter<FailoverEvents> {
  readonly failures: FailureRecord[] = [];
  readonly counters: FailoverCounters = { failures: 0, recoveries: 0, replayedRequests: 0, replayedTokens: 0, quarantinedRequests: 0 };
  readonly quarantined: QuarantinedRequestMsg[] = [];
  /** Replicas re-formed with a smaller layout (recovery (c)); part of counters.recoveries. */
  shrinks = 0;
  private job: WorkerProcesses | undefined;
  private readonly lastLost = new Map<number, WorkerConn>();
  private readonly open = new Map<number, FailureRecord>();
  /** Pid, host and GPU memory of every rank of the replicas being re-formed, as they joined before the loss. */
  private readonly lostWorkers = new Map<number, { pid: number; host: string; gpuMemory: number }>();
  /**
   * Replica → launcher slots to kill and start again as spares once it serves: the lost process a
   * spare replaced, or the ranks a smaller layout left out.
   */
  private readonly topUp = new Map<number, number[]>();
  /** Slots whose host did not answer a restart: never started again (their replica shrank or was retired). */
  private readonly deadSlots = new Set<number>();
  private readonly spareRestarts = new Map<number, number>();
  private readonly refilling = new Set<number>();
  private readonly attempts = new Map<number, number>();
  /** Replica → its respawn under way (settled or not): respawns of one replica run one after another. */
  private readonly respawns = new Map<number, Promise<void>>();
  private readonly timer: NodeJS.Timeout;
  private lastCause = '';

  constructor(private readonly members: Membership, private readonly store: RequestStore, private readonly router: Router,
    private readonly o: FailoverOptions) {
    super();
    members.on('worker-lost', (w) => this.lastLost.set(w.plan.replica, w));
    members.on('replica-lost', (replica, reason) => this.onReplicaLost(replica, reason));
    members.on('replica-serving', (replica) => this.onServing(replica));
    members.on('spare-lost', (slot, why) => this.replaceSpare(slot, why));
    router.beforeDispatch = () => this.expire();
    this.timer = setInterval(() => this.expire(), Math.min(500, o.requestTimeoutMs));
    this.timer.unref();
  }

  /**
   * Arms recovery once the cluster serves (a failure while starting fails the launch instead):
   * from now on a rank's process exit counts as a loss, and lost replicas are re-formed.
   */
  attach(job: WorkerProcesses): void {
    this.job = job;
    job.on('rank-exit', (e) => {
      if (e.expected) return;
      // e.rank is the launcher slot; the layout rank it holds (if any) is the one lost.
      const how = `process exited (${e.signal ?? `code ${e.code ?? '?'}`})`;
      const rank = this.members.slots.rankOf(e.rank);
      if (rank !== undefined) this.attribute(rank, how);
      this.members.loseSlot(e.rank, how);
      // A spare slot's process died (maybe before it even joined): start another.
      if (rank === undefined) this.replaceSpare(e.rank, how);
    });
  }

  status(): FailoverStatusMsg {
    return {
      failures: this.failures.map((f) => ({
        rank: Math.max(0, f.rank), host: f.host, pid: f.pid, replica: f.replica, cause: f.cause, atUnixMs: f.at, recovery: f.recovery,
        recoveryMs: f.recoveryMs ?? 0, generation: f.epoch, replayedRequests: f.replayedRequests, replayedTokens: f.replayedTokens,
      })),
      failover: { ...this.counters },
      spares: this.members.slots.spareCount,
      quarantined: [...this.quarantined],
    };
  }

  /**
   * When a survivor's report was believed first (the victim's own loss did not arrive within the
   * membership's grace, see Membership.reportedFailure), the rank whose process then exits on its
   * own is the one that was really lost: name it in the record.
   * Best effort: when the launcher sees that exit only after respawn() killed the replica's ranks,
   * the exit counts as expected and the record keeps naming the survivor (its cause names the peer).
   */
  private attribute(rank: number, how: string): void {
    const replica = this.members.layout.ranks[rank]?.replica;
    const rec = replica === undefined ? undefined : this.open.get(replica);
    if (!rec || rec.rank === rank || DIRECT_CAUSE.test(rec.cause)) return;
    const who = this.lostWorkers.get(rank);
    rec.cause = `rank ${rank} ${how}; first seen by ${rec.cause}`;
    rec.rank = rank;
    rec.pid = who?.pid ?? 0;
    rec.host = who?.host ?? this.members.layout.ranks[rank]!.host;
  }

  dispose(): void {
    clearInterval(this.timer);
  }

  private onReplicaLost(replica: Replica, reason: string): void {
    if (this.members.isStopping) return;
    const w = this.lastLost.get(replica.id);
    this.lastCause = reason;
    // Requests are moved even without a job to re-form with: another replica may serve them.
    const { moved, quarantined } = this.router.requeue(replica, this.o.quarantineAfter ?? 2, reason);
    for (const q of quarantined) {
      this.counters.quarantinedRequests++;
      this.quarantined.push({ requestId: q.id, replicaLosses: q.replays, atUnixMs: Date.now(), lastCause: reason,
        promptTokens: q.promptIds.length, streamedTokens: q.tokens.length });
      if (this.quarantined.length > QUARANTINE_KEPT) this.quarantined.shift();
      this.o.log(`failover: request ${q.id} quarantined: in flight through ${q.replays} replica losses (the last: ${reason}); ` +
        `failed instead of replayed again (${q.promptIds.length} prompt tokens, ${q.tokens.length} streamed)`);
    }
    const tokens = moved.reduce((n, r) => n + r.tokens.length, 0);
    this.counters.replayedRequests += moved.length;
    this.counters.replayedTokens += tokens;
    if (!this.job) return;
    const prev = this.open.get(replica.id);
    const attempt = (this.attempts.get(replica.id) ?? 0) + 1;
    this.attempts.set(replica.id, attempt);
    for (const r of replica.ranks) {
      const old = this.members.workers.get(r);
      if (old) this.lostWorkers.set(r, { pid: old.join.pid, host: old.plan.host, gpuMemory: Number(old.join.device?.totalMemory ?? 0) });
    }
    // (a) a spare takes the lost rank, survivors re-form in place; only on the first attempt (a
    // failed in-place re-form falls back to respawning every rank from clean processes).
    const spare = !prev && w && w.plan.replica === replica.id ? this.members.reformWithSpare(replica, w.rank) : undefined;
    const epoch = spare ? replica.epoch : this.members.reform(replica);
    let rec: FailureRecord;
    if (prev) {
      // Lost again while re-forming: the same incident, one more attempt.
      rec = prev;
      rec.cause += `; while re-forming: ${reason}`;
      rec.epoch = epoch;
      rec.replayedRequests += moved.length;
      rec.replayedTokens += tokens;
    } else {
      rec = {
        rank: w?.rank ?? -1, host: w?.plan.host ?? '?', pid: w?.join.pid ?? 0, replica: replica.id, cause: reason,
        at: Date.now(), epoch, recovery: spare ? 'replacing' : 'respawning', replayedRequests: moved.length, replayedTokens: tokens,
      };
      this.failures.push(rec);
      this.open.set(replica.id, rec);
      this.counters.failures++;
    }
    // One line per event (failure, recovery, retirement), each whole: who, cause, what is done, ms.
    this.o.log(`failover: replica ${replica.id} lost (${reason}; pid ${w?.join.pid ?? '?'} on ${w?.plan.host ?? '?'}); ${moved.length} requests re-queued (${tokens} tokens streamed), ` +
      (spare ? `the spare in slot ${spare.slot} takes rank ${w!.rank}` : 'respawning its ranks') + ` in generation ${epoch} (attempt ${attempt})`);
    if (spare) {
      this.topUp.set(replica.id, [w!.join.rank]);
      return;
    }
    rec.recovery = 'respawning';
    this.refillNow(replica.id);
    if (attempt > MAX_ATTEMPTS) {
      this.retire(replica, rec, `failed ${attempt} times in a row while re-forming`);
      return;
    }
    // One respawn of a replica at a time: a newer attempt starts once the older one has settled (it
    // then sees itself superseded), so two never restart the same slots at once.
    const run = (this.respawns.get(replica.id) ?? Promise.resolve()).then(() => this.respawn(replica, rec, attempt));
    this.respawns.set(replica.id, run.catch(() => {}));
    void run.catch((err: unknown) => this.retire(replica, rec, (err as Error).message));
  }

  /** Launcher slots of the replica's ranks (a spare that took a rank holds it in its own slot). */
  private slotsOf(replica: Replica): number[] {
    return replica.ranks.map((r) => this.members.slots.slotOf(r));
  }

  /** Waits up to EXIT_WAIT_MS for the slots' processes to exit; returns those still running. */
  private async waitExit(slots: number[]): Promise<number[]> {
    const job = this.job!;
    const deadline = Date.now() + EXIT_WAIT_MS;
    const running = () => slots.filter((s) => job.rankState(s).running);
    while (running().length && Date.now() <= deadline) await new Promise((r) => setTimeout(r, 20));
    return running();
  }

  /**
   * A spare's re-form failed (or the replica is retired) before the lost rank's old slot was
   * refilled: refill it now, so the lost process (maybe only stopped) does not outlive its replica.
   */
  private refillNow(replica: number): void {
    const slots = this.topUp.get(replica) ?? [];
    this.topUp.delete(replica);
    if (this.job) for (const slot of slots) this.startRefill(slot);
  }

  /**
   * A spare died or went silent: kill what is left of it and start its slot again, at most
   * MAX_SPARE_RESTARTS times per slot (a spare that keeps crashing is a bug to see, not to loop on).
   */
  private replaceSpare(slot: number, why: string): void {
    // A lost rank's old slot waiting for its top-up (after its replica serves) is not a spare yet.
    if ([...this.topUp.values()].flat().includes(slot) || this.deadSlots.has(slot)) return;
    if (!this.job || this.members.isStopping || this.members.slots.rankOf(slot) !== undefined || this.refilling.has(slot)) return;
    const n = (this.spareRestarts.get(slot) ?? 0) + 1;
    if (n > MAX_SPARE_RESTARTS) {
      this.o.log(`launcher: spare slot ${slot} left empty (${why}): it was restarted ${MAX_SPARE_RESTARTS} times already`);
      return;
    }
    this.spareRestarts.set(slot, n);
    this.startRefill(slot);
  }

  /** One refill of a slot at a time (a top-up and a dead spare's replacement never race). */
  private startRefill(slot: number): void {
    if (this.refilling.has(slot)) return;
    this.refilling.add(slot);
    void this.refillSpare(slot)
      .catch((err: unknown) => this.o.log(`launcher: slot ${slot} not restarted as a spare: ${(err as Error).message}`))
      .finally(() => this.refilling.delete(slot));
  }

  /** After a spare took a rank: stop the lost process for good and start its slot again as a spare. */
  private async refillSpare(slot: number): Promise<void> {
    const job = this.job!;
    await job.killRank(slot, 'SIGKILL');
    if ((await this.waitExit([slot])).length) throw new Error(`slot ${slot} did not exit within ${EXIT_WAIT_MS} ms`);
    if (this.members.isStopping || this.members.slots.rankOf(slot) !== undefined) return;
    await job.restartRank(slot);
    this.o.log(`launcher: restarted slot ${slot} as a spare`);
  }

  private async respawn(replica: Replica, rec: FailureRecord, attempt: number): Promise<void> {
    const job = this.job!;
    const superseded = () => this.open.get(replica.id) !== rec || this.attempts.get(replica.id) !== attempt || this.members.isStopping;
    if (superseded()) return;
    // The survivors were told to abort; stop them for good so each rank restarts from a clean
    // process (and a new communicator) on its host.
    const ranks = [...replica.ranks];
    const slots = this.slotsOf(replica);
    await Promise.all(slots.map((s) => job.killRank(s, 'SIGKILL')));
    const stuck = await this.waitExit(slots);
    if (superseded()) return; // superseded or shutting down
    // Whether the restarted ranks keep the replica's layout depends on every host answering: their
    // joins wait for their assignment until every restart has settled.
    this.members.hold(replica);
    const results = await Promise.allSettled(slots.map((s) => (stuck.includes(s)
      ? Promise.reject(new Error(`its process did not exit within ${EXIT_WAIT_MS} ms of SIGKILL`)) : job.restartRank(s))));
    // Retired while these restarts were under way: what they started must not outlive the replica.
    if (replica.state === 'lost' && !replica.reforming && !this.members.isStopping)
      for (const s of slots) void job.killRank(s, 'SIGKILL').catch(() => {});
    if (superseded()) return;
    const failed = results.flatMap((r, i) => (r.status === 'rejected' ? [{ rank: ranks[i]!, slot: slots[i]!, why: (r.reason as Error).message }] : []));
    if (!failed.length) {
      this.members.release(replica);
      this.o.log(`launcher: restarted ranks ${ranks.join(', ')} of replica ${replica.id} (generation ${rec.epoch})`);
    } else {
      this.shrink(replica, rec, ranks.filter((r) => !failed.some((f) => f.rank === r)), failed);
    }
    this.joinDeadline(replica, superseded);
  }

  /**
   * A restarted process that hangs before it joins sends no heartbeat and does not exit: after
   * --join-timeout it is killed and the attempt fails (the next one restarts the replica again).
   */
  private joinDeadline(replica: Replica, superseded: () => boolean): void {
    const ms = this.o.joinTimeoutMs ?? 0;
    if (!ms) return;
    setTimeout(() => {
      if (superseded() || replica.state === 'serving') return;
      const missing = replica.ranks.find((r) => !this.members.workers.has(r));
      if (missing === undefined) return;
      void this.job!.killRank(this.members.slots.slotOf(missing), 'SIGKILL').catch(() => {});
      this.members.loseUnjoined(missing, `did not join within ${ms / 1000} s of its restart (--join-timeout)`);
    }, ms).unref();
  }

  /**
   * Recovery (c): some of the replica's ranks could not be restarted (their host no longer answers).
   * The ranks that were get the largest smaller layout that fits them (shrink.ts); throws (and the
   * replica is retired) when none does.
   */
  private shrink(replica: Replica, rec: FailureRecord, restarted: number[], failed: Array<{ rank: number; slot: number; why: string }>): void {
    for (const f of failed) this.o.log(`launcher: rank ${f.rank} of replica ${replica.id} (slot ${f.slot}) not restarted: ${f.why}`);
    const why = failed.map((f) => `rank ${f.rank} not restarted: ${f.why}`).join('; ');
    if (!this.o.shrink) throw new Error(why);
    const was = shape(replica.tp, replica.pp);
    const choice = planShrink(this.members, replica, new Set(restarted), (r) => this.lostWorkers.get(r)?.gpuMemory ?? 0, this.o.shrink);
    const plan = choice.plan;
    if (!plan) throw new Error(`${why}; no smaller layout fits the ${restarted.length} rank(s) left (${choice.refused.join('; ')})`);
    for (const f of failed) this.deadSlots.add(f.slot);
    const surplus = plan.surplus.map((r) => ({ rank: r, slot: this.members.slots.slotOf(r) }));
    const { epoch } = applyShrink(this.members, replica, plan);
    rec.recovery = 'shrinking';
    rec.epoch = epoch;
    rec.shape = `${shape(plan.tp, plan.pp)} on rank${replica.ranks.length > 1 ? 's' : ''} ${replica.ranks.join(', ')} (was ${was})`;
    // Ranks the smaller layout leaves out were restarted for nothing: stop them now (the CPU is the
    // loading ranks'), start their slots again as spares once the replica serves.
    for (const s of surplus) void this.job!.killRank(s.slot, 'SIGKILL').catch(() => {});
    if (surplus.length) this.topUp.set(replica.id, [...(this.topUp.get(replica.id) ?? []), ...surplus.map((s) => s.slot)]);
    this.o.log(`coordinator: replica ${replica.id} re-formed as ${rec.shape} in generation ${epoch}` +
      (choice.refused.length ? `; refused: ${choice.refused.join('; ')}` : '') +
      (surplus.length ? `; rank(s) ${surplus.map((s) => s.rank).join(', ')} left out, their slots become spares once it serves` : ''));
  }

  private retire(replica: Replica, rec: FailureRecord, why: string): void {
    if (this.members.isStopping) return;
    rec.recovery = 'retired';
    this.open.delete(replica.id);
    this.members.retire(replica);
    this.refillNow(replica.id);
    this.o.log(`failover: replica ${replica.id} retired: ${why}; rank ${rec.rank} (pid ${rec.pid} on ${rec.host}) was lost ${Date.now() - rec.at} ms ago ` +
      `(${rec.cause}); the other replicas carry its load`);
    // Stop what is left of it (survivors waiting to be re-formed); a host that is gone is skipped.
    for (const s of this.slotsOf(replica)) void this.job?.killRank(s, 'SIGKILL').catch(() => {});
    this.emit('retired', replica, why);
  }

  private onServing(replica: Replica): void {
    const rec = this.open.get(replica.id);
    if (!rec) return;
    this.open.delete(replica.id);
    this.attempts.delete(replica.id);
    rec.recovery = rec.recovery === 'replacing' ? 'spare' : rec.recovery === 'shrinking' ? 'shrunk' : 'respawned';
    rec.recoveredAt = Date.now();
    rec.recoveryMs = rec.recoveredAt - rec.at;
    this.counters.recoveries++;
    if (rec.recovery === 'shrunk') this.shrinks++;
    this.o.log(`failover: replica ${replica.id} serving again in generation ${rec.epoch}, ${rec.recoveryMs} ms after rank ${rec.rank} was lost ` +
      `(pid ${rec.pid} on ${rec.host}: ${rec.cause}); recovery: ${rec.recovery}${rec.recovery === 'shrunk' ? ` to ${rec.shape}` : ''}, ` +
      `${rec.replayedRequests} requests replayed`);
    this.emit('recovered', rec);
    this.refillNow(replica.id);
  }

  // Requests that waited too long for a replica get a clear UNAVAILABLE instead of hanging.
  private expire(): void {
    if (this.members.isStopping || this.store.size === 0) return;
    const n = this.router.failPending(grpc.status.UNAVAILABLE,
      `no replica could serve the request within --request-timeout (${this.o.requestTimeoutMs / 1000} s)` +
      `${this.lastCause ? `; last failure: ${this.lastCause}` : ''}`, this.o.requestTimeoutMs);
    if (n) this.o.log(`failover: ${n} requests failed after waiting ${this.o.requestTimeoutMs / 1000} s for a replica`);
  }
}
