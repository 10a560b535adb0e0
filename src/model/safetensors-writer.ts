// Streaming safetensors writer: the header is computed from shapes alone, then each tensor's bytes
// are produced chunk by chunk by a generator and written in order, so memory stays at a couple of
// chunk buffers whatever the model size. Two buffers alternate so the next chunk is generated
// while the previous one is being written.
import { open } from 'node:fs/promises';

import { DTYPE_BYTES, SAFETENSORS_NAME } from './safetensors.js';
import type { TensorDType } from './safetensors.js';

export interface TensorSpec {
  name: string;
  dtype: TensorDType;
  shape: number[];
}

/** Fills `out` (a whole number of elements) with the tensor's next bytes. */
export type ChunkFiller = (out: Uint8Array, elementOffset: number) => void;

export function tensorBytes(t: TensorSpec): number {
  return t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype];
}

/** The 8-byte length + JSON header, padded with spaces to a multiple of 8 (as the reference writer does). */
export function encodeHeader(tensors: TensorSpec[], metadata: Record<string, string> = { format: 'pt' }): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let off = 0;
  for (const t of tensors) {
    const n = tensorBytes(t);
    header[t.name] = { dtype: SAFETENSORS_NAME[t.dtype], shape: t.shape, data_offsets: [off, off + n] };
    off += n;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const body = Buffer.from(json, 'utf8');
  const out = new Uint8Array(8 + body.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(body.length), true);
  out.set(body, 8);
  return out;
}

const CHUNK_BYTES = 16 << 20;

/** Writes one .safetensors file; `fill(tensor, index)` returns the filler of that tensor's data. */
export async function writeSafetensors(path: string, tensors: TensorSpec[], fill: (t: TensorSpec) => ChunkFiller,
  onBytes?: (n: number) => void): Promise<void> {
  const fh = await open(path, 'w');
  let pending: Promise<unknown> = Promise.resolve();
  try {
    const header = encodeHeader(tensors);
    await fh.write(header, 0, header.length, 0);
    let pos = header.length;
    const buffers = [new Uint8Array(CHUNK_BYTES), new Uint8Array(CHUNK_BYTES)];
    let which = 0;
    for (const t of tensors) {
      const es = DTYPE_BYTES[t.dtype];
      const total = tensorBytes(t);
      const perChunk = Math.floor(CHUNK_BYTES / es) * es;
      const filler = fill(t);
      for (let done = 0; done < total;) {
        const n = Math.min(perChunk, total - done);
        const buf = buffers[which]!.subarray(0, n);
        filler(buf, done / es); // generated while the other buffer's write is in flight
        await pending;
        const at = pos;
        pending = writeAll(fh, buf, at).then(() => onBytes?.(n));
        which ^= 1;
        pos += n;
        done += n;
      }
    }
    await pending;
  } finally {
    await pending.catch(() => undefined); // a failed fill must not leave a write racing the close
    await fh.close();
  }
}

/**
 * A safetensors file whose tensors arrive one at a time, in header order, from elsewhere (e.g. a
 * loader's sink): open() writes the header, write() each tensor's bytes in turn, close() checks
 * that every tensor came.
 */
export class SafetensorsStream {
  private fh: Awaited<ReturnType<typeof open>> | undefined;
  private pos = 0;
  private next = 0;

  constructor(readonly path: string, readonly tensors: TensorSpec[], private readonly metadata: Record<string, string> = { format: 'pt' }) {}

  async open(): Promise<void> {
    this.fh = await open(this.path, 'w');
    const header = encodeHeader(this.tensors, this.metadata);
    await writeAll(this.fh, header, 0);
    this.pos = header.length;
  }

  /** The next tensor's bytes; its name and size must be the header's next entry. */
  async write(name: string, data: Uint8Array): Promise<void> {
    const t = this.tensors[this.next];
    if (!t || t.name !== name) throw new Error(`${this.path}: tensor ${name} arrived where the header has ${t?.name ?? 'no more tensors'}`);
    if (data.byteLength !== tensorBytes(t)) throw new Error(`${this.path}: tensor ${name}: ${data.byteLength} bytes, the header says ${tensorBytes(t)}`);
    await writeAll(this.fh!, data, this.pos);
    this.pos += data.byteLength;
    this.next++;
  }

  get done(): boolean {
    return this.next === this.tensors.length;
  }

  async close(): Promise<void> {
    await this.fh?.close();
    this.fh = undefined;
    if (!this.done) throw new Error(`${this.path}: ${this.tensors.length - this.next} tensor(s) were never written`);
  }
}

async function writeAll(fh: Awaited<ReturnType<typeof open>>, buf: Uint8Array, position: number): Promise<void> {
  for (let off = 0; off < buf.length;) {
    const { bytesWritten } = await fh.write(buf, off, buf.length - off, position + off);
    off += bytesWritten;
  }
}
