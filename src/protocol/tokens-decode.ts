// The coordinator's decoding of the messages a replica driver sends after every step: a
// WorkerMessage that is `tokens` (or a `batch` of them, as the worker's coalescing writer sends).
// Under a flood they are most of what the control plane carries, and the generic decoder builds
// each update twice (a protobufjs message, then its plain copy with every default). This reads
// them straight into the plain objects the generic decoder would give (LOADER_OPTIONS: defaults
// set, uint64 as decimal strings, enums by name, the oneof's `msg`). Anything else -- another
// member, logprobs, a field it does not know, a repeated oneof member, bytes it cannot parse --
// is left to the generic decoder (`undefined`), so what it returns is always what that one would.
import type { PackageDefinition } from '@grpc/proto-loader';

/** Enum number -> name, from the loaded definition (the generic decoder's table). */
export type EnumNames = ReadonlyMap<number, string>;

export function enumNames(def: PackageDefinition, name: string): EnumNames {
  const e = def[name] as { type?: { value?: { name: string; number: number }[] } } | undefined;
  const values = e?.type?.value;
  if (!values) throw new Error(`proto: enum ${name} not found`);
  return new Map(values.map((v) => [v.number, v.name]));
}

// Field numbers (proto/control.proto).
const WORKER_TOKENS = 6;
const WORKER_BATCH = 8;
const BATCH_MESSAGES = 1;
const TOKENS_EPOCH = 1;
const TOKENS_UPDATES = 2;

const VARINT = 0;
const LEN = 2;

/** Thrown inside the reader for anything the fast path leaves to the generic decoder. */
class Unhandled extends Error {}
const UNHANDLED = new Unhandled();

class Reader {
  pos: number;

  constructor(readonly buf: Buffer, start: number, readonly end: number) {
    this.pos = start;
  }

  /** A varint's low 32 bits, unsigned (protobufjs uint32). */
  uint32(): number {
    const b = this.buf;
    let v = 0;
    for (let shift = 0; shift < 70; shift += 7) {
      if (this.pos >= this.end) throw UNHANDLED;
      const x = b[this.pos++]!;
      if (shift < 32) v |= (x & 0x7f) << shift;
      if (x < 0x80) return v >>> 0;
    }
    throw UNHANDLED;
  }

  /** A uint64 varint as its decimal string. */
  uint64String(): string {
    const b = this.buf;
    let lo = 0;
    let hi = 0;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) throw UNHANDLED;
      const x = b[this.pos++]!;
      const bits = x & 0x7f;
      if (i < 4) lo |= bits << (7 * i);
      else if (i === 4) {
        lo |= (bits & 0x0f) << 28;
        hi |= bits >> 4;
      } else hi |= bits << (7 * i - 32);
      if (x < 0x80) {
        lo >>>= 0;
        hi >>>= 0;
        return hi < 0x200000 ? String(hi * 0x100000000 + lo) : ((BigInt(hi) << 32n) | BigInt(lo)).toString();
      }
    }
    throw UNHANDLED;
  }

  /** The end of a length-delimited field's bytes, which start at pos. */
  sub(): number {
    const len = this.uint32();
    const end = this.pos + len;
    if (end > this.end) throw UNHANDLED;
    return end;
  }

  string(): string {
    const end = this.sub();
    const s = this.buf.toString('utf8', this.pos, end);
    this.pos = end;
    return s;
  }
}

export interface TokenUpdateObject {
  requestId: string;
  tokenIds: number[];
  text: string;
  index: number;
  finishReason: string | number;
  error: string;
  logprobs: never[];
  preempted: boolean;
}

function tokenUpdate(r: Reader, end: number, finish: EnumNames): TokenUpdateObject {
  const u: TokenUpdateObject = { tokenIds: [], logprobs: [], requestId: '', text: '', index: 0, finishReason: finish.get(0)!, error: '', preempted: false };
  while (r.pos < end) {
    const tag = r.uint32();
    const wire = tag & 7;
    switch (tag >>> 3) {
      case 1:
        if (wire !== LEN) throw UNHANDLED;
        u.requestId = r.string();
        break;
      case 2:
        if (wire === LEN) {
          const e = r.sub();
          // One token a step is the usual report: an array of exactly one (a push onto an empty
          // array reserves room for 17).
          let last = r.pos;
          while (last < e && r.buf[last]! >= 0x80) last++;
          if (!u.tokenIds.length && last === e - 1) u.tokenIds = [r.uint32()];
          else while (r.pos < e) u.tokenIds.push(r.uint32());
          if (r.pos !== e) throw UNHANDLED;
        } else if (wire === VARINT) u.tokenIds.push(r.uint32());
        else throw UNHANDLED;
        break;
      case 3:
        if (wire !== LEN) throw UNHANDLED;
        u.text = r.string();
        break;
      case 4:
        if (wire !== VARINT) throw UNHANDLED;
        u.index = r.uint32();
        break;
      case 5: {
        if (wire !== VARINT) throw UNHANDLED;
        const n = r.uint32() | 0;
        u.finishReason = finish.get(n) ?? n;
        break;
      }
      case 6:
        if (wire !== LEN) throw UNHANDLED;
        u.error = r.string();
        break;
      case 8:
        if (wire !== VARINT) throw UNHANDLED;
        u.preempted = r.uint32() !== 0;
        break;
      default:  // logprobs (7) and fields this reader does not know
        throw UNHANDLED;
    }
  }
  if (r.pos !== end) throw UNHANDLED;
  return u;
}

function tokens(r: Reader, end: number, finish: EnumNames): { updates: TokenUpdateObject[]; epoch: string } {
  const t = { updates: [] as TokenUpdateObject[], epoch: '0' };
  while (r.pos < end) {
    const tag = r.uint32();
    const wire = tag & 7;
    const field = tag >>> 3;
    if (field === TOKENS_EPOCH && wire === VARINT) t.epoch = r.uint64String();
    else if (field === TOKENS_UPDATES && wire === LEN) {
      const e = r.sub();
      t.updates.push(tokenUpdate(r, e, finish));
    } else throw UNHANDLED;
  }
  if (r.pos !== end) throw UNHANDLED;
  return t;
}

/** One WorkerMessage that is exactly one `tokens` or one `batch` (of such messages). */
function workerMessage(r: Reader, end: number, finish: EnumNames): object {
  let out: object | undefined;
  while (r.pos < end) {
    const tag = r.uint32();
    const field = tag >>> 3;
    if ((tag & 7) !== LEN || out) throw UNHANDLED;
    const e = r.sub();
    if (field === WORKER_TOKENS) out = { tokens: tokens(r, e, finish), msg: 'tokens' };
    else if (field === WORKER_BATCH) {
      const messages: object[] = [];
      while (r.pos < e) {
        const t = r.uint32();
        if (t >>> 3 !== BATCH_MESSAGES || (t & 7) !== LEN) throw UNHANDLED;
        const me = r.sub();
        messages.push(workerMessage(r, me, finish));
      }
      out = { batch: { messages }, msg: 'batch' };
    } else throw UNHANDLED;
  }
  if (r.pos !== end || !out) throw UNHANDLED;
  return out;
}

/**
 * A WorkerMessage deserializer: token reports decoded here, every other message by `generic`
 * (the method's own deserializer), which also gives their errors for bytes that do not parse.
 */
export function tokensFirstDeserializer(generic: (b: Buffer) => unknown, finish: EnumNames): (b: Buffer) => unknown {
  return (buf: Buffer) => {
    // Only a message whose first field is tokens or batch is tried (a heartbeat, a join: at once to the generic one).
    const first = buf.length ? buf[0]! : 0;
    if (first !== ((WORKER_TOKENS << 3) | LEN) && first !== ((WORKER_BATCH << 3) | LEN)) return generic(buf);
    try {
      return workerMessage(new Reader(buf, 0, buf.length), buf.length, finish);
    } catch (err) {
      if (err === UNHANDLED) return generic(buf);
      throw err;
    }
  };
}
