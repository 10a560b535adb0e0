// Launcher slots and spare workers (failover.ts recovery (a)). The launcher numbers its processes by
// slot (RANK in a worker's environment); the layout numbers the ranks of the replicas. At launch
// slot r holds layout rank r and the slots beyond the layout's world hold spares: workers that
// joined with the job token, heartbeat, and have no assignment (no weights loaded). When a rank is
// lost, a spare takes it over: from then on the spare's slot holds that rank, and the lost rank's
// old slot, once its process is gone, is started again and joins as a spare (topping the pool up).
import type { Join } from '../protocol/control.js';
import type { ControlCall } from './worker-conn.js';

/** Where a launcher slot is: its host and its index among that host's slots (its device). */
export interface SlotInfo {
  host: string;
  localRank: number;
}

export interface Spare {
  slot: number;
  join: Join;
  call: ControlCall;
  lastHeartbeat: number;
  /** Hands the control stream over to the worker connection that replaces the spare. */
  bind: (rank: number) => void;
}

export class Slots {
  /** holder[rank] = the launcher slot whose process holds layout rank `rank` (-1: none, see release). */
  private readonly holder: number[];
  private readonly spares = new Map<number, Spare>();

  constructor(readonly info: SlotInfo[], world: number) {
    if (info.length < world) throw new Error(`${info.length} launcher slots for a layout of ${world} ranks`);
    this.holder = Array.from({ length: world }, (_, r) => r);
  }

  /** The layout rank the slot's process holds, or undefined for a spare slot. */
  rankOf(slot: number): number | undefined {
    const r = this.holder.indexOf(slot);
    return r < 0 ? undefined : r;
  }

  slotOf(rank: number): number {
    return this.holder[rank]!;
  }

  /**
   * The rank left the layout (its replica was re-formed with fewer ranks, shrink.ts): its slot holds
   * nothing from now on; a process started there joins as a spare.
   */
  release(rank: number): void {
    this.holder[rank] = -1;
  }

  get spareCount(): number {
    return this.spares.size;
  }

  /** Slots that hold no rank (their process, if any, is a spare or is being replaced). */
  spareSlots(): number[] {
    return this.info.map((_, s) => s).filter((s) => this.rankOf(s) === undefined);
  }

  addSpare(s: Spare): void {
    this.spares.set(s.slot, s);
  }

  spare(slot: number): Spare | undefined {
    return this.spares.get(slot);
  }

  dropSpare(slot: number, call?: ControlCall): boolean {
    const s = this.spares.get(slot);
    if (!s || (call && s.call !== call)) return false;
    this.spares.delete(slot);
    return true;
  }

  /**
   * Takes a spare for `rank`: one on the same host as the rank's current slot if there is one (a TP
   * group stays on its host), else the longest-joined one. The rank moves to the spare's slot.
   */
  takeSpare(rank: number, host: string): Spare | undefined {
    const all = [...this.spares.values()];
    const s = all.find((x) => this.info[x.slot]!.host === host) ?? all[0];
    if (!s) return undefined;
    this.spares.delete(s.slot);
    this.holder[rank] = s.slot;
    return s;
  }

  /**
   * The coordinator's heartbeat to each spare (a spare has no epoch yet: '0'), and drops a
   * spare silent past the timeout (a hung spare must not be handed a rank). Returns the dropped slots.
   */
  /** The coordinator could not listen for `ms` (its event loop was held up): that time does not count as the spares' silence. */
  excuse(ms: number): void {
    for (const s of this.spares.values()) s.lastHeartbeat += ms;
  }

  tickSpares(now: number, timeoutMs: number, log: (line: string) => void): number[] {
    const dropped: number[] = [];
    for (const s of [...this.spares.values()]) {
      if (now - s.lastHeartbeat > timeoutMs) {
        this.spares.delete(s.slot);
        dropped.push(s.slot);
        log(`coordinator: spare in slot ${s.slot} (pid ${s.join.pid}) dropped: no heartbeat for ${now - s.lastHeartbeat} ms`);
        continue;
      }
      try {
        s.call.write({ heartbeat: { epoch: '0', sentAtMs: now } });
      } catch {
        /* closing; its stream handler drops it */
      }
    }
    return dropped;
  }

  /** Tells every spare to stop (the job ends) and closes its stream. */
  stopSpares(reason: string): void {
    for (const s of this.spares.values()) {
      try {
        s.call.write({ stop: { epoch: '0', reason } });
        s.call.end();
      } catch {
        /* already closed */
      }
    }
  }
}
