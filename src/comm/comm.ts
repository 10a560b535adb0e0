// Typed handles over the addon's communicators (native/src/comm, docs/ENGINE.md "Addon JS API").
// A TCP comm (CPU workers) and an NCCL comm (GPU workers) expose the same collectives; the
// `native` object is what engine.setTpComm() takes.
import { loadAddon } from '../native/addon.js';
import type { NativeComm } from '../native/addon.js';

export type CommKind = 'tcp' | 'nccl';
export type ReduceDType = 'f32' | 'bf16' | 'f16';
/** Which TCP connections are encrypted: none, those between two hosts (--encrypt-data-plane), or all. */
export type CommEncryption = 'off' | 'cross-host' | 'all';

/** The addon's Comm object as the binding defines it (a superset of NativeComm). */
export interface AddonComm extends NativeComm {
  readonly rank: number;
  readonly size: number;
  readonly kind: CommKind;
  allReduce(buf: Float32Array | Uint16Array | Uint8Array, dtype?: ReduceDType): Promise<void>;
  refused(): string[];
  readonly encryptedLinks: number;
  readonly cryptoProvider: string;
  allGather(input: ArrayBufferView, output: ArrayBufferView): Promise<void>;
  broadcast(buf: ArrayBufferView, root: number): Promise<void>;
  send(buf: ArrayBufferView, peer: number): Promise<void>;
  recv(buf: ArrayBufferView, peer: number): Promise<void>;
}

type AddonCommCtor = new (opts: Record<string, unknown>) => AddonComm;

function commCtor(): AddonCommCtor {
  const addon = loadAddon();
  if (!addon.Comm) throw new Error('nodespeed: this native addon was built without communicators (native/src/comm)');
  return addon.Comm as unknown as AddonCommCtor;
}

function checkRankSize(rank: number, size: number): void {
  if (!Number.isInteger(size) || size < 1) throw new RangeError(`comm: size must be a positive integer (got ${size})`);
  if (!Number.isInteger(rank) || rank < 0 || rank >= size) throw new RangeError(`comm: rank ${rank} outside [0, ${size})`);
}

/** Collectives shared by both kinds. Every call resolves once this rank's part is done. */
export class Comm {
  constructor(readonly native: AddonComm) {}
  get kind(): CommKind { return this.native.kind; }
  get rank(): number { return this.native.rank; }
  get size(): number { return this.native.size; }
  /** In-place sum over ranks. Float32Array is f32; bf16/f16 data (Uint16Array) needs its dtype.
   *  TCP: every element is summed in rank order 0..n-1 in f32, bitwise identical on all ranks. */
  allReduce(buf: Float32Array | Uint16Array, dtype?: ReduceDType): Promise<void> {
    return this.native.allReduce(buf, dtype ?? (buf instanceof Float32Array ? 'f32' : undefined));
  }
  /** output = the inputs of ranks 0..n-1 concatenated (output.byteLength = size × input.byteLength). */
  allGather(input: ArrayBufferView, output: ArrayBufferView): Promise<void> { return this.native.allGather(input, output); }
  broadcast(buf: ArrayBufferView, root: number): Promise<void> { return this.native.broadcast(buf, root); }
  /** Point to point; the receiver's buffer must have exactly the sender's length. */
  send(buf: ArrayBufferView, peer: number): Promise<void> { return this.native.send(buf, peer); }
  recv(buf: ArrayBufferView, peer: number): Promise<void> { return this.native.recv(buf, peer); }
  /** The error that broke the communicator (dead peer, NCCL async error), or null. */
  asyncError(): string | null { return this.native.asyncError(); }
  /** Every pending and later call rejects at once (sockets shut down / ncclCommAbort). */
  abort(): void { this.native.abort(); }
  /** TCP: connections refused while the group formed, one line per address ("ip: reason (N connections)"). */
  refused(): string[] { return this.native.refused(); }
  /** TCP: how many of this rank's peer connections are encrypted. */
  get encryptedLinks(): number { return this.native.encryptedLinks; }
  /** Which OpenSSL the TCP comm's handshake and encryption use ("libcrypto.so.3", "libcrypto.so" or "node"). */
  get cryptoProvider(): string { return this.native.cryptoProvider; }
}

export interface TcpCommOptions {
  rank: number;
  size: number;
  /** Which group and membership epoch (e.g. `r0/replica@3`): peers of another one are refused. Not secret. */
  context?: string;
  /**
   * The job's 32-byte secret: every peer proves it holds it (HMAC challenge-response), and proves
   * nothing without it. Absent: an empty key, which authenticates nothing (single-user tests only).
   */
  key?: Uint8Array;
  /** AES-256-GCM frames on no connection (default), those between two hosts, or all of them. */
  encrypt?: CommEncryption;
  /** How long connect() retries peers that are not listening yet (default 60 s). */
  connectTimeoutMs?: number;
  /** One connection's handshake (default 3 s): a stray that does not complete it in time is dropped. */
  handshakeTimeoutMs?: number;
  /** Per collective; 0 (default) = no limit (dead peers are still detected by EOF/RST/keepalive). */
  opTimeoutMs?: number;
}

export class TcpComm extends Comm {
  /** Binds host:0; resolves to the port to advertise. */
  listen(host: string): Promise<number> { return this.native.listen!(host); }
  /** addresses[r] = 'host:port' of rank r; forms the full mesh. */
  connect(addresses: string[]): Promise<void> { return this.native.connect!(addresses); }
}

export function createTcpComm(opts: TcpCommOptions): TcpComm {
  checkRankSize(opts.rank, opts.size);
  const Ctor = commCtor();
  return new TcpComm(new Ctor({ kind: 'tcp', rank: opts.rank, size: opts.size, context: opts.context ?? '',
    ...(opts.key ? { key: opts.key } : {}), encrypt: opts.encrypt ?? 'off',
    connectTimeoutMs: opts.connectTimeoutMs, handshakeTimeoutMs: opts.handshakeTimeoutMs, opTimeoutMs: opts.opTimeoutMs }));
}

export interface NcclCommOptions {
  rank: number;
  size: number;
  /** The 128 bytes rank 0 got from ncclUniqueId(). */
  uniqueId: Uint8Array;
  deviceIndex: number;
  /** How long init() waits for every rank to join (default 300 s). */
  initTimeoutMs?: number;
}

export class NcclComm extends Comm {
  /** ncclCommInitRankConfig (non-blocking config), resolved once every rank joined. */
  init(): Promise<void> { return this.native.init!(); }
}

/** A fresh NCCL unique id (rank 0 makes it); throws "nccl: unavailable (<reason>)" without NCCL. */
export function ncclUniqueId(): Uint8Array {
  const addon = loadAddon();
  if (!addon.ncclUniqueId) throw new Error('nccl: unavailable (this native addon has no communicators)');
  return addon.ncclUniqueId();
}

export function createNcclComm(opts: NcclCommOptions): NcclComm {
  checkRankSize(opts.rank, opts.size);
  if (!(opts.uniqueId instanceof Uint8Array) || opts.uniqueId.byteLength !== 128)
    throw new TypeError('nccl comm: uniqueId must be the 128-byte Uint8Array from ncclUniqueId()');
  const Ctor = commCtor();
  return new NcclComm(new Ctor({ kind: 'nccl', rank: opts.rank, size: opts.size, uniqueId: opts.uniqueId,
    deviceIndex: opts.deviceIndex, initTimeoutMs: opts.initTimeoutMs }));
}
