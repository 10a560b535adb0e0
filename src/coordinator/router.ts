// Puts each accepted request on a replica. A request's class (classes.ts) lists the replica groups
// it may use in order of preference. For each group in that order, the router estimates the
// request's time to first token on every serving replica of the group (estimate.ts: the replica's
// queue and batch as the coordinator routed them, its KV cache and batch limits, its measured step
// time) and takes the group's best replica when it meets the class: its TTFT target
// (`ttft_p99_ms`), or, for a class without one, admission without waiting for another request to
// finish. When no group meets it, the request overflows to the best replica of all its groups (the
// shortest estimate). It is refused (RESOURCE_EXHAUSTED) only when no serving replica it may use
// can take it: its budget is larger than their KV caches, or their queues are full. Requests wait
// in the coordinator while no replica they may use serves yet (starting, or re-forming after a
// failure), and are dispatched, most urgent first, when one starts.
//
// A replay after a failover goes through the same choice REPLAY_SETTLE_MS after the loss (any
// replica its class allows, so a stream can move to another kind of replica); a request with
// `exact` that has streamed tokens only goes to a replica of the same numerics (device and
// precision) and otherwise waits. A request in flight through --quarantine-after losses is failed
// instead of replayed.
import * as grpc from '@grpc/grpc-js';

import type { Tokens } from '../protocol/control.js';
import { FinishReason, RequestStatus } from '../protocol/lifecycle.js';
import { samplingToWire } from '../protocol/sampling.js';
import { ClassStats } from './class-stats.js';
import type { ClassTable } from './classes.js';
import { estimateTtft } from './estimate.js';
import type { ReplicaModel } from './estimate.js';
import { numericsOf } from './layout.js';
import type { Membership, Replica } from './membership.js';
import type { RequestRecord, RequestStore, RequestUpdate } from './requests.js';
import { requestTrace } from '../protocol/request-trace.js';

/** Where a request goes: a replica (overflow: not its class's first group), nowhere yet, or nowhere. */
export type Route =
  | { replica: Replica; group: string; overflow: boolean; ttftMs: number }
  | { pending: string }
  | { exhausted: string };

export interface RouterOptions {
  log: (line: string) => void;
}

/**
 * Requests taken off a lost replica are placed again this long after the loss, not at once:
 * replicas lost in one incident (several processes killed together, a host going down) are all
 * seen lost within it, so no request is placed on a replica that is already dead and charged its
 * loss too, which would quarantine it for an incident it had no part in. It is the only delay a
 * replay onto a serving replica adds.
 */
export const REPLAY_SETTLE_MS = 200;

export class Router {
  readonly stats: ClassStats;
  private readonly log: (line: string) => void;
  private settling: NodeJS.Timeout | undefined;
  private readonly trace = requestTrace('coord');

  constructor(private readonly members: Membership, private readonly store: RequestStore, readonly classes: ClassTable,
    private readonly o: RouterOptions) {
    this.log = o.log;
    this.stats = new ClassStats(classes.list);
    members.on('replica-serving', () => this.dispatchPending());
    members.on('tokens', (replica, msg) => this.onTokens(replica, msg));
  }

  /** The numerics of a replica: its group's device and precision. */
  numerics(replica: Replica): string {
    return numericsOf(this.members.layout.groups[replica.group]!);
  }

  private model(r: Replica): ReplicaModel {
    const g = this.members.layout.groups[r.group]!.serving;
    return {
      kvBlocks: r.load?.kvBlocksTotal || r.kvBlocks, blockSize: r.kvBlockSize || 16, maxSeqs: g.maxSeqs, maxQueue: this.members.maxQueue,
      maxBatchTokens: g.maxBatchTokens, stepMsBase: r.load?.stepMsBase ?? 0, stepMsPerToken: r.load?.stepMsPerToken ?? 0,
    };
  }

  /** Where `rec` would go now (nothing is sent). */
  choose(rec: RequestRecord): Route {
    const cls = rec.sched.cls;
    const target = cls.ttftP99Ms;
    const pinned = rec.sched.exact && rec.tokens.length > 0 ? rec.numerics : undefined;
    let best: { replica: Replica; gi: number; ttftMs: number } | undefined;
    let serving = 0;
    const refusals = new Set<string>();
    for (const [k, gi] of cls.groupIndex.entries()) {
      let groupBest: { replica: Replica; ttftMs: number; admitNow: boolean; load: number; free: number } | undefined;
      for (const id of this.members.layout.groups[gi]!.replicas) {
        const r = this.members.replicas[id]!;
        if (r.state !== 'serving' || (pinned && this.numerics(r) !== pinned)) continue;
        serving++;
        // The records are the estimate's jobs (RequestRecord implements Job): the live set goes as it is, nothing copied.
        const e = estimateTtft(this.model(r), this.store.on(r.id), rec);
        if (!e.fits) {
          refusals.add(`needs ${Math.ceil((rec.promptIds.length + rec.params.maxTokens) / (r.kvBlockSize || 16))} KV blocks, ` +
            `replica ${r.id} (${this.members.layout.groups[gi]!.name}) has ${this.model(r).kvBlocks}`);
          continue;
        }
        if (e.queueFull) {
          refusals.add(`replica ${r.id} (${this.members.layout.groups[gi]!.name}) has ${this.members.maxQueue} requests waiting (--max-queue)`);
          continue;
        }
        // Equal estimates (no step measured yet, an idle group): the fewest requests, then the most free KV blocks.
        const free = r.load?.kvBlocksFree ?? r.kvBlocks;
        const load = this.store.countOn(r.id) - (rec.replica === r.id ? 1 : 0);
        if (!groupBest || e.ttftMs < groupBest.ttftMs || (e.ttftMs === groupBest.ttftMs &&
          (load < groupBest.load || (load === groupBest.load && free > groupBest.free))))
          groupBest = { replica: r, ttftMs: e.ttftMs, admitNow: e.admitNow, load, free };
      }
      if (!groupBest) continue;
      const meets = target !== undefined ? groupBest.ttftMs <= target : groupBest.admitNow;
      if (meets) return { replica: groupBest.replica, group: this.members.layout.groups[gi]!.name, overflow: k > 0, ttftMs: groupBest.ttftMs };
      if (!best || groupBest.ttftMs < best.ttftMs) best = { ...groupBest, gi: k };
    }
    if (best) {
      const gi = cls.groupIndex[best.gi]!;
      return { replica: best.replica, group: this.members.layout.groups[gi]!.name, overflow: best.gi > 0, ttftMs: best.ttftMs };
    }
    const groups = cls.groups.join(', ');
    if (!serving)
      return { pending: pinned ? `no replica of its numerics (${pinned}) serves in groups ${groups} (exact)` : `no replica of groups ${groups} serves` };
    return { exhausted: `class ${cls.name}: no replica of groups ${groups} can take the request: ${[...refusals].join('; ')}` };
  }

  /** Whether any replica serves now or may still come up. */
  anyAlive(): boolean {
    return this.members.replicas.some((r) => r.state !== 'lost' || r.reforming);
  }

  /**
   * Sends the request where choose() says; a request with nowhere to go stays queued (a new
   * request refused as exhausted is never added to the store: see the API).
   */
  submit(rec: RequestRecord, route: Route = this.choose(rec)): Route {
    if (!('replica' in route)) return route;
    const driver = this.members.driver(route.replica);
    if (!driver) return { pending: `replica ${route.replica.id} has no driver` };
    this.store.route(rec, route.replica.id);
    this.stats.of(rec.sched.cls).route(route.group, route.overflow);
    driver.send({
      submit: { epoch: driver.epoch, requestId: rec.id, promptIds: rec.promptIds, params: samplingToWire(rec.params), generatedIds: rec.tokens,
        priority: rec.sched.priority, classRank: rec.sched.cls.rank, exclusivePrefill: rec.sched.cls.exclusivePrefill ?? false,
        streamIntervalMs: rec.sched.cls.streamIntervalMs ?? 0 },
    });
    if (rec.traced) this.trace?.event(rec.id, 'routed', { replica: route.replica.id, group: route.group, backlog: driver.backlog });
    return route;
  }

  cancel(rec: RequestRecord, reason: string): void {
    if (rec.replica === null) return;
    const replica = this.members.replicas[rec.replica];
    const driver = replica && this.members.driver(replica);
    driver?.send({ cancel: { epoch: driver.epoch, requestId: rec.id, reason } });
  }

  /**
   * Runs before waiting requests are dispatched to a replica that just started serving: the
   * failover module fails those that already waited past --request-timeout there, so the outcome
   * does not depend on whether its periodic sweep ran before the replica came back.
   */
  beforeDispatch: (() => void) | undefined;

  dispatchPending(): void {
    this.beforeDispatch?.();
    for (const rec of this.store.pending()) this.submit(rec);
  }

  private onTokens(replica: Replica, msg: Tokens): void {
    let ended = false;
    for (const u of msg.updates) {
      const rec = this.store.get(u.requestId);
      // Ended meanwhile (cancelled, timed out), or a late report from a replica it left.
      if (!rec || (rec.status !== RequestStatus.RUNNING && rec.status !== RequestStatus.PREEMPTED) || rec.replica !== replica.id) continue;
      const counters = this.stats.of(rec.sched.cls);
      if (u.error) {
        // The driver refuses only for capacity: its queue is full, or the request's prompt plus
        // max_tokens needs more KV blocks than the replica's whole cache.
        ended = this.store.finish(rec, { status: RequestStatus.FAILED, code: grpc.status.RESOURCE_EXHAUSTED, message: `replica ${replica.id}: ${u.error}` }) || ended;
        continue;
      }
      if (u.preempted) {
        if (rec.status === RequestStatus.RUNNING) this.store.preempt(rec);
        counters.preemptions++;
        if (rec.traced) this.trace?.event(rec.id, 'preempted');
        continue;
      }
      // Tokens the client already has (a replay re-sends from an earlier index) are dropped here.
      const skip = rec.tokens.length - u.index;
      if (skip < 0) {
        this.log(`coordinator: request ${rec.id}: gap in the token stream (have ${rec.tokens.length}, got index ${u.index})`);
        continue;
      }
      if (rec.status === RequestStatus.PREEMPTED) this.store.resume(rec);
      // The decoded update's own array when nothing is skipped (the common case: no copy a token).
      const fresh = skip === 0 ? u.tokenIds : u.tokenIds.slice(skip);
      const first = fresh.length > 0 && rec.firstTokenAt === undefined;
      if (fresh.length) {
        const now = Date.now();
        if (rec.firstTokenAt === undefined) {
          if (rec.traced) this.trace?.event(rec.id, 'first_in');
          rec.firstTokenAt = now;
          counters.ttft.add(now - rec.createdAt, now);
        } else if (rec.lastTokenAt !== undefined) {
          for (let i = 0; i < fresh.length; i++) counters.itl.add((now - rec.lastTokenAt) / fresh.length, now);
        }
        rec.lastTokenAt = now;
        rec.started = true;
        rec.numerics ??= this.numerics(replica);
      }
      for (let i = 0; i < fresh.length; i++) rec.tokens.push(fresh[i]!);
      const group = this.members.layout.groups[replica.group]!.name;
      const update: RequestUpdate = { tokenIds: fresh, text: u.text, index: rec.tokens.length - fresh.length, finishReason: u.finishReason,
        replica: replica.id, group };
      if (u.logprobs.length) update.logprobs = u.logprobs.slice(skip);
      if (u.finishReason === FinishReason.FINISH_REASON_UNSPECIFIED) rec.sink.update(update);
      else if (this.store.finish(rec, { status: RequestStatus.FINISHED, last: update })) {
        counters.finished++;
        ended = true;
        if (rec.traced) this.trace?.event(rec.id, 'end', { tokens: rec.tokens.length });
      }
      if (first && rec.traced) this.trace?.event(rec.id, 'first_out');
    }
    // A request that ended made room: requests waiting for one (full queues, an exact replay) try
    // again, unless a loss's replays are still settling (the settle's own dispatch places them all).
    if (ended && !this.settling && this.store.pendingCount() > 0) this.dispatchPending();
  }

  /**
   * Takes every request off a lost replica and routes it again REPLAY_SETTLE_MS later (another
   * replica its class allows, or the re-formed one once it serves), most urgent first: the replay
   * starts from prompt + the tokens the client has. A request that has now been in flight through
   * `quarantineAfter` replica losses is failed instead (quarantined): if it is what takes replicas
   * down, replaying it would take the next one down too.
   */
  requeue(replica: Replica, quarantineAfter: number, cause: string): { moved: RequestRecord[]; quarantined: RequestRecord[] } {
    const now = Date.now();
    const moved: RequestRecord[] = [];
    const quarantined: RequestRecord[] = [];
    for (const rec of this.store.onReplica(replica.id)) {
      if (rec.replays + 1 >= quarantineAfter) {
        rec.replays++;
        quarantined.push(rec);
        this.store.finish(rec, { status: RequestStatus.FAILED, code: grpc.status.INTERNAL,
          message: `request quarantined: it was in flight through ${rec.replays} replica losses (the last: ${cause}); it is not replayed ` +
            `again in case it is what takes replicas down (--quarantine-after ${quarantineAfter})` });
        continue;
      }
      this.store.requeue(rec, now);
      moved.push(rec);
    }
    // dispatchPending takes the waiting requests most urgent first (RequestStore.pending).
    if (moved.length && !this.settling)
      this.settling = setTimeout(() => {
        this.settling = undefined;
        this.dispatchPending();
      }, REPLAY_SETTLE_MS).unref();
    return { moved, quarantined };
  }

  /** Fails every request still waiting for a replica. */
  failPending(code: grpc.status, message: string, olderThanMs = 0): number {
    const now = Date.now();
    let n = 0;
    for (const rec of this.store.pending()) {
      if (now - (rec.pendingSince ?? rec.createdAt) < olderThanMs) continue;
      const why = rec.sched.exact && rec.tokens.length ? `${message} (exact: it waits for a replica of numerics ${rec.numerics})` : message;
      if (this.store.finish(rec, { status: RequestStatus.FAILED, code, message: why })) n++;
    }
    return n;
  }
}
