// A Membership with no processes, for the router tests: every replica serving, its driver a
// WorkerConn on a stream that records what the coordinator sends it. The tests then report tokens
// as real drivers do.
import type { Layout } from '../../src/coordinator/layout.js';
import { Membership, WorkerConn } from '../../src/coordinator/membership.js';
import type { ControlCall } from '../../src/coordinator/worker-conn.js';
import type { OutgoingCoordinatorMessage } from '../../src/protocol/control.js';
import { PY_TINY } from '../serving/helpers.js';

/** `layout`'s replicas, all serving with `kvBlocks` blocks of 16 tokens; `sent[replica]`: what its driver was sent. */
export function servingMembers(layout: Layout, kvBlocks: number, log: (line: string) => void = () => {}): {
  members: Membership; sent: OutgoingCoordinatorMessage[][];
} {
  const members = new Membership(layout, { token: 't', modelDir: PY_TINY, maxQueue: 16, heartbeatIntervalMs: 60_000, heartbeatTimeoutMs: 60_000, log });
  const sent: OutgoingCoordinatorMessage[][] = members.replicas.map(() => []);
  for (const replica of members.replicas) {
    const plan = layout.ranks[replica.ranks[0]!]!;
    // Each write goes out at once (the callback a real stream calls once the message is written).
    const call = { write: (m: OutgoingCoordinatorMessage, done?: () => void) => { sent[replica.id]!.push(m); done?.(); }, end: () => {} } as unknown as ControlCall;
    const w = new WorkerConn(plan, { token: 't', rank: plan.rank, host: 'localhost', pid: 1, device: null, listenAddresses: [] }, call, '1');
    w.state = 'serving';
    members.workers.set(plan.rank, w);
    replica.state = 'serving';
    replica.kvBlocks = kvBlocks;
    replica.kvBlockSize = 16;
  }
  return { members, sent };
}
