// The per-step metadata the replica driver sends to every other rank of its replica over the data
// plane: which sequences run, their new tokens, positions, KV block tables (and the windowed
// layers' ring tables, for models that keep them in a pool of their own) and sampling
// parameters. Every message starts with a fixed FRAME_BYTES frame: kind and payload bytes, then
// the payload itself when it fits (a decode step of a few sequences: one receive, so a follower
// starts its step one data-plane round trip sooner, which a tp-2 decode step of ~3 ms feels);
// a larger payload follows the frame as a second message. Little-endian int32 words; floats and
// the 64-bit seed as raw bits. A sequence with sampling extras (min-p, penalties, logit bias,
// logprobs: StepSeq.sampling) appends them after its block table; the rest pay one word for it.
import type { SamplingExtrasJS, StepSeq } from '../native/addon.js';

export const FRAME_BYTES = 4096;
const HEADER_BYTES = 8;
export const INLINE_BYTES = FRAME_BYTES - HEADER_BYTES;
export const KIND_STEP = 1;
export const KIND_STOP = 2;

const MAGIC = 0x4e535450; // 'NSTP'
const SEQ_WORDS = 12;
/** min-p, three penalties, prompt length, logprobs, bias count; then the bias ids and values. */
const EXTRAS_WORDS = 7;

function extrasWords(x: SamplingExtrasJS | undefined): number {
  return x ? EXTRAS_WORDS + 2 * (x.logitBiasIds?.length ?? 0) : 0;
}

export interface StepMeta {
  step: number;
  seqs: StepSeq[];
  /** Run-ahead steps: per seq, the index of the previous step's sampled token that is its input, or -1. */
  tokenFrom?: Int32Array;
}

export function totalTokens(seqs: StepSeq[]): number {
  let n = 0;
  for (const s of seqs) n += s.tokens.length;
  return n;
}

/** The frame for a message of `kind` whose payload is `body`: the payload is inside when it fits. */
export function frame(kind: number, body: Uint8Array = new Uint8Array(0)): Uint8Array {
  const f = new Uint8Array(FRAME_BYTES);
  const v = new DataView(f.buffer);
  v.setInt32(0, kind, true);
  v.setInt32(4, body.byteLength, true);
  if (body.byteLength <= INLINE_BYTES) f.set(body, HEADER_BYTES);
  return f;
}

/** kind, payload bytes, and the payload when the frame carries it (else it is the next message). */
export function readFrame(buf: Uint8Array): { kind: number; bytes: number; inline: Uint8Array | null } {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const bytes = v.getInt32(4, true);
  if (bytes < 0) throw new Error(`data plane: frame with ${bytes} payload bytes (out of sync)`);
  return { kind: v.getInt32(0, true), bytes, inline: bytes <= INLINE_BYTES ? buf.subarray(HEADER_BYTES, HEADER_BYTES + bytes) : null };
}

export function encodeStep(meta: StepMeta): Uint8Array {
  let words = 3;
  for (const s of meta.seqs) words += SEQ_WORDS + s.tokens.length + s.blockTable.length + (s.windowBlockTable?.length ?? 0) + extrasWords(s.sampling);
  const buf = new ArrayBuffer(words * 4);
  const v = new DataView(buf);
  let o = 0;
  const put = (x: number) => {
    v.setInt32(o, x, true);
    o += 4;
  };
  const putF = (x: number) => {
    v.setFloat32(o, x, true);
    o += 4;
  };
  put(MAGIC);
  put(meta.step);
  put(meta.seqs.length);
  meta.seqs.forEach((s, i) => {
    put(meta.tokenFrom ? meta.tokenFrom[i]! : -1);
    put(s.tokens.length);
    put(s.pos);
    put(s.blockTable.length);
    // -1: no window table (0 would be an empty one, which the engine refuses like any short table).
    put(s.windowBlockTable ? s.windowBlockTable.length : -1);
    put(s.sample === false ? 0 : 1);
    put(s.topK ?? 0);
    v.setFloat32(o, s.temperature ?? 0, true);
    o += 4;
    v.setFloat32(o, s.topP ?? 1, true);
    o += 4;
    const seed = BigInt(s.seed ?? 0);
    v.setBigUint64(o, seed, true);
    o += 8;
    const x = s.sampling;
    put(extrasWords(x));
    for (const t of s.tokens) put(t);
    for (const b of s.blockTable) put(b);
    for (const b of s.windowBlockTable ?? []) put(b);
    if (!x) return;
    putF(x.minP ?? 0);
    putF(x.repetitionPenalty ?? 1);
    putF(x.presencePenalty ?? 0);
    putF(x.frequencyPenalty ?? 0);
    put(x.promptLen ?? 0);
    put(x.logprobs ?? -1);
    const ids = x.logitBiasIds ?? new Int32Array(0);
    put(ids.length);
    for (const t of ids) put(t);
    for (const b of x.logitBiasValues ?? []) putF(b);
  });
  return new Uint8Array(buf);
}

/** Fills the input tokens of a step planned ahead from the previous step's sampled ones (the same on every rank). */
export function fillTokens(seqs: StepSeq[], tokenFrom: Int32Array | undefined, prevSampled: Int32Array | null): void {
  if (!tokenFrom) return;
  tokenFrom.forEach((f, i) => {
    if (f < 0) return;
    if (!prevSampled || f >= prevSampled.length)
      throw new Error(`step metadata: seq ${i} takes sampled token ${f} of the previous step, which sampled ${prevSampled?.length ?? 0}`);
    seqs[i]!.tokens[0] = prevSampled[f]!;
  });
}

export function decodeStep(buf: Uint8Array): StepMeta {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let o = 0;
  const get = () => {
    const x = v.getInt32(o, true);
    o += 4;
    return x;
  };
  // Every count is checked against the bytes that are left before anything is allocated for it:
  // a corrupt frame is an error, never a multi-gigabyte allocation or a read past the end.
  const room = (count: number, words: number, what: string) => {
    if (!Number.isInteger(count) || count < 0 || count * words * 4 > buf.byteLength - o)
      throw new Error(`step metadata: ${what} ${count} does not fit the ${buf.byteLength - o} bytes left (the data plane is out of sync)`);
  };
  if (buf.byteLength < 12) throw new Error(`step metadata: ${buf.byteLength} bytes, too short for a header`);
  if (get() !== MAGIC) throw new Error('step metadata: bad magic (the data plane is out of sync)');
  const step = get();
  const n = get();
  room(n, SEQ_WORDS, 'sequence count');
  const seqs: StepSeq[] = [];
  const from = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    from[i] = get();
    const nTokens = get();
    const pos = get();
    const nBlocks = get();
    const nWindow = get();
    const sample = get() !== 0;
    const topK = get();
    const temperature = v.getFloat32(o, true);
    o += 4;
    const topP = v.getFloat32(o, true);
    o += 4;
    const seed = v.getBigUint64(o, true);
    o += 8;
    const extras = get();
    if (nTokens < 0 || nBlocks < 0 || nWindow < -1 || extras < 0)
      throw new Error(`step metadata: negative count (${nTokens} tokens, ${nBlocks} blocks, ${nWindow} window blocks, ${extras} extras words)`);
    if (extras !== 0 && extras < EXTRAS_WORDS) throw new Error(`step metadata: seq ${i} has ${extras} extras words, fewer than ${EXTRAS_WORDS} (out of sync)`);
    room(nTokens + nBlocks + Math.max(nWindow, 0) + extras, 1, `token count ${nTokens} + block count ${nBlocks} + window blocks ${nWindow} + extras words`);
    const tokens = new Int32Array(nTokens);
    for (let k = 0; k < nTokens; k++) tokens[k] = get();
    const blockTable = new Int32Array(nBlocks);
    for (let k = 0; k < nBlocks; k++) blockTable[k] = get();
    const seq: StepSeq = { tokens, pos, blockTable, sample, topK, temperature, topP, seed };
    if (nWindow >= 0) {
      const windowBlockTable = new Int32Array(nWindow);
      for (let k = 0; k < nWindow; k++) windowBlockTable[k] = get();
      seq.windowBlockTable = windowBlockTable;
    }
    if (extras > 0) {
      const getF = () => {
        const x = v.getFloat32(o, true);
        o += 4;
        return x;
      };
      const x: SamplingExtrasJS = { minP: getF(), repetitionPenalty: getF(), presencePenalty: getF(), frequencyPenalty: getF(), promptLen: get(), logprobs: get() };
      const nBias = get();
      if (extras !== EXTRAS_WORDS + 2 * nBias) throw new Error(`step metadata: seq ${i} has ${extras} extras words for ${nBias} logit biases (out of sync)`);
      if (nBias > 0) {
        const ids = new Int32Array(nBias);
        for (let k = 0; k < nBias; k++) ids[k] = get();
        const vals = new Float32Array(nBias);
        for (let k = 0; k < nBias; k++) vals[k] = getF();
        x.logitBiasIds = ids;
        x.logitBiasValues = vals;
      }
      seq.sampling = x;
    }
    seqs.push(seq);
  }
  if (o !== buf.byteLength) throw new Error(`step metadata: ${buf.byteLength - o} trailing bytes`);
  return from.some((f) => f >= 0) ? { step, seqs, tokenFrom: from } : { step, seqs };
}
