// Fast seeded random weights for `model init`: xoshiro128** drives 16-bit indices into a 65536-entry
// table of N(0, 1) quantiles already scaled and encoded in the target dtype, so a 7B checkpoint is
// generated at table-lookup speed, and the same (seed, tensor name) always gives the same bytes.
import type { DType } from './config.js';

/** Acklam's inverse normal CDF (relative error < 1.2e-9), for the quantile table. */
function inverseNormal(p: number): number {
  const a = [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.38357751867269e2, -3.066479806614716e1, 2.506628277459239];
  const b = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
  const c = [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
  const d = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
  const lo = 0.02425;
  if (p < lo) {
    const q = Math.sqrt(-2 * Math.log(p));
    return (((((c[0]! * q + c[1]!) * q + c[2]!) * q + c[3]!) * q + c[4]!) * q + c[5]!) / ((((d[0]! * q + d[1]!) * q + d[2]!) * q + d[3]!) * q + 1);
  }
  if (p > 1 - lo) return -inverseNormal(1 - p);
  const q = p - 0.5, r = q * q;
  return (((((a[0]! * r + a[1]!) * r + a[2]!) * r + a[3]!) * r + a[4]!) * r + a[5]!) * q /
    (((((b[0]! * r + b[1]!) * r + b[2]!) * r + b[3]!) * r + b[4]!) * r + 1);
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** f32 → bf16 bits, round to nearest even (finite inputs). */
export function bf16Bits(x: number): number {
  f32[0] = x;
  const u = u32[0]!;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

/** f32 → IEEE half bits, round to nearest even, for the small finite values used here. */
export function f16Bits(x: number): number {
  f32[0] = x;
  const u = u32[0]!;
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  let mant = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let h = mant >>> shift;
    const rem = mant & ((1 << shift) - 1), half = 1 << (shift - 1);
    if (rem > half || (rem === half && (h & 1))) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h++; // a carry into the exponent is still right
  return sign | h;
}

let normalTable: Float64Array | undefined;
const encodedTables = new Map<string, Uint16Array | Float32Array>();

/** 65536 values of mean + std·N(0,1) quantiles, encoded for `dtype`. */
export function encodedTable(dtype: DType, mean: number, std: number): Uint16Array | Float32Array {
  const key = `${dtype}:${mean}:${std}`;
  let t = encodedTables.get(key);
  if (t) return t;
  if (!normalTable) {
    normalTable = new Float64Array(65536);
    for (let i = 0; i < 65536; i++) normalTable[i] = inverseNormal((i + 0.5) / 65536);
  }
  const n = normalTable;
  if (dtype === 'f32') t = Float32Array.from(n, (z) => mean + std * z);
  else {
    const enc = dtype === 'bf16' ? bf16Bits : f16Bits;
    t = Uint16Array.from(n, (z) => enc(mean + std * z));
  }
  encodedTables.set(key, t);
  return t;
}

function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

function splitmix32(state: { s: number }): number {
  state.s = (state.s + 0x9e3779b9) | 0;
  let z = state.s;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

/**
 * A filler of normally distributed values for one tensor: element-sequential across calls, so
 * chunking does not change the bytes. `seed` is any non-negative integer.
 */
export function normalFiller(seed: bigint, name: string, dtype: DType, mean: number, std: number): (out: Uint8Array) => void {
  const sm = { s: (Number(seed & 0xffffffffn) ^ hashString(name) ^ Math.imul(Number((seed >> 32n) & 0xffffffffn), 0x27d4eb2d)) | 0 };
  let s0 = splitmix32(sm) | 0, s1 = splitmix32(sm) | 0, s2 = splitmix32(sm) | 0, s3 = splitmix32(sm) | 0;
  if ((s0 | s1 | s2 | s3) === 0) s0 = 1;
  const table = encodedTable(dtype, mean, std);
  return (out: Uint8Array) => {
    const count = out.byteLength / (dtype === 'f32' ? 4 : 2);
    const dst = dtype === 'f32'
      ? new Float32Array(out.buffer, out.byteOffset, count)
      : new Uint16Array(out.buffer, out.byteOffset, count);
    const tbl = table;
    let i = 0;
    while (i < count) {
      // xoshiro128**: one 32-bit draw gives two 16-bit table indices.
      const r = Math.imul(rotl(Math.imul(s1, 5), 7), 9) >>> 0;
      const t = s1 << 9;
      s2 ^= s0; s3 ^= s1; s1 ^= s2; s0 ^= s3; s2 ^= t; s3 = rotl(s3, 11);
      dst[i++] = tbl[r & 0xffff]!;
      if (i < count) dst[i++] = tbl[r >>> 16]!;
    }
  };
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
