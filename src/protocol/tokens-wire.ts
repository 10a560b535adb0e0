// The replica driver's Tokens message (proto/control.proto: WorkerMessage.tokens), written to
// protobuf bytes directly. The driver sends one after every step, with an update per running
// sequence; through @grpc/proto-loader's serializer (protobufjs fromObject, then a Writer that
// records an op object per field and copies them out at finish) that cost ~1 µs of the driver's
// thread per update, more than the rest of reporting a token but detokenizing it. Here: one pass
// to size the message, one to write it into a single buffer.
//
// The bytes are exactly the ones protobufjs writes for the same object (fields in number order,
// every field the object sets written even when it holds the default, as protobufjs does), for
// the shape the driver sends: a WorkerMessage with only `tokens` set, an epoch given as decimal
// text or a safe integer, updates whose strings are well-formed UTF-16, whose finish reason is a
// FinishReason name or value, and without logprobs. Anything else (a batch, logprobs, a lone
// surrogate, ...) returns null and goes through protobufjs.

const FINISH: Record<string, number> = { FINISH_REASON_UNSPECIFIED: 0, FINISH_REASON_STOP: 1, FINISH_REASON_LENGTH: 2 };
/** The WorkerMessage oneof's other members: the fast path writes a message that sets none of them. */
const OTHER_MEMBERS = ['join', 'heartbeat', 'loadProgress', 'ready', 'commOffer', 'error', 'batch'] as const;
/** protobufjs writes strings shorter than this with its own UTF-8 loop, longer ones with Buffer's. */
const SHORT = 40;

type Obj = Record<string, unknown>;

function isPlain(v: unknown): v is Obj {
  if (typeof v !== 'object' || v === null) return false;
  const p = Object.getPrototypeOf(v);
  return p === Object.prototype || p === null;
}

function varintBytes(v: number): number {
  return v < 0x80 ? 1 : v < 0x4000 ? 2 : v < 0x200000 ? 3 : v < 0x10000000 ? 4 : 5;
}

/** Bytes of a non-negative safe integer as a varint (up to 2^53). */
function varint64Bytes(v: number): number {
  let n = 1;
  while (v >= 128) {
    v = Math.floor(v / 128);
    n++;
  }
  return n;
}

const SURROGATE = /[\uD800-\uDFFF]/;

/** UTF-8 bytes of a string, or -1 when it is not well-formed (a lone surrogate). */
function utf8Bytes(s: string): number {
  if (s.length >= SHORT) return SURROGATE.test(s) && !wellFormed(s) ? -1 : Buffer.byteLength(s, 'utf8');
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if ((c & 0xf800) !== 0xd800) n += 3;
    else if (c < 0xdc00 && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      n += 4;
      i++;
    } else return -1;
  }
  return n;
}

function wellFormed(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if ((c & 0xf800) !== 0xd800) continue;
    if (c >= 0xdc00 || (s.charCodeAt(i + 1) & 0xfc00) !== 0xdc00) return false;
    i++;
  }
  return true;
}

/** An update's fields as protobufjs's fromObject takes them, with their encoded sizes. */
interface Fields {
  requestId: string | null;
  tokenIds: number[] | null;
  text: string | null;
  index: number | null;
  finish: number | null;
  error: string | null;
  preempted: boolean | null;
  /** UTF-8 bytes of the strings, of the packed token ids, and of the whole update. */
  requestIdBytes: number;
  textBytes: number;
  errorBytes: number;
  idsBytes: number;
  bytes: number;
}

function str(v: unknown): string | null {
  return v === undefined || v === null ? null : String(v);
}

/** The update's fields, or null when it is not the fast path's shape. */
function fields(u: unknown): Fields | null {
  if (!isPlain(u)) return null;
  const logprobs = u.logprobs;
  if (logprobs && (!Array.isArray(logprobs) || logprobs.length)) return null;
  const requestId = str(u.requestId), text = str(u.text), error = str(u.error);
  const requestIdBytes = requestId === null ? 0 : utf8Bytes(requestId);
  const textBytes = text === null ? 0 : utf8Bytes(text);
  const errorBytes = error === null ? 0 : utf8Bytes(error);
  if (requestIdBytes < 0 || textBytes < 0 || errorBytes < 0) return null;
  let tokenIds: number[] | null = null;
  if (u.tokenIds) {
    if (!Array.isArray(u.tokenIds)) return null;
    tokenIds = u.tokenIds as number[];
  }
  let finish: number | null = null;
  const fr = u.finishReason;
  if (typeof fr === 'string') {
    if (!Object.hasOwn(FINISH, fr)) return null;
    finish = FINISH[fr]!;
  } else if (typeof fr === 'number') {
    if (fr !== 0 && fr !== 1 && fr !== 2) return null;
    finish = fr;
  } else if (fr !== undefined && fr !== null) return null;
  const index = u.index === undefined || u.index === null ? null : (u.index as number) >>> 0;
  const preempted = u.preempted === undefined || u.preempted === null ? null : Boolean(u.preempted);
  let idsBytes = 0;
  if (tokenIds) for (let i = 0; i < tokenIds.length; i++) idsBytes += varintBytes(tokenIds[i]! >>> 0);
  let bytes = 0;
  if (requestId !== null) bytes += 1 + lenBytes(requestIdBytes);
  if (tokenIds && tokenIds.length) bytes += 1 + lenBytes(idsBytes);
  if (text !== null) bytes += 1 + lenBytes(textBytes);
  if (index !== null) bytes += 1 + varintBytes(index);
  if (finish !== null) bytes += 2;
  if (error !== null) bytes += 1 + lenBytes(errorBytes);
  if (preempted !== null) bytes += 2;
  return { requestId, tokenIds, text, index, finish, error, preempted, requestIdBytes, textBytes, errorBytes, idsBytes, bytes };
}

/** A length-delimited field's length prefix and body. */
function lenBytes(n: number): number {
  return varintBytes(n) + n;
}

function epochOf(v: unknown): number | null | undefined {
  if (v === undefined || v === null) return null;
  if (typeof v === 'string') return /^[0-9]{1,15}$/.test(v) ? Number(v) : undefined;
  if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) return v;
  return undefined;
}

class Out {
  pos = 0;
  constructor(readonly buf: Buffer) {}

  varint(v: number): void {
    const b = this.buf;
    while (v >= 128) {
      b[this.pos++] = (v & 127) | 128;
      v >>>= 7;
    }
    b[this.pos++] = v;
  }

  varint64(v: number): void {
    const b = this.buf;
    while (v >= 128) {
      b[this.pos++] = (v % 128) | 128;
      v = Math.floor(v / 128);
    }
    b[this.pos++] = v;
  }

  /** A string field of `n` UTF-8 bytes (utf8Bytes: the string is well-formed). */
  string(tag: number, s: string, n: number): void {
    this.buf[this.pos++] = tag;
    this.varint(n);
    if (s.length >= SHORT) {
      this.pos += this.buf.write(s, this.pos, n, 'utf8');
      return;
    }
    const b = this.buf;
    for (let i = 0; i < s.length; i++) {
      let c = s.charCodeAt(i);
      if (c < 0x80) b[this.pos++] = c;
      else if (c < 0x800) {
        b[this.pos++] = (c >> 6) | 0xc0;
        b[this.pos++] = (c & 63) | 0x80;
      } else if ((c & 0xfc00) === 0xd800) {
        c = 0x10000 + ((c & 0x3ff) << 10) + (s.charCodeAt(++i) & 0x3ff);
        b[this.pos++] = (c >> 18) | 0xf0;
        b[this.pos++] = ((c >> 12) & 63) | 0x80;
        b[this.pos++] = ((c >> 6) & 63) | 0x80;
        b[this.pos++] = (c & 63) | 0x80;
      } else {
        b[this.pos++] = (c >> 12) | 0xe0;
        b[this.pos++] = ((c >> 6) & 63) | 0x80;
        b[this.pos++] = (c & 63) | 0x80;
      }
    }
  }
}

/** The protobuf bytes of `{ tokens: { epoch, updates } }`, or null when the message is not the shape written here. */
export function encodeTokensMessage(m: unknown): Buffer | null {
  if (!isPlain(m) || !isPlain(m.tokens)) return null;
  for (const k of OTHER_MEMBERS) if (m[k] !== undefined && m[k] !== null) return null;
  const t = m.tokens;
  const epoch = epochOf(t.epoch);
  if (epoch === undefined) return null;
  let updates: Fields[] = [];
  if (t.updates) {
    if (!Array.isArray(t.updates)) return null;
    updates = new Array<Fields>(t.updates.length);
    for (let i = 0; i < t.updates.length; i++) {
      const f = fields(t.updates[i]);
      if (!f) return null;
      updates[i] = f;
    }
  }
  let tokens = epoch === null ? 0 : 1 + varint64Bytes(epoch);
  for (const f of updates) tokens += 1 + lenBytes(f.bytes);
  const out = new Out(Buffer.allocUnsafe(1 + lenBytes(tokens)));
  out.buf[out.pos++] = (6 << 3) | 2;
  out.varint(tokens);
  if (epoch !== null) {
    out.buf[out.pos++] = (1 << 3) | 0;
    out.varint64(epoch);
  }
  for (const f of updates) {
    out.buf[out.pos++] = (2 << 3) | 2;
    out.varint(f.bytes);
    if (f.requestId !== null) out.string((1 << 3) | 2, f.requestId, f.requestIdBytes);
    if (f.tokenIds && f.tokenIds.length) {
      out.buf[out.pos++] = (2 << 3) | 2;
      out.varint(f.idsBytes);
      for (let i = 0; i < f.tokenIds.length; i++) out.varint(f.tokenIds[i]! >>> 0);
    }
    if (f.text !== null) out.string((3 << 3) | 2, f.text, f.textBytes);
    if (f.index !== null) {
      out.buf[out.pos++] = (4 << 3) | 0;
      out.varint(f.index);
    }
    if (f.finish !== null) {
      out.buf[out.pos++] = (5 << 3) | 0;
      out.buf[out.pos++] = f.finish;
    }
    if (f.error !== null) out.string((6 << 3) | 2, f.error, f.errorBytes);
    if (f.preempted !== null) {
      out.buf[out.pos++] = (8 << 3) | 0;
      out.buf[out.pos++] = f.preempted ? 1 : 0;
    }
  }
  if (out.pos !== out.buf.length) throw new Error(`tokens-wire: wrote ${out.pos} bytes of ${out.buf.length}`);
  return out.buf;
}
