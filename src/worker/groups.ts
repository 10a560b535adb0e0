// Forms a worker's communicators with src/comm's formGroup, meeting the peers through the
// coordinator (ControlClient.exchange carries each rank's record and returns all of them):
//   - "tp": the ranks of one pipeline stage of one replica (the engine's all-reduce / all-gather);
//   - "replica": every rank of the replica (the data plane: step metadata, activations, tokens).
// CPU: TCP. CUDA: the TP group is NCCL (rank 0's unique id travels through the coordinator); the
// data plane stays TCP because its buffers (metadata, host activations) live in host memory.
import { formGroup } from '../comm/form-group.js';
import type { GroupMemberInfo } from '../comm/form-group.js';
import type { Comm, CommEncryption } from '../comm/comm.js';
import type { ControlClient } from './control-client.js';

export interface GroupSpec {
  /** Unique within the job and epoch, e.g. "r0/tp/s1". */
  name: string;
  rank: number;
  size: number;
  kind: 'tcp' | 'nccl';
  /** Host name or address peers can reach this worker on (TCP). */
  advertise: string;
  deviceIndex: number;
  /** The group and epoch (not secret): a connection of another group or epoch is refused. */
  context: string;
  /** The job's data-plane key: a connection that cannot prove it holds it is refused. */
  key: Uint8Array;
  encrypt: CommEncryption;
  /** Where refused connections are reported (one line per address). */
  log: (line: string) => void;
}

export async function formWorkerGroup(control: ControlClient, g: GroupSpec): Promise<Comm> {
  try {
    return await formGroup({
      kind: g.kind, rank: g.rank, size: g.size, context: g.context, key: g.key, encrypt: g.encrypt, deviceIndex: g.deviceIndex,
      // Only the address peers dial, never every interface.
      listenHost: g.advertise, advertiseHost: g.advertise,
      onRefused: (lines) => { for (const l of lines) g.log(`worker: data plane ${g.name} (rank ${g.rank}) refused ${l}`); },
      exchange: async (mine: GroupMemberInfo) => {
        const all = await control.exchange(g.name, g.rank, g.size, Buffer.from(JSON.stringify(mine)));
        return all.map((b) => JSON.parse(b.toString()) as GroupMemberInfo);
      },
    });
  } catch (err) {
    throw new Error(`communicator ${g.name} (rank ${g.rank} of ${g.size}): ${(err as Error).message}`);
  }
}
