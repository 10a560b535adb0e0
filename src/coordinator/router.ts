// Puts each accepted request on a replica: the serving replica with the fewest unfinished
// requests (ties: the most free KV blocks, then the lowest id). Requests wait in the coordinator
// while no replica serves yet, and are dispatched when one starts.
import * as grpc from '@grpc/grpc-js';

import type { Tokens } from '../protocol/control.js';
import { FinishReason, RequestStatus } from '../protocol/lifecycle.js';
import { samplingToWire } from '../protocol/sampling.js';
import type { Membership, Replica } from './membership.js';
import type { RequestRecord, RequestStore, RequestUpdate } from './requests.js';

/**
 * Requests taken off a lost replica are placed again this long after the loss, not at once:
 * replicas lost in one incident (several processes killed together, a host going down) are all
 * seen lost within it, so no request is placed on a replica that is already dead and charged its
 * loss too, which would quarantine it for an incident it had no part in. It is the only delay a
 * replay onto a serving replica adds.
 */
export const REPLAY_SETTLE_MS = 200;

export class Router {
  private settling: NodeJS.Timeout | undefined;

  constructor(private readonly members: Membership, private readonly store: RequestStore,
    private readonly log: (line: string) => void) {
    members.on('replica-serving', () => this.dispatchPending());
    members.on('tokens', (replica, msg) => this.onTokens(replica, msg));
  }

  private active(replica: Replica): number {
    return this.store.onReplica(replica.id).length;
  }

  pick(): Replica | undefined {
    let best: Replica | undefined;
    let bestLoad = Infinity;
    for (const r of this.members.replicas) {
      if (r.state !== 'serving') continue;
      const load = this.active(r);
      const free = r.load?.kvBlocksFree ?? r.kvBlocks;
      const bestFree = best ? (best.load?.kvBlocksFree ?? best.kvBlocks) : -1;
      if (load < bestLoad || (load === bestLoad && free > bestFree)) {
        best = r;
        bestLoad = load;
      }
    }
    return best;
  }

  /** Whether any replica serves now or may still come up. */
  anyAlive(): boolean {
    return this.members.replicas.some((r) => r.state !== 'lost');
  }

  submit(rec: RequestRecord): void {
    const replica = this.pick();
    if (!replica) return; // stays pending until a replica serves
    const driver = this.members.driver(replica);
    if (!driver) return;
    this.store.route(rec, replica.id);
    driver.send({
      submit: { epoch: driver.epoch, requestId: rec.id, promptIds: rec.promptIds, params: samplingToWire(rec.params), generatedIds: rec.tokens },
    });
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
    for (const u of msg.updates) {
      const rec = this.store.get(u.requestId);
      // Ended meanwhile (cancelled, timed out), or a late report from a replica it left.
      if (!rec || rec.status !== RequestStatus.RUNNING || rec.replica !== replica.id) continue;
      if (u.error) {
        // The driver refuses only for capacity: its queue is full, or the request's prompt plus
        // max_tokens needs more KV blocks than the replica's whole cache.
        this.store.finish(rec, { status: RequestStatus.FAILED, code: grpc.status.RESOURCE_EXHAUSTED, message: `replica ${replica.id}: ${u.error}` });
        continue;
      }
      // Tokens the client already has (a replay re-sends from an earlier index) are dropped here.
      const skip = rec.tokens.length - u.index;
      if (skip < 0) {
        this.log(`coordinator: request ${rec.id}: gap in the token stream (have ${rec.tokens.length}, got index ${u.index})`);
        continue;
      }
      const fresh = u.tokenIds.slice(skip);
      if (fresh.length) rec.firstTokenAt ??= Date.now();
      rec.tokens.push(...fresh);
      rec.text += u.text;
      const update: RequestUpdate = { tokenIds: fresh, text: u.text, index: rec.tokens.length - fresh.length, finishReason: u.finishReason };
      if (u.logprobs.length) update.logprobs = u.logprobs.slice(skip);
      if (u.finishReason === FinishReason.FINISH_REASON_UNSPECIFIED) rec.sink.update(update);
      else this.store.finish(rec, { status: RequestStatus.FINISHED, last: update });
    }
  }

  /**
   * Takes every request off a lost replica and routes it again REPLAY_SETTLE_MS later (another
   * serving replica, or the re-formed one once it serves): the replay starts from prompt + the
   * tokens the client has. A request that has now been in flight through `quarantineAfter` replica
   * losses is failed instead (quarantined): if it is what takes replicas down, replaying it would
   * take the next one down too.
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
      if (this.store.finish(rec, { status: RequestStatus.FAILED, code, message })) n++;
    }
    return n;
  }
}
