// Weight dtype conversion on the way into the backend (`--dtype` on CPU: keep the checkpoint's
// dtype, or store f32 / bf16 / f16; scales of quantized checkpoints widened to f32). Runs once per
// tensor at load time.
import type { DType as DTypeName } from './config.js';

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const man = h & 0x3ff;
  if (exp === 0) return sign * man * 2 ** -24;
  if (exp === 31) return man ? NaN : sign * Infinity;
  return sign * (1 + man / 1024) * 2 ** (exp - 15);
}

function f32ToF16(v: number): number {
  f32[0] = v;
  const u = u32[0]!;
  const sign = (u >>> 16) & 0x8000;
  const e8 = (u >>> 23) & 0xff;
  let man = u & 0x7fffff;
  if (e8 === 0xff) return sign | 0x7c00 | (man ? 0x200 : 0);
  const exp = e8 - 127 + 15;
  if (exp >= 31) return sign | 0x7c00;
  if (exp <= 0) {
    if (exp < -10) return sign;
    man |= 0x800000;
    const shift = 14 - exp;
    let half = man >>> shift;
    const rem = man & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && half & 1)) half++;
    return sign | half;
  }
  let half = sign | (exp << 10) | (man >>> 13);
  const rem = man & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++;
  return half;
}

function f32ToBf16(v: number): number {
  f32[0] = v;
  const u = u32[0]!;
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 0x40) & 0xffff;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

function bf16ToF32(h: number): number {
  u32[0] = h << 16;
  return f32[0]!;
}

/** Returns `data` (raw little-endian elements of dtype `from`) as dtype `to`. */
export function convertTensor(data: Uint8Array, from: DTypeName, to: DTypeName): Uint8Array {
  if (from === to) return data;
  const n = data.byteLength / (from === 'f32' ? 4 : 2);
  // Aligned copies: safetensors slices may sit at odd offsets.
  const src = new Uint8Array(data);
  const read: (i: number) => number =
    from === 'f32' ? ((a) => (i: number) => a[i]!)(new Float32Array(src.buffer, 0, n))
      : from === 'bf16' ? ((a) => (i: number) => bf16ToF32(a[i]!))(new Uint16Array(src.buffer, 0, n))
        : ((a) => (i: number) => f16ToF32(a[i]!))(new Uint16Array(src.buffer, 0, n));
  if (to === 'f32') {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = read(i);
    return new Uint8Array(out.buffer);
  }
  const out = new Uint16Array(n);
  const write = to === 'bf16' ? f32ToBf16 : f32ToF16;
  for (let i = 0; i < n; i++) out[i] = write(read(i));
  return new Uint8Array(out.buffer);
}
