// A gRPC stream writes one message at a time: grpc-js hands the next message to HTTP/2 only when
// the previous one's write has completed, which takes a turn of the event loop. Under load a
// process writes far more messages per turn than that (a request's submit behind hundreds of
// others, a step's tokens behind the steps before), so each waited in a FIFO as long as the
// whole backlog took to drain, one turn per message. The coalescing writer keeps one write in
// flight and gathers what is sent meanwhile; when that write completes, everything gathered goes
// out in one write (`pack`: one batch message, or several merged ones), in order. An idle stream
// writes each message at once, as before.
//
// A paced stream (pace(ms): a request class's stream interval) also waits between writes: what is
// sent within `ms` of the last write's start is gathered the same way and goes out `ms` after it,
// so a client that does not need every token at once (batch) costs the process one write per
// interval instead of one a token. The first write after pace() and the stream's end (whenIdle)
// do not wait.
export type WriteFn<M> = (m: M, done: (err?: Error | null) => void) => void;

export class CoalescingWriter<M> {
  /** A write in flight, or the gathered messages waiting for the interval (timer set). */
  private inFlight = false;
  private queued: M[] = [];
  private idle: (() => void)[] = [];
  private intervalMs = 0;
  private lastWriteAt = -Infinity;
  private timer: NodeJS.Timeout | undefined;
  /** whenIdle was called: the stream is ending, and nothing waits for the interval any more. */
  private ending = false;

  /**
   * `write`: one write to the stream, calling `done` when it has gone out. `pack`: the messages
   * gathered during a write (two or more), as the messages to write now, in order.
   */
  constructor(private readonly write: WriteFn<M>, private readonly pack: (ms: M[]) => M[]) {}

  /**
   * Runs `fn` once every message sent so far has been written (at once when none is pending), or
   * after `maxMs` when a write never completes (a stream that broke meanwhile): to end a stream
   * after its last messages. `maxMs` null: no limit, for a stream whose writes always complete or
   * fail (a socket's, however slowly its reader reads).
   */
  whenIdle(fn: () => void, maxMs: number | null = 2000): void {
    this.ending = true;
    if (this.timer) this.flushNow();
    if (!this.inFlight) return fn();
    let ran = false;
    const once = () => {
      if (ran) return;
      ran = true;
      clearTimeout(timer);
      fn();
    };
    const timer = maxMs === null ? undefined : setTimeout(once, maxMs);
    timer?.unref();
    this.idle.push(once);
  }

  /** Messages waiting for the write in flight or for the interval. */
  get backlog(): number {
    return this.queued.length;
  }

  /**
   * From now on, writes start at least `ms` apart (0: as soon as the previous one completed); the
   * next write does not wait for the interval, so a stream paced when its request is admitted
   * writes its first token at once.
   */
  pace(ms: number): void {
    this.intervalMs = ms;
    this.lastWriteAt = -Infinity;
  }

  send(m: M): void {
    if (this.inFlight) {
      this.queued.push(m);
      return;
    }
    const wait = this.wait();
    if (wait > 0) {
      this.queued.push(m);
      this.inFlight = true;
      this.arm(wait);
      return;
    }
    this.inFlight = true;
    this.lastWriteAt = this.intervalMs > 0 ? performance.now() : 0;
    try {
      this.write(m, this.done);
    } catch (err) {
      this.inFlight = false;  // the stream is closed: the next send throws again
      throw err;
    }
  }

  /** Milliseconds the next write must still wait for the interval (<= 0: none). */
  private wait(): number {
    if (this.intervalMs <= 0 || this.ending) return 0;
    return this.lastWriteAt + this.intervalMs - performance.now();
  }

  private arm(ms: number): void {
    this.timer = setTimeout(this.flushNow, ms);
    this.timer.unref();  // a stream left waiting never keeps the process alive
  }

  private readonly done = (err?: Error | null): void => {
    // A failed write: the stream is closing, and its own error/end handlers report that.
    if (err || !this.queued.length) {
      this.inFlight = false;
      if (err) this.queued = [];
      const idle = this.idle;
      this.idle = [];
      for (const fn of idle) fn();
      return;
    }
    const wait = this.wait();
    if (wait > 0) return this.arm(wait);
    this.flush();
  };

  /** The gathered messages, written now (in flight all along). */
  private flush(): void {
    const ms = this.queued.length === 1 ? this.queued : this.pack(this.queued);
    this.queued = [];
    if (this.intervalMs > 0) this.lastWriteAt = performance.now();
    for (let i = 0; i < ms.length - 1; i++) this.write(ms[i]!, ignore);
    this.write(ms[ms.length - 1]!, this.done);
  }

  /** The interval is over, or the stream ends: what waited for it goes out. */
  private readonly flushNow = (): void => {
    clearTimeout(this.timer);
    this.timer = undefined;
    try {
      this.flush();
    } catch (err) {
      this.done(err as Error);  // the stream closed meanwhile: as a failed write
    }
  };
}

function ignore(): void {}

/**
 * Messages gathered during a write, as fewer: each message joins the group of its key (a stream's
 * sequence) opened before it when `joins(that group's last, it)`, and else opens that key's group
 * anew; each group becomes one message (`merge`), where its first was. A key of null is a barrier
 * that stays in its place and that no group runs across. Messages of one key keep their order;
 * those of different keys (a request's n sequences, interleaved step by step) merge each apart.
 */
export function mergeByKey<M>(ms: M[], key: (m: M) => number | string | null, joins: (last: M, next: M) => boolean, merge: (group: M[]) => M): M[] {
  if (oneRun(ms, key, joins)) return [merge(ms)];
  const groups: M[][] = [];
  let open = new Map<number | string, M[]>();
  for (const m of ms) {
    const k = key(m);
    if (k === null) {
      groups.push([m]);
      open = new Map();
      continue;
    }
    const g = open.get(k);
    if (g && joins(g[g.length - 1]!, m)) {
      g.push(m);
      continue;
    }
    const fresh = [m];
    groups.push(fresh);
    open.set(k, fresh);
  }
  return groups.map((g) => (g.length === 1 ? g[0]! : merge(g)));
}

/**
 * Whether mergeByKey's messages form one group (one key, each joining the one before it): the
 * usual case (one sequence's tokens gathered over a write or an interval), merged without the
 * grouping's maps and arrays.
 */
function oneRun<M>(ms: M[], key: (m: M) => number | string | null, joins: (last: M, next: M) => boolean): boolean {
  if (ms.length < 2) return false;
  const k = key(ms[0]!);
  if (k === null) return false;
  for (let i = 1; i < ms.length; i++) if (key(ms[i]!) !== k || !joins(ms[i - 1]!, ms[i]!)) return false;
  return true;
}

/**
 * One sequence's consecutive updates as one: the last's fields (its finish reason), with the run's
 * token ids and text in order, and its logprobs when any update carries them. The gRPC Generate
 * stream, the worker's Tokens messages and the SSE stream merge their gathered updates with it.
 */
export function joinTokenRun<U extends { tokenIds?: number[] | null; text?: string | null; logprobs?: readonly unknown[] | null }>(run: U[]): U {
  const tokenIds: number[] = [];
  const texts: string[] = [];
  const logprobs: unknown[] = [];
  let withLogprobs = false;
  for (const u of run) {
    for (const t of u.tokenIds ?? []) tokenIds.push(t);
    texts.push(u.text ?? '');
    if (u.logprobs) {
      withLogprobs = true;
      for (const l of u.logprobs) logprobs.push(l);
    }
  }
  return { ...run[run.length - 1]!, tokenIds, text: texts.join(''), ...(withLogprobs ? { logprobs } : {}) } as U;
}

/** The most a batch of gathered messages may take on the wire, by upperBytes(): far below the control stream's message limit. */
export const BATCH_MAX_BYTES = 8 * 1024 * 1024;

/**
 * An upper bound of a plain message's protobuf size: every number as a 10-byte varint, every
 * string as 3 bytes a UTF-16 unit, bytes as they are, 5 bytes of tag and length per field.
 */
export function upperBytes(v: unknown): number {
  switch (typeof v) {
    case 'number': case 'bigint': return 11;
    case 'boolean': return 2;
    case 'string': return 5 + 3 * v.length;
    case 'object': {
      if (v === null) return 0;
      if (v instanceof Uint8Array) return 5 + v.byteLength;
      let n = 5;
      if (Array.isArray(v)) for (const x of v) n += upperBytes(x);
      else for (const k in v) n += upperBytes((v as Record<string, unknown>)[k]);
      return n;
    }
    default: return 0;
  }
}

/** Gathered messages as batch messages (`wrap`) of at most BATCH_MAX_BYTES each, in order. */
export function batches<M>(ms: M[], wrap: (messages: M[]) => M, maxBytes = BATCH_MAX_BYTES): M[] {
  const out: M[] = [];
  let cur: M[] = [];
  let bytes = 0;
  for (const m of ms) {
    const b = upperBytes(m);
    if (cur.length && bytes + b > maxBytes) {
      out.push(cur.length === 1 ? cur[0]! : wrap(cur));
      cur = [];
      bytes = 0;
    }
    cur.push(m);
    bytes += b;
  }
  if (cur.length) out.push(cur.length === 1 ? cur[0]! : wrap(cur));
  return out;
}
