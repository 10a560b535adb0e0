// The coordinator's view of one worker connection and of one replica (membership.ts owns them).
import type { Precision } from '../model/precision.js';
import type * as grpc from '@grpc/grpc-js';

import { CoalescingWriter, batches } from '../protocol/coalesce.js';
import type { Join, OutgoingCoordinatorMessage, ReplicaLoad, WorkerMessage } from '../protocol/control.js';
import type { RankPlan } from './layout.js';

export type WorkerState = 'joined' | 'loading' | 'ready' | 'serving' | 'lost';
export type ReplicaState = 'forming' | 'loading' | 'serving' | 'lost';

export type ControlCall = grpc.ServerDuplexStream<WorkerMessage, OutgoingCoordinatorMessage>;

/**
 * The messages gathered during a write with each run of consecutive submits in priority order
 * (stable: arrival order within a priority), so a realtime request's submit gathered behind a
 * flood's reaches the worker, which handles a batch's messages one after the other, first. Only
 * runs of submits are reordered: a cancel, an assignment or a start keeps its place, so a request
 * is never cancelled before it is submitted, nor submitted in another epoch than the one it was sent in.
 */
export function urgentFirst(ms: OutgoingCoordinatorMessage[]): OutgoingCoordinatorMessage[] {
  const out: OutgoingCoordinatorMessage[] = [];
  for (let i = 0; i < ms.length;) {
    let j = i;
    while (j < ms.length && ms[j]!.submit) j++;
    if (j > i + 1) out.push(...ms.slice(i, j).sort((a, b) => (a.submit!.priority ?? 0) - (b.submit!.priority ?? 0)));
    else if (j === i + 1) out.push(ms[i]!);
    if (j < ms.length) out.push(ms[j]!);
    i = j + 1;
  }
  return out;
}

export class WorkerConn {
  state: WorkerState = 'joined';
  lastHeartbeat = Date.now();
  loadDone = 0;
  loadTotal = 0;
  kvBlocks = 0;
  /** The windowed layers' own pool (models that mix windowed and global layers), else 0. */
  kvWindowBlocks = 0;
  kvBlockSize = 0;
  /** The engine's description from its Ready message (bounded: it comes from the worker). */
  describe = '';
  lostReason = '';
  /** The first fatal error the worker reported in its current epoch: the cause when it is lost next. */
  reported: { epoch: string; message: string } | undefined;
  /** It spoke after it was declared lost, and was told it cannot rejoin. */
  toldLost = false;

  /**
   * `epoch`: the one this worker is assigned in (its messages must carry it, ours to it do);
   * a survivor re-formed in place moves to the new one. `plan` changes when its replica is re-formed
   * with a smaller layout before the worker got its assignment (shrink.ts).
   */
  /** What the coordinator sends while a write to this worker is in flight goes out in one batch after it, urgent submits first. */
  private readonly out: CoalescingWriter<OutgoingCoordinatorMessage>;

  constructor(public plan: RankPlan, readonly join: Join, readonly call: ControlCall, public epoch: string) {
    this.out = new CoalescingWriter((m, done) => call.write(m, done), (ms) => batches(urgentFirst(ms), (messages) => ({ batch: { messages } })));
  }

  /** Messages waiting for the write in flight (NODESPEED_REQUEST_TRACE shows it). */
  get backlog(): number {
    return this.out.backlog;
  }

  get rank(): number {
    return this.plan.rank;
  }

  send(m: OutgoingCoordinatorMessage): void {
    if (this.state === 'lost') return;
    try {
      this.out.send(m);
    } catch {
      // The stream is closing; its 'end'/'error' handler marks the worker lost.
    }
  }

  /** Ends the stream once what was sent has been written. */
  close(): void {
    this.out.whenIdle(() => {
      try {
        this.call.end();
      } catch {
        /* already closed */
      }
    });
  }
}

export class Replica {
  state: ReplicaState = 'forming';
  load: ReplicaLoad | null = null;
  kvBlocks = 0;
  kvWindowBlocks = 0;
  kvBlockSize = 0;
  /** True while failover re-forms it: its ranks may join again, in a newer epoch. */
  reforming = false;
  /** Ranks that join wait for their assignment (a respawn whose layout is not settled yet, see Membership.hold). */
  holding = false;
  /**
   * The membership epoch its ranks live in: set when it is (re-)formed. Every rank of the
   * replica gets this one, however late it joins: another replica's re-form moves the cluster's
   * counter on, and ranks of one replica in two epochs would never meet at their rendezvous.
   */
  epoch = '1';

  /**
   * `ranks`: its layout ranks in (stage, TP rank) order, the driver first; `tp` x `pp`: its shape.
   * Both are its group's layout until failover re-forms it with a smaller one (shrink.ts). `group`:
   * its group's index in the layout.
   */
  constructor(readonly id: number, public ranks: number[], public tp: number, public pp: number, readonly group: number,
    /** What the replica computes with (weights, matrix-product inputs, KV cache): its group's. */
    readonly precision: Precision) {}
}
