// A step request (StepRequest) packed into two typed arrays for the addon's step. The addon used to
// read ~25 properties of every sequence through N-API on the JS thread, and a GPU idles through
// that part of every step; typed-array writes here cost a fraction of it. The checks and messages
// are the ones the addon made (`step: seqs[i].field ...`), in the same order.
//
// Layout (native/src/addon/engine_binding.cc reads it, checking every count against the lengths):
//   ints:   n, request flags (REQ_CHAINED: the request has tokenFrom), then per sequence SEQ_INTS
//           values: nTokens, pos, nBlocks, nWindowBlocks (-1: none), topK, flags, seed (low 32
//           bits), seed (high 32 bits), tokenFrom (-1: none); then per sequence its tokens, block
//           table and window block table.
//   floats: per sequence temperature, topP.
// The rare fields stay in the sequence object and the addon reads them for the flagged sequences
// only: `sampling` (FLAG_EXTRAS), and a seed that is not a non-negative safe integer or a bigint
// below 2^64 (FLAG_NATIVE_SEED: the addon's ParseSeed says what is wrong with it).
import { isInt32Array } from 'node:util/types';

import type { StepRequest, StepSeq } from './addon.js';

export const HEAD_INTS = 2;
export const SEQ_INTS = 9;
export const REQ_CHAINED = 1;
export const FLAG_SAMPLE = 1;
export const FLAG_ALL_LOGITS = 2;
export const FLAG_NATIVE_SEED = 4;
export const FLAG_EXTRAS = 8;

const U32 = 4294967296;
const U64_MAX = 0xffffffffffffffffn;

export interface PackedStep {
  ints: Int32Array;
  floats: Float32Array;
}

function int32s(v: unknown, i: number, key: string): Int32Array {
  if (v instanceof Int32Array || isInt32Array(v)) return v as Int32Array;
  throw new TypeError(`step: seqs[${i}].${key} must be an Int32Array`);
}

function num(v: unknown, i: number, key: string, def: number): number {
  if (v === undefined || v === null) return def;
  if (typeof v !== 'number') throw new TypeError(`step: seqs[${i}].${key} must be a number`);
  return v;
}

function flag(v: unknown, i: number, key: string, def: boolean): boolean {
  if (v === undefined || v === null) return def;
  if (typeof v !== 'boolean') throw new TypeError(`step: seqs[${i}].${key} must be a boolean`);
  return v;
}

/** The request's sequences packed as the addon's step takes them; throws a TypeError naming the bad field. */
export function packStep(req: StepRequest): PackedStep {
  if (typeof req !== 'object' || req === null) throw new TypeError('step(request): request object required');
  const seqs: unknown = req.seqs;
  if (!Array.isArray(seqs)) throw new TypeError('step: seqs must be an array');
  const n = seqs.length;
  const from = req.tokenFrom as unknown;
  if (from !== undefined && from !== null) {
    if (!(from instanceof Int32Array || isInt32Array(from))) throw new TypeError('step: tokenFrom must be an Int32Array');
    if ((from as Int32Array).length !== n) throw new RangeError(`step: tokenFrom has ${(from as Int32Array).length} entries for ${n} sequences`);
  }
  const tokenFrom = from as Int32Array | undefined | null;
  const head = new Int32Array(HEAD_INTS + n * SEQ_INTS);
  const floats = new Float32Array(2 * n);
  const parts: Int32Array[] = [];
  head[0] = n;
  head[1] = tokenFrom ? REQ_CHAINED : 0;
  let words = head.length;
  for (let i = 0; i < n; i++) {
    const s = seqs[i] as StepSeq;
    if (typeof s !== 'object' || s === null) throw new TypeError(`step: seqs[${i}] must be an object`);
    const tokens = int32s(s.tokens, i, 'tokens');
    const table = int32s(s.blockTable, i, 'blockTable');
    const pos = s.pos as unknown;
    if (typeof pos !== 'number') throw new TypeError(`step: seqs[${i}].pos must be a number`);
    const wt = s.windowBlockTable;
    const window = wt === undefined || wt === null ? null : int32s(wt, i, 'windowBlockTable');
    const temperature = num(s.temperature, i, 'temperature', 0);
    const topK = num(s.topK, i, 'topK', 0);
    const topP = num(s.topP, i, 'topP', 1);
    // A seed the fast path takes: exactly the values ParseSeed accepts, packed as two uint32 halves.
    const seed = s.seed as unknown;
    let lo = 0, hi = 0, flags = 0;
    if (typeof seed === 'number' && Number.isSafeInteger(seed) && seed >= 0) {
      lo = seed >>> 0;
      hi = Math.floor(seed / U32);
    } else if (typeof seed === 'bigint' && seed >= 0n && seed <= U64_MAX) {
      lo = Number(seed & 0xffffffffn);
      hi = Number(seed >> 32n);
    } else if (seed !== undefined && seed !== null) {
      flags |= FLAG_NATIVE_SEED;
    }
    if (flag(s.sample, i, 'sample', true)) flags |= FLAG_SAMPLE;
    if (flag(s.allLogits, i, 'allLogits', false)) flags |= FLAG_ALL_LOGITS;
    if (s.sampling !== undefined && s.sampling !== null) flags |= FLAG_EXTRAS;
    const f = tokenFrom ? tokenFrom[i]! : -1;
    if (f < -1 || (f >= 0 && tokens.length === 0))
      throw new RangeError(`step: tokenFrom[${i}] is ${f} for ${tokens.length} tokens: -1, or an index for its first token`);
    const h = HEAD_INTS + i * SEQ_INTS;
    head[h] = tokens.length;
    head[h + 1] = pos;  // ToInt32, as N-API's Int32Value did
    head[h + 2] = table.length;
    head[h + 3] = window ? window.length : -1;
    // The C++ cast the addon made, with the out-of-range values (undefined there) as 0: top-k off either way.
    head[h + 4] = Math.abs(topK) < 2147483648 ? topK : 0;
    head[h + 5] = flags;
    head[h + 6] = lo;
    head[h + 7] = hi;
    head[h + 8] = f;
    floats[2 * i] = temperature;
    floats[2 * i + 1] = topP;
    parts.push(tokens, table);
    words += tokens.length + table.length;
    if (window) {
      parts.push(window);
      words += window.length;
    }
  }
  const ints = new Int32Array(words);
  ints.set(head);
  let off = head.length;
  for (const p of parts) {
    ints.set(p, off);
    off += p.length;
  }
  return { ints, floats };
}
