// Forms a worker's communicators with src/comm's formGroup, meeting the peers through the
// coordinator (ControlClient.exchange carries each rank's record and returns all of them):
//   - "tp": the ranks of one pipeline stage of one replica (the engine's all-reduce / all-gather);
//   - "replica": every rank of the replica (the data plane: step metadata, activations, tokens).
// CPU: TCP. CUDA: the TP group is NCCL (rank 0's unique id travels through the coordinator); the
// data plane stays TCP because its buffers (metadata, host activations) live in host memory.
import { formGroup } from '../comm/form-group.js';
import type { GroupMemberInfo } from '../comm/form-group.js';
import type { Comm } from '../comm/comm.js';
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
  /** Job token + epoch: a stray or stale connection is refused. */
  nonce: string;
}

export async function formWorkerGroup(control: ControlClient, g: GroupSpec): Promise<Comm> {
  try {
    return await formGroup({
      kind: g.kind, rank: g.rank, size: g.size, nonce: g.nonce, deviceIndex: g.deviceIndex,
      listenHost: '0.0.0.0', advertiseHost: g.advertise,
      exchange: async (mine: GroupMemberInfo) => {
        const all = await control.exchange(g.name, g.rank, g.size, Buffer.from(JSON.stringify(mine)));
        return all.map((b) => JSON.parse(b.toString()) as GroupMemberInfo);
      },
    });
  } catch (err) {
    throw new Error(`communicator ${g.name} (rank ${g.rank} of ${g.size}): ${(err as Error).message}`);
  }
}
