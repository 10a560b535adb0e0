// Communicator rendezvous through the coordinator: an all-gather of one blob per group member, by
// group rank (TCP listen addresses, or NCCL rank 0's unique id). Groups are per epoch, so the
// offers of a replica's earlier incarnation never mix with the new one's.
import type { WorkerConn } from './worker-conn.js';

interface Group {
  size: number;
  payloads: (Buffer | undefined)[];
  members: Set<number>;
}

export class Rendezvous {
  private readonly groups = new Map<string, Group>();

  /** Records w's blob for `name`; once every member offered, sends each member all of them. */
  offer(w: WorkerConn, name: string, groupRank: number, size: number, payload: Buffer, member: (rank: number) => WorkerConn | undefined): void {
    const key = `${w.epoch}/${name}`;
    const g = this.groups.get(key) ?? { size, payloads: new Array<Buffer | undefined>(size).fill(undefined), members: new Set<number>() };
    if (g.size !== size || groupRank >= size) throw new Error(`comm group ${key}: rank ${w.rank} offered group rank ${groupRank} of ${size}, expected a group of ${g.size}`);
    this.groups.set(key, g);
    g.payloads[groupRank] = Buffer.from(payload);
    g.members.add(w.rank);
    const payloads = g.payloads.filter((p) => p !== undefined);
    if (payloads.length < size) return;
    this.groups.delete(key);
    for (const r of g.members) member(r)?.send({ commPeers: { epoch: w.epoch, group: name, payloads } });
  }

  /** Forgets the half-met groups of a replica that is being re-formed. */
  dropReplica(replica: number): void {
    for (const key of [...this.groups.keys()]) if (key.includes(`/r${replica}/`)) this.groups.delete(key);
  }
}
