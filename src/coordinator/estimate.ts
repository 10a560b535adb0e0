// The router's estimate of a request's time to first token on one replica, from what the
// coordinator knows: the requests it routed there and did not see finish (their priority, class,
// KV budget, tokens streamed and still to come), the replica's KV cache and batch limits, and its
// driver's measured step time (ms = base + per token x tokens in the step, from its heartbeat).
//
// It replays the replica's scheduler (worker/scheduler.ts) forward in time: requests that have
// streamed a token are in the batch; the others are admitted in priority order while the cache and
// the batch have room; requests of a less urgent class than the new one do not stand in its way
// (it would preempt them). While the new request cannot be admitted, the running request closest to
// its end finishes next (after its remaining tokens at one decode step each: an upper bound, since
// EOS may come first), frees its blocks and seat, and the queue moves on. Once admitted, its prompt
// is prefilled chunk by chunk in steps beside the batch's decodes, after the step under way.
export interface ReplicaModel {
  kvBlocks: number;
  blockSize: number;
  /** Most sequences in the batch (0: no limit). */
  maxSeqs: number;
  /** Most requests the driver keeps waiting for admission. */
  maxQueue: number;
  maxBatchTokens: number;
  stepMsBase: number;
  stepMsPerToken: number;
}

/** A request on the replica (or the one to place) as the estimate sees it. */
export interface Job {
  priority: number;
  classRank: number;
  /** Arrival order (earlier first among equal priorities). */
  order: number;
  /** KV budget: min(context, prompt + max tokens) tokens. */
  budgetTokens: number;
  /** Tokens to prefill when admitted: the prompt plus tokens already streamed (a replay). */
  prefillTokens: number;
  /** Tokens still to generate (at most). */
  remainingTokens: number;
  /** It streamed a token since it was routed here: it is in the batch. */
  started: boolean;
}

export interface Estimate {
  /** Estimated ms from now to its first token; Infinity when it can never be admitted here. */
  ttftMs: number;
  /** Admitted without waiting for another request to finish. */
  admitNow: boolean;
  /** Its whole budget fits the replica's cache at all. */
  fits: boolean;
  /** The driver's queue is full: it would refuse the request. */
  queueFull: boolean;
}

function blocks(m: ReplicaModel, tokens: number): number {
  return Math.ceil(tokens / Math.max(1, m.blockSize));
}

function stepMs(m: ReplicaModel, tokens: number): number {
  return m.stepMsBase + m.stepMsPerToken * tokens;
}

/** Prefill of `tokens` in chunks of --max-batch-tokens beside a batch of `batch` decodes. */
function prefillMs(m: ReplicaModel, tokens: number, batch: number): number {
  let ms = 0;
  const chunk = Math.max(1, m.maxBatchTokens);
  for (let left = tokens; left > 0; left -= chunk) ms += stepMs(m, batch + Math.min(chunk, left));
  return ms;
}

// estimateTtft runs for every replica a routing may use, each with hundreds of requests under a
// flood, for every arrival: the arrays it made per call (the streaming runs, the queue, the heap)
// were most of the bytes an arrival allocated. It runs to its end synchronously, so one set of
// them, kept between calls, serves every call.

/** Jobs an estimate gathered: slots 0..n-1 in use; cleared after each estimate, so no request stays referenced. */
class Jobs {
  items: Job[] = [];
  n = 0;

  push(j: Job): void {
    this.items[this.n++] = j;
  }

  clear(): void {
    for (let i = 0; i < this.n; i++) this.items[i] = undefined!;
    this.n = 0;
  }

  /** Slots 0..n-1 in `cmp` order (the array is cut to them first: the sort takes all of it). */
  sort(cmp: (a: Job, b: Job) => number): void {
    this.items.length = this.n;
    this.items.sort(cmp);
  }
}

/**
 * The batch of the replay, as a min-heap on each run's end (ms): the next to finish is taken in
 * O(log n) (a routing replays hundreds). A run is its end and the KV blocks it holds, kept in two
 * arrays side by side (no object a run).
 */
class Batch {
  private end = new Float64Array(1024);
  private blk = new Float64Array(1024);
  length = 0;
  /** The blocks of the run pop() took last. */
  poppedBlocks = 0;

  push(endMs: number, blocks: number): void {
    if (this.length === this.end.length) this.grow();
    const e = this.end;
    const k = this.blk;
    let i = this.length++;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (e[p]! <= endMs) break;
      e[i] = e[p]!;
      k[i] = k[p]!;
      i = p;
    }
    e[i] = endMs;
    k[i] = blocks;
  }

  /** Takes the run that ends first: its end (its blocks in poppedBlocks). */
  pop(): number {
    const e = this.end;
    const k = this.blk;
    const top = e[0]!;
    this.poppedBlocks = k[0]!;
    const n = --this.length;
    const lastEnd = e[n]!;
    const lastBlk = k[n]!;
    if (n) {
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= n) break;
        const c = l + 1 < n && e[l + 1]! < e[l]! ? l + 1 : l;
        if (e[c]! >= lastEnd) break;
        e[i] = e[c]!;
        k[i] = k[c]!;
        i = c;
      }
      e[i] = lastEnd;
      k[i] = lastBlk;
    }
    return top;
  }

  private grow(): void {
    const end = new Float64Array(2 * this.end.length);
    const blk = new Float64Array(2 * this.blk.length);
    end.set(this.end);
    blk.set(this.blk);
    this.end = end;
    this.blk = blk;
  }
}

const streaming = new Jobs();
const queue = new Jobs();
const running = new Batch();

const byOrder = (a: Job, b: Job): number => a.priority - b.priority || a.order - b.order;

/**
 * `q`'s time to first token on a replica running `onReplica` (q itself, if among them, is not
 * counted again): any iterable, so the router passes its live set as it is.
 */
export function estimateTtft(m: ReplicaModel, onReplica: Iterable<Job>, q: Job): Estimate {
  try {
    return replay(m, onReplica, q);
  } finally {
    streaming.clear();
    queue.clear();
    running.length = 0;
  }
}

function replay(m: ReplicaModel, onReplica: Iterable<Job>, q: Job): Estimate {
  const total = m.kvBlocks;
  const seats = m.maxSeqs > 0 ? m.maxSeqs : Number.MAX_SAFE_INTEGER;
  const need = blocks(m, q.budgetTokens);
  const fits = total <= 0 || need <= total;
  // One pass (a routing estimates every replica, each with hundreds of requests under a flood): the
  // batch, and the queue ahead of it. Those it would preempt do not count; among the rest, those
  // queued behind it do not either.
  let waitingAll = 0;
  let batch = 0;
  let sorted = true;
  for (const j of onReplica) {
    if (j === q) continue;
    if (j.started) batch++;
    else waitingAll++;
    if (j.classRank > q.classRank) continue;
    if (j.started) streaming.push(j);
    else if (byOrder(j, q) < 0) {
      if (sorted && queue.n && byOrder(queue.items[queue.n - 1]!, j) > 0) sorted = false;
      queue.push(j);
    }
  }
  // The store keeps them in routing order, which is queue order but for replays and priorities.
  if (!sorted) queue.sort(byOrder);
  const queueFull = waitingAll >= m.maxQueue;
  const decodeMs = stepMs(m, batch);
  if (!fits) return { ttftMs: Infinity, admitNow: false, fits, queueFull };
  if (total <= 0) return { ttftMs: decodeMs + prefillMs(m, q.prefillTokens, batch), admitNow: true, fits, queueFull };

  // The batch now: what streams, then the queue in order while it fits (stopping at the first that does not).
  let used = 0;
  for (let i = 0; i < streaming.n; i++) {
    const j = streaming.items[i]!;
    const b = blocks(m, j.budgetTokens);
    running.push(j.remainingTokens * decodeMs, b);
    used += b;
  }
  queue.push(q);
  const jobs = queue.items;
  let now = 0;
  let admitNow = true;
  let head = 0;
  for (;;) {
    while (head < queue.n && running.length < seats && used + blocks(m, jobs[head]!.budgetTokens) <= total) {
      const j = jobs[head++]!;
      const first = now + decodeMs + prefillMs(m, j.prefillTokens, running.length);
      if (j === q) return { ttftMs: first, admitNow, fits, queueFull };
      const b = blocks(m, j.budgetTokens);
      running.push(first + Math.max(0, j.remainingTokens - 1) * decodeMs, b);
      used += b;
    }
    if (!running.length) return { ttftMs: Infinity, admitNow: false, fits, queueFull };
    // The one closest to its end finishes and frees its blocks and seat.
    admitNow = false;
    now = Math.max(now, running.pop());
    used -= running.poppedBlocks;
  }
}
