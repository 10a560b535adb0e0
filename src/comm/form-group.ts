// Forms a communicator group through whatever rendezvous the caller has (the coordinator's
// control stream in a job, an IPC round trip in tests): each rank publishes a small JSON-safe
// record and gets every rank's record back, by rank.
import { hostname } from 'node:os';

import { createNcclComm, createTcpComm, ncclUniqueId } from './comm.js';
import type { Comm, CommEncryption, CommKind } from './comm.js';

/** What a rank publishes: TCP its listening address, NCCL rank 0 the unique id (base64). */
export interface GroupMemberInfo {
  rank: number;
  address?: string;
  ncclUniqueId?: string;
}

export interface FormGroupOptions {
  kind: CommKind;
  rank: number;
  size: number;
  /** Publishes this rank's info and resolves to every rank's, indexed by rank. */
  exchange: (mine: GroupMemberInfo) => Promise<GroupMemberInfo[]>;
  /** TCP: the address to bind (default 127.0.0.1; '0.0.0.0' binds every interface). */
  listenHost?: string;
  /** TCP: the host name peers dial (default listenHost, or this host's name when binding 0.0.0.0). */
  advertiseHost?: string;
  /** TCP: which group and membership epoch; a peer of another one is refused (see TcpCommOptions). */
  context?: string;
  /** TCP: the job's 32-byte secret every peer must prove it holds. */
  key?: Uint8Array;
  /** TCP: which connections carry AES-256-GCM frames (default 'off'). */
  encrypt?: CommEncryption;
  connectTimeoutMs?: number;
  handshakeTimeoutMs?: number;
  /** TCP: the connections refused while the group formed (one line per address), whether it formed or not. */
  onRefused?: (lines: string[]) => void;
  opTimeoutMs?: number;
  /** NCCL: the local GPU of this rank. */
  deviceIndex?: number;
  initTimeoutMs?: number;
}

function checkInfos(infos: GroupMemberInfo[], size: number, field: 'address' | 'ncclUniqueId', ranks: number[]): void {
  if (!Array.isArray(infos) || infos.length !== size)
    throw new Error(`formGroup: exchange returned ${Array.isArray(infos) ? infos.length : typeof infos} entries for a group of ${size}`);
  infos.forEach((info, i) => {
    if (!info || info.rank !== i) throw new Error(`formGroup: exchange entry ${i} is for rank ${info?.rank} (entries must be by rank)`);
  });
  for (const r of ranks)
    if (typeof infos[r]![field] !== 'string' || infos[r]![field] === '')
      throw new Error(`formGroup: rank ${r} published no ${field}`);
}

/** Creates this rank's communicator and connects it to the group; aborts it on any failure. */
export async function formGroup(opts: FormGroupOptions): Promise<Comm> {
  const { kind, rank, size } = opts;
  if (kind === 'tcp') {
    const comm = createTcpComm({ rank, size, context: opts.context, ...(opts.key ? { key: opts.key } : {}), encrypt: opts.encrypt,
      connectTimeoutMs: opts.connectTimeoutMs, handshakeTimeoutMs: opts.handshakeTimeoutMs, opTimeoutMs: opts.opTimeoutMs });
    try {
      const listenHost = opts.listenHost ?? '127.0.0.1';
      const port = await comm.listen(listenHost);
      const host = opts.advertiseHost ?? (listenHost === '0.0.0.0' || listenHost === '::' ? hostname() : listenHost);
      const address = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
      const infos = await opts.exchange({ rank, address });
      checkInfos(infos, size, 'address', infos.map((_, i) => i));
      await comm.connect(infos.map((i) => i.address!));
      return comm;
    } catch (err) {
      comm.abort();
      throw err;
    } finally {
      const refused = comm.refused();
      if (refused.length) opts.onRefused?.(refused);
    }
  }
  if (kind === 'nccl') {
    const mine: GroupMemberInfo = { rank };
    if (rank === 0) mine.ncclUniqueId = Buffer.from(ncclUniqueId()).toString('base64');
    const infos = await opts.exchange(mine);
    checkInfos(infos, size, 'ncclUniqueId', [0]);
    const uniqueId = new Uint8Array(Buffer.from(infos[0]!.ncclUniqueId!, 'base64'));
    const comm = createNcclComm({ rank, size, uniqueId, deviceIndex: opts.deviceIndex ?? 0, initTimeoutMs: opts.initTimeoutMs });
    try {
      await comm.init();
      return comm;
    } catch (err) {
      comm.abort();
      throw err;
    }
  }
  throw new TypeError(`formGroup: kind must be 'tcp' or 'nccl' (got ${String(kind)})`);
}
