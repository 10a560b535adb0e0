// safetensors reader: validates the header of every file completely before any tensor byte is
// read, then serves byte-range reads of whole tensors, row ranges (one read) and column ranges
// (blocks of rows read into a reused buffer, the columns gathered out). Format: 8-byte LE header
// length N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}, __metadata__?},
// then the data; offsets are relative to the end of the header.
import { existsSync, readFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { basename, join } from 'node:path';

import type { DType } from './config.js';

/**
 * Element types a checkpoint may hold: the float dtypes the backends compute with, and those of
 * quantized checkpoints (int8 and E4M3 weights, int32 words of compressed-tensors' pack-quantized
 * int8, int64/int32 shape records). Others are refused at open.
 */
export type TensorDType = DType | 'i8' | 'f8e4m3' | 'i32' | 'i64';

/** Bytes per element of every dtype a checkpoint may hold. */
export const DTYPE_BYTES: Record<TensorDType, number> = { f32: 4, bf16: 2, f16: 2, i8: 1, f8e4m3: 1, i32: 4, i64: 8 };
const ST_DTYPES: Record<string, TensorDType> = { F32: 'f32', BF16: 'bf16', F16: 'f16', I8: 'i8', F8_E4M3: 'f8e4m3', I32: 'i32', I64: 'i64' };
export const SAFETENSORS_NAME: Record<TensorDType, string> = { f32: 'F32', bf16: 'BF16', f16: 'F16', i8: 'I8', f8e4m3: 'F8_E4M3', i32: 'I32', i64: 'I64' };

/** The header may not be larger than this (the format's own reference limit is 100 MB). */
const MAX_HEADER = 100 * 1024 * 1024;

export class SafetensorsError extends Error {}

export interface TensorInfo {
  name: string;
  file: string;
  dtype: TensorDType;
  shape: number[];
  /** Absolute file offset of the first byte. */
  start: number;
  bytes: number;
}

export interface SafetensorsFile {
  path: string;
  handle: FileHandle;
  size: number;
  tensors: Map<string, TensorInfo>;
  metadata: Record<string, string>;
}

async function readExactly(h: FileHandle, buf: Uint8Array, position: number, path: string, what: string): Promise<void> {
  let off = 0;
  while (off < buf.byteLength) {
    const { bytesRead } = await h.read(buf, off, buf.byteLength - off, position + off);
    if (bytesRead === 0) throw new SafetensorsError(`${path}: ${what}: unexpected end of file at byte ${position + off}`);
    off += bytesRead;
  }
}

function isDim(x: unknown): x is number {
  return typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
}

/** Parses and validates a header; `dataSize` is the number of bytes after it. */
export function parseHeader(path: string, json: string, dataSize: number, dataStart: number): Omit<SafetensorsFile, 'handle' | 'size' | 'path'> {
  let header: unknown;
  try {
    header = JSON.parse(json);
  } catch (err) {
    throw new SafetensorsError(`${path}: header is not valid JSON (${(err as Error).message})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) throw new SafetensorsError(`${path}: header is not a JSON object`);
  const tensors = new Map<string, TensorInfo>();
  let metadata: Record<string, string> = {};
  const ranges: { name: string; begin: number; end: number }[] = [];
  for (const [name, v] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof v === 'object' && v !== null && !Array.isArray(v)) metadata = v as Record<string, string>;
      continue;
    }
    const where = `${path}: tensor ${name}`;
    if (typeof v !== 'object' || v === null) throw new SafetensorsError(`${where}: entry is not an object`);
    const e = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    const dtype = typeof e.dtype === 'string' ? ST_DTYPES[e.dtype] : undefined;
    if (!dtype) throw new SafetensorsError(`${where}: unknown or unsupported dtype ${JSON.stringify(e.dtype)} (${Object.keys(ST_DTYPES).join(', ')})`);
    if (!Array.isArray(e.shape) || !e.shape.every(isDim)) throw new SafetensorsError(`${where}: shape ${JSON.stringify(e.shape)} is not a list of sizes`);
    const off = e.data_offsets;
    if (!Array.isArray(off) || off.length !== 2 || !isDim(off[0]) || !isDim(off[1]) || off[1] < off[0]) {
      throw new SafetensorsError(`${where}: data_offsets ${JSON.stringify(off)} are not [begin, end] with begin <= end`);
    }
    const [begin, end] = off as [number, number];
    if (end > dataSize) throw new SafetensorsError(`${where}: data_offsets [${begin}, ${end}] run past the end of the file (${dataSize} data bytes)`);
    const shape = e.shape as number[];
    const expected = shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype];
    if (end - begin !== expected) {
      throw new SafetensorsError(`${where}: data_offsets [${begin}, ${end}] hold ${end - begin} bytes but shape [${shape.join(', ')}] ${e.dtype} needs ${expected}`);
    }
    tensors.set(name, { name, file: path, dtype, shape, start: dataStart + begin, bytes: end - begin });
    ranges.push({ name, begin, end });
  }
  // Sorted by start, a range overlaps an earlier one iff it starts before the furthest end so far.
  const nonEmpty = ranges.filter((r) => r.end > r.begin).sort((a, b) => a.begin - b.begin || a.end - b.end);
  let furthest: { name: string; begin: number; end: number } | undefined;
  for (const r of nonEmpty) {
    if (furthest && r.begin < furthest.end) {
      throw new SafetensorsError(`${path}: tensor ${r.name}: data_offsets [${r.begin}, ${r.end}] overlap tensor ${furthest.name} [${furthest.begin}, ${furthest.end}]`);
    }
    if (!furthest || r.end > furthest.end) furthest = r;
  }
  return { tensors, metadata };
}

/** Opens one .safetensors file and validates its header; the handle stays open for reads. */
export async function openSafetensors(path: string): Promise<SafetensorsFile> {
  let handle: FileHandle;
  try {
    handle = await open(path, 'r');
  } catch (err) {
    throw new SafetensorsError(`${path}: cannot open (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
  try {
    const { size } = await handle.stat();
    if (size < 8) throw new SafetensorsError(`${path}: ${size} bytes is too short for a safetensors file (8-byte header length)`);
    const lenBuf = new Uint8Array(8);
    await readExactly(handle, lenBuf, 0, path, 'header length');
    const n = new DataView(lenBuf.buffer).getBigUint64(0, true);
    if (n > BigInt(size - 8)) throw new SafetensorsError(`${path}: header length ${n} runs past the end of the file (${size} bytes)`);
    if (n > BigInt(MAX_HEADER)) throw new SafetensorsError(`${path}: header length ${n} exceeds ${MAX_HEADER} bytes`);
    const hb = new Uint8Array(Number(n));
    await readExactly(handle, hb, 8, path, 'header');
    let json: string;
    try {
      json = new TextDecoder('utf-8', { fatal: true }).decode(hb);
    } catch {
      throw new SafetensorsError(`${path}: header is not valid UTF-8`);
    }
    const dataStart = 8 + Number(n);
    const parsed = parseHeader(path, json, size - dataStart, dataStart);
    return { path, handle, size, ...parsed };
  } catch (err) {
    await handle.close();
    throw err;
  }
}

/** A model's tensors across one or more files (model.safetensors or the sharded index). */
export class Checkpoint {
  private constructor(readonly dir: string, readonly files: SafetensorsFile[], readonly tensors: Map<string, TensorInfo>) {}

  static async open(dir: string): Promise<Checkpoint> {
    const indexPath = join(dir, 'model.safetensors.index.json');
    let names: string[];
    let weightMap: Record<string, string> | null = null;
    if (existsSync(indexPath)) {
      weightMap = readIndex(indexPath, dir);
      names = [...new Set(Object.values(weightMap))];
    } else if (existsSync(join(dir, 'model.safetensors'))) {
      names = ['model.safetensors'];
    } else {
      throw new SafetensorsError(`${dir}: no model.safetensors or model.safetensors.index.json`);
    }
    const files: SafetensorsFile[] = [];
    try {
      for (const n of names) files.push(await openSafetensors(join(dir, n)));
      const tensors = new Map<string, TensorInfo>();
      for (const f of files) {
        for (const [name, t] of f.tensors) {
          const prev = tensors.get(name);
          if (prev) throw new SafetensorsError(`${f.path}: tensor ${name} is also in ${prev.file}`);
          if (weightMap && weightMap[name] !== undefined && join(dir, weightMap[name]!) !== f.path) {
            throw new SafetensorsError(`${indexPath}: tensor ${name} is mapped to ${weightMap[name]} but found in ${basename(f.path)}`);
          }
          tensors.set(name, t);
        }
      }
      if (weightMap) {
        for (const [name, file] of Object.entries(weightMap)) {
          if (!tensors.has(name)) throw new SafetensorsError(`${join(dir, file)}: tensor ${name} (listed in model.safetensors.index.json) is not in the file`);
        }
      }
      return new Checkpoint(dir, files, tensors);
    } catch (err) {
      await Promise.all(files.map((f) => f.handle.close()));
      throw err;
    }
  }

  get(name: string): TensorInfo | undefined {
    return this.tensors.get(name);
  }

  private handleOf(t: TensorInfo): FileHandle {
    const f = this.files.find((x) => x.path === t.file);
    if (!f) throw new SafetensorsError(`${t.file}: tensor ${t.name}: file is not open`);
    return f.handle;
  }

  /** Rows [r0, r1) of a tensor (dim 0): one contiguous read. A 1-D tensor is sliced by element. */
  async readRows(t: TensorInfo, r0: number, r1: number, out?: Uint8Array): Promise<Uint8Array> {
    const rowBytes = t.shape.length === 0 ? t.bytes : t.bytes / Math.max(1, t.shape[0]!);
    if (r0 < 0 || r1 < r0 || r1 > (t.shape[0] ?? 1)) throw new SafetensorsError(`${t.file}: tensor ${t.name}: rows [${r0}, ${r1}) out of range`);
    const len = (r1 - r0) * rowBytes;
    const buf = out ?? new Uint8Array(len);
    await readExactly(this.handleOf(t), buf.subarray(0, len), t.start + r0 * rowBytes, t.file, `tensor ${t.name}`);
    return buf.subarray(0, len);
  }

  /**
   * Columns [c0, c1) of a 2-D tensor (dim 1), all rows. Reads blocks of whole rows (~8 MiB) into
   * one reused buffer and copies each row's column range out: few large reads, not one per row.
   * (Reading whole rows costs tp× the bytes of the slice, but sequentially; a strided read of a
   * 1/tp slice per row would be one syscall per row of a 7B matrix.)
   */
  async readColumns(t: TensorInfo, c0: number, c1: number): Promise<Uint8Array> {
    if (t.shape.length !== 2) throw new SafetensorsError(`${t.file}: tensor ${t.name}: column slice of a ${t.shape.length}-D tensor`);
    const [rows, cols] = t.shape as [number, number];
    if (c0 < 0 || c1 < c0 || c1 > cols) throw new SafetensorsError(`${t.file}: tensor ${t.name}: columns [${c0}, ${c1}) out of range`);
    const es = DTYPE_BYTES[t.dtype];
    const rowBytes = cols * es;
    const sliceBytes = (c1 - c0) * es;
    const out = new Uint8Array(rows * sliceBytes);
    if (rows === 0 || sliceBytes === 0) return out;
    const rowsPerBlock = Math.max(1, Math.floor((8 << 20) / rowBytes));
    const block = new Uint8Array(Math.min(rows, rowsPerBlock) * rowBytes);
    const h = this.handleOf(t);
    for (let r = 0; r < rows; r += rowsPerBlock) {
      const n = Math.min(rowsPerBlock, rows - r);
      const view = block.subarray(0, n * rowBytes);
      await readExactly(h, view, t.start + r * rowBytes, t.file, `tensor ${t.name}`);
      for (let i = 0; i < n; i++) {
        out.set(view.subarray(i * rowBytes + c0 * es, i * rowBytes + c1 * es), (r + i) * sliceBytes);
      }
    }
    return out;
  }

  async close(): Promise<void> {
    await Promise.all(this.files.map((f) => f.handle.close().catch(() => undefined)));
  }
}

function readIndex(indexPath: string, dir: string): Record<string, string> {
  let idx: unknown;
  try {
    idx = JSON.parse(readFileSync(indexPath, 'utf8'));
  } catch (err) {
    throw new SafetensorsError(`${indexPath}: not valid JSON (${(err as Error).message})`);
  }
  const wm = (idx as { weight_map?: unknown } | null)?.weight_map;
  if (typeof wm !== 'object' || wm === null || Array.isArray(wm)) throw new SafetensorsError(`${indexPath}: field weight_map is missing or not an object`);
  for (const [name, file] of Object.entries(wm as Record<string, unknown>)) {
    if (typeof file !== 'string' || file.includes('/') || file.includes('\\') || file === '..') {
      throw new SafetensorsError(`${indexPath}: tensor ${name}: weight_map entry ${JSON.stringify(file)} is not a file name`);
    }
    if (!existsSync(join(dir, file))) throw new SafetensorsError(`${indexPath}: tensor ${name}: file ${file} does not exist`);
  }
  return wm as Record<string, string>;
}

export function openCheckpoint(dir: string): Promise<Checkpoint> {
  return Checkpoint.open(dir);
}
