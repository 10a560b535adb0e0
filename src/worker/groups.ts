// Forms a worker's communicators, meeting the peers through the coordinator (ControlClient.exchange):
//   - "tp": the ranks of one pipeline stage of one replica (the engine's all-reduce / all-gather);
//   - "replica": every rank of the replica (the data plane: step metadata, activations, tokens).
// CPU: TCP (every rank listens, the addresses are exchanged). CUDA: the TP group is NCCL (rank 0
// makes the unique id, the coordinator hands it out); the data plane stays TCP because its
// buffers (metadata, host activations) live in host memory.
import { loadAddon } from '../native/addon.js';
import type { NativeComm } from '../native/addon.js';
import type { ControlClient } from './control-client.js';

export interface GroupSpec {
  /** Unique within the job and generation, e.g. "r0/tp/s1". */
  name: string;
  rank: number;
  size: number;
  kind: 'tcp' | 'nccl';
  /** Address peers can reach this worker on (TCP). */
  advertise: string;
  deviceIndex: number;
  /** Job token + generation: a stray or stale connection is refused. */
  nonce: string;
}

export async function formGroup(control: ControlClient, g: GroupSpec): Promise<NativeComm> {
  const addon = loadAddon();
  if (!addon.Comm) throw new Error('this build of the native addon has no communicators (native/src/comm)');
  if (g.kind === 'nccl') {
    if (!addon.ncclUniqueId) throw new Error('this build of the native addon has no NCCL support');
    const mine = g.rank === 0 ? addon.ncclUniqueId() : new Uint8Array(0);
    const ids = await control.exchange(g.name, g.rank, g.size, mine);
    const comm = new addon.Comm({ kind: 'nccl', rank: g.rank, size: g.size, uniqueId: new Uint8Array(ids[0]!), deviceIndex: g.deviceIndex });
    await comm.init!();
    return comm;
  }
  const comm = new addon.Comm({ kind: 'tcp', rank: g.rank, size: g.size, nonce: g.nonce });
  try {
    const port = await comm.listen!('0.0.0.0');
    const host = g.advertise.includes(':') && !g.advertise.startsWith('[') ? `[${g.advertise}]` : g.advertise;
    const all = await control.exchange(g.name, g.rank, g.size, Buffer.from(`${host}:${port}`));
    await comm.connect!(all.map((b) => b.toString()));
    return comm;
  } catch (err) {
    comm.abort();
    throw new Error(`communicator ${g.name} (rank ${g.rank} of ${g.size}): ${(err as Error).message}`);
  }
}
