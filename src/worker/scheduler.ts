// Continuous batching for one replica, run by its driver (the shape of vLLM's scheduler: plan a
// step, then apply its output). Requests join and leave at every step: each step carries the
// decodes of running sequences and prefill chunks of newly admitted ones (long prompts are cut into
// chunks so one prefill cannot stall everyone's decode). A request is admitted only when the KV
// cache can hold its whole budget (prompt + max tokens), reserved up front, and the batch has a
// seat (--max-seqs); its blocks are freed when it has finished or been cancelled. Each sequence has
// one status (protocol/lifecycle.ts).
//
// Priority: the queue is ordered by priority (lower first), then arrival. When the head of the
// queue cannot be admitted, running sequences of a less urgent class (a higher class rank) are
// preempted, least urgent and latest first, as many as it takes (none when even all of them would
// not make room): each leaves the batch, its blocks are freed once no planned step uses them, and
// it waits in the queue to resume by recomputing its prompt and every token it already produced
// (vLLM's recompute preemption). Sampling is a function of (seed, position), so the tokens it
// produces after resuming are the ones it would have produced unpreempted; a step result that
// arrives for it after it was preempted is dropped (the recompute produces it again), so its
// stream pauses and never repeats or skips a token. Within a step, each class's decodes and then
// its prefill chunks come before the next class's.
//
// Exclusive prefill (a class's exclusive_prefill, deployment file): the step that carries the first
// prompt chunk of such a class's request carries only the work of that class and more urgent ones;
// less urgent sequences sit that one step out (not preempted: they keep their blocks and their next
// input token, and join the step after), so the first token costs a step of the urgent work alone
// instead of a step of the whole batch. One such step per request at most (its first chunk; a
// resume after preemption gets none), and at most EXCLUSIVE_MAX of any EXCLUSIVE_WINDOW consecutive
// steps: past that, a first chunk rides a normal step, so a flood of such requests costs the other
// classes at most that share of the steps. Such a request does not wait for a seat that a step in
// flight is about to free either (a sequence sampling its last token): when only a seat is missing
// it preempts for one at once. Under run-ahead planning a freed seat reaches the queue only once
// the step after it has started, so waiting for it costs the request one or two whole steps of the
// batch, and the class asked for its first token first.
//
// Stream interval (a class's stream_interval_ms, sent with each Submit): the client of such a class
// gets its tokens at most once an interval, so its sequence's tokens are reported that way too:
// settle() holds them (token ids, text and logprobs joined into one update) and reports them once
// `intervalMs` has passed since the sequence's last report, with its first tokens, its last (the
// update that ends it) and before a preemption notice at once. A cancel drops what is held; a lost
// replica loses it as it loses the steps in flight (the replay recomputes from what the client got).
// The coordinator then handles one update an interval for such a stream instead of one a token.
import { KvGroups } from '../engine/block-allocator.js';
import type { BlockAllocator, KvGroupsOptions, SeqTables } from '../engine/block-allocator.js';
import type { TokenizerLike } from '../engine/generate.js';
import { stepSampling, tokenLogprobs } from '../engine/step-sampling.js';
import type { StepSampling } from '../engine/step-sampling.js';
import { StopChecker } from '../engine/stop-checker.js';
import type { ReplayedText } from '../model/tokenizer-pool.js';
import type { StepLogprobs } from '../native/addon.js';
import type { TokenLogprobs } from '../protocol/api.js';
import type { ReplicaLoad, Submit, TokenUpdate } from '../protocol/control.js';
import { FinishReason, RequestStatus, isFinished, transition } from '../protocol/lifecycle.js';
import { samplingFromWire } from '../protocol/sampling.js';
import type { SamplingParams } from '../protocol/sampling.js';
import type { StepSeq } from '../native/addon.js';
import { requestTrace } from '../protocol/request-trace.js';

const { QUEUED, RUNNING, PREEMPTED, FINISHED, CANCELLED } = RequestStatus;

/**
 * One request in the replica: queued (waiting for KV blocks or a seat) → running → finished or
 * cancelled, with running → preempted → running when a more urgent class takes its place for a while.
 * A sequence is finished as soon as its end is certain: at apply() when its token is EOS or its
 * last allowed one, at settle() when the text shows a stop string. It leaves the scheduler (its
 * KV blocks freed) once it has ended and no planned step uses it any more.
 */
interface Seq {
  id: string;
  status: RequestStatus;
  params: SamplingParams;
  /** Queue order: lower first; then `order` (arrival). */
  priority: number;
  /** Its class's rank (0: the most urgent): it may preempt running sequences of a higher rank. */
  classRank: number;
  /** Its class has exclusive prefill and its first prompt chunk has not been planned yet. */
  exclusive: boolean;
  order: number;
  /** The prompt and every token produced so far (replayed ones included): what a resume recomputes. */
  prompt: number[];
  out: number[];
  /** Its sampling parameters as each step passes them to the engine (built once). */
  step: StepSampling;
  stop: StopChecker;
  budget: number;
  /** Tokens already in the KV cache. */
  pos: number;
  /** Tokens still to feed: the prompt (plus replayed output) first, then each sampled token. */
  feed: number[];
  /** Planned steps not yet applied (2 when the next step was planned while one runs). */
  inFlight: number;
  /** Its KV block tables, fixed at admission (the whole budget is reserved then): built once, not per step. */
  tables?: SeqTables;
  /** Traced (NODESPEED_REQUEST_TRACE): the timeline events it has had ('planned', 'sampled', 'sent' are traced once). */
  traced?: Set<string>;
  /** Its class's stream interval (ms; 0: every settle reports its tokens). */
  intervalMs: number;
  /** When its tokens were last reported (settle's clock; -Infinity: never). */
  reportedAt: number;
  /** Tokens settled and not reported yet (interval > 0): one update, owned here. */
  held?: TokenUpdate;
}

/** A step's sampled tokens applied to the sequences, not yet detokenized and reported (settle). */
export type AppliedStep = { seq: Seq; token: number; logprobs?: TokenLogprobs }[];

export interface PlannedStep {
  seqs: StepSeq[];
  members: { seq: Seq; n: number; sample: boolean }[];
  nSample: number;
  /**
   * Run-ahead steps (nextAhead): per seq, the index in the previous step's sampled tokens that is
   * its input token (every rank fills it from its own result), or -1 when `tokens` is complete.
   */
  tokenFrom?: Int32Array;
  /** Exclusive prefill: the sequences whose first chunk this step carries (owed their exclusive step again if it is withdrawn). */
  firsts: Seq[];
  /** It left less urgent classes' sequences out for such a first chunk. */
  exclusive: boolean;
}

export class QueueFullError extends Error {}

/** Queue and step order: priority, then arrival. */
function before(a: Seq, b: Seq): number {
  return a.priority - b.priority || a.order - b.order;
}

/** A sequence to plan: `skip` feed tokens are taken by the step still running, `left` remain for this one. */
interface Pick { seq: Seq; skip: number; left: number; from: number }

/** Step order: by class, and within a class its decodes (one token left) first, then its prefill chunks; then priority and arrival. */
function ordered(picks: Pick[]): Pick[] {
  return picks.sort((a, b) => a.seq.classRank - b.seq.classRank || Number(a.left > 1) - Number(b.left > 1) || before(a.seq, b.seq));
}

const RECENT_STEPS = 256;

/** Slot k of `ones` holding `token`, as a one-element view (a chained decode's 0 is filled in by the engine). */
function one(ones: Int32Array, k: number, token: number): Int32Array {
  ones[k] = token;
  return ones.subarray(k, k + 1);
}

/** A token's ids, text and logprobs joined onto the held update `held` (in place: settle() made it and owns it), which it returns. */
function hold(held: TokenUpdate, ids: number[], text: string, logprobs: TokenLogprobs | undefined, finishReason: FinishReason): TokenUpdate {
  for (const t of ids) held.tokenIds.push(t);
  held.text += text;
  if (logprobs) held.logprobs.push(logprobs);
  held.finishReason = finishReason;
  return held;
}

/** Removes the first n elements in place (splice would return them in a new array). */
function dropFront(a: number[], n: number): void {
  a.copyWithin(0, n);
  a.length -= n;
}

/**
 * At most EXCLUSIVE_MAX of any EXCLUSIVE_WINDOW consecutive steps leave less urgent classes out:
 * they keep at least 3/4 of the steps under any flood of exclusive-prefill requests, while a
 * realtime stream (one arrival per tens of steps) gets every one of its first chunks alone.
 */
const EXCLUSIVE_WINDOW = 16;
const EXCLUSIVE_MAX = 4;

export class Scheduler {
  private readonly alloc: KvGroups;
  private readonly waiting: Seq[] = [];
  private readonly running: Seq[] = [];
  private readonly byId = new Map<string, Seq>();
  steps = 0;
  generated = 0;
  maxStepBatch = 0;
  /** Micro-batches planned and not completed yet, and the most there ever were. */
  inFlight = 0;
  maxInFlight = 0;
  /** Sequences taken out of the batch for a more urgent class, since start. */
  preemptions = 0;
  private readonly recent: number[] = [];
  /** The step numbers (`steps` once planned) of the recent exclusive steps, oldest first. */
  private readonly exclusiveSteps: number[] = [];
  /** Steps that left less urgent classes out, since start. */
  exclusiveCount = 0;
  private arrivals = 0;
  /** `preempted` updates for the coordinator, sent with the next settle(). */
  private notices: TokenUpdate[] = [];
  private readonly trace = requestTrace('worker');

  /**
   * `window`: the KV groups' window and the windowed layers' own pool, as the engine keeps them (Engine.kvGroups).
   * `maxSeqs`: most sequences in the batch (running); 0 or absent: no limit but the KV cache.
   */
  constructor(kvBlocks: number, kvBlockSize: number, private readonly tokenizer: TokenizerLike,
    private readonly maxBatchTokens: number, private readonly maxQueue: number, private readonly contextLength: number,
    window: Omit<KvGroupsOptions, 'blocks' | 'blockSize'> = {}, maxSeqs = 0) {
    this.alloc = new KvGroups({ blocks: kvBlocks, blockSize: kvBlockSize, ...window });
    this.maxSeqs = maxSeqs > 0 ? maxSeqs : Number.MAX_SAFE_INTEGER;
  }

  private readonly maxSeqs: number;

  get idle(): boolean {
    return this.waiting.length === 0 && this.running.length === 0;
  }

  /**
   * Queues a request; returns an error update when it can never run. A replay (the tokens the
   * client already has come back in generatedIds) takes its stop checker's state from `replayed`,
   * rebuilt off the event loop by a tokenizer thread; without it the tokens are pushed here.
   */
  submit(sub: Submit, replayed?: ReplayedText): TokenUpdate | null {
    const err = (error: string): TokenUpdate => ({ requestId: sub.requestId, tokenIds: [], text: '', index: 0,
      finishReason: FinishReason.FINISH_REASON_UNSPECIFIED, error, preempted: false, logprobs: [] });
    if (this.byId.has(sub.requestId)) return null; // duplicate delivery
    if (!sub.params) return err('no sampling parameters');
    // Validated where the request entered (the API); the seed comes as decimal text.
    const params = samplingFromWire(sub.params);
    if (this.waiting.length >= this.maxQueue) return err(`replica queue full (${this.maxQueue} waiting)`);
    const budget = Math.min(this.contextLength, sub.promptIds.length + params.maxTokens);
    const longest = Math.min(this.maxBatchTokens, sub.promptIds.length + sub.generatedIds.length);
    const never = this.alloc.neverFits(budget, longest, "the replica's cache");
    if (never) return err(never);
    const opts = { eosTokenIds: this.tokenizer.eosTokenIds, stopTokenIds: params.stopTokenIds, stop: params.stop, maxTokens: params.maxTokens,
      ignoreEos: params.ignoreEos, decode: (ids: number[]) => this.tokenizer.decode(ids), keepText: false };
    // Replay: the tokens the client already has go back into the cache and the stop checker.
    let stop: StopChecker;
    if (replayed) {
      stop = StopChecker.restore(opts, sub.generatedIds, replayed.text, replayed.decoder);
    } else {
      stop = new StopChecker(opts);
      for (const t of sub.generatedIds) stop.push(t);
    }
    const seq: Seq = { id: sub.requestId, status: QUEUED, params, priority: sub.priority ?? 0, classRank: sub.classRank ?? 0,
      exclusive: sub.exclusivePrefill ?? false, order: this.arrivals++, prompt: [...sub.promptIds], out: [...sub.generatedIds],
      step: stepSampling(params, sub.promptIds.length), stop, budget, pos: 0, feed: [...sub.promptIds, ...sub.generatedIds], inFlight: 0,
      intervalMs: sub.streamIntervalMs ?? 0, reportedAt: -Infinity };
    this.byId.set(seq.id, seq);
    this.enqueue(seq);
    if (this.trace?.wants(seq.classRank, seq.id)) {
      seq.traced = new Set();
      this.trace.event(seq.id, 'recv', { waiting: this.waiting.length, running: this.running.length });
    }
    return null;
  }

  /** Into the queue at its place (priority, then arrival). */
  private enqueue(seq: Seq): void {
    let i = this.waiting.length;
    while (i > 0 && before(seq, this.waiting[i - 1]!) < 0) i--;
    this.waiting.splice(i, 0, seq);
  }

  /** The client went away: no more updates; its blocks are freed once no planned step uses them. */
  cancel(id: string): void {
    const seq = this.byId.get(id);
    if (!seq || isFinished(seq.status)) return;  // unknown, or ended already (it leaves when its steps complete)
    seq.status = transition(seq.status, CANCELLED);
    if (seq.inFlight === 0) this.drop(seq);
  }

  private drop(seq: Seq): void {
    if (this.byId.get(seq.id) !== seq) return;  // already dropped
    this.alloc.free(seq.id);
    this.byId.delete(seq.id);
    const w = this.waiting.indexOf(seq);
    if (w >= 0) this.waiting.splice(w, 1);
    const r = this.running.indexOf(seq);
    if (r >= 0) this.running.splice(r, 1);
  }

  /** The most tokens a step carries for `seq`: at most maxBatchTokens of its feed (prefill chunks), then single tokens. */
  private longest(seq: Seq): number {
    return Math.min(this.maxBatchTokens, seq.feed.length);
  }

  /** The KV groups' pools: the global layers', then the windowed layers' own when the model has one. */
  private pools(): BlockAllocator[] {
    return this.alloc.windowed ? [this.alloc.main, this.alloc.windowed] : [this.alloc.main];
  }

  /** Blocks `seq` holds once admitted, per pool (with a sliding window, the ring that is enough). */
  private blocksOf(seq: Seq): number[] {
    return this.pools().map((p) => p.blocksNeeded(seq.budget, this.longest(seq)));
  }

  private fits(seq: Seq): boolean {
    return this.running.length < this.maxSeqs && this.alloc.canAllocate(seq.id, seq.budget, this.longest(seq));
  }

  /** Admits the queue's head while it fits, preempting less urgent classes for it when that makes room. */
  private admit(): void {
    while (this.waiting.length) {
      const seq = this.waiting[0]!;
      // A preempted sequence still in a planned step holds its blocks until that step completes.
      if (seq.inFlight > 0) return;
      if (!this.fits(seq) && !(this.preemptFor(seq) && this.fits(seq))) return;
      this.waiting.shift();
      seq.tables = this.alloc.allocate(seq.id, seq.budget, this.longest(seq));
      seq.status = transition(seq.status, RUNNING);
      this.running.push(seq);
      if (seq.traced) this.trace?.event(seq.id, 'admitted', { waiting: this.waiting.length, running: this.running.length, preemptions: this.preemptions });
    }
  }

  /** A traced sequence's first event of this kind. */
  private once(seq: Seq, ev: string, details?: Record<string, unknown>): void {
    if (!seq.traced || seq.traced.has(ev)) return;
    seq.traced.add(ev);
    this.trace?.event(seq.id, ev, details);
  }

  /** Blocks preempted sequences still hold while a planned step uses them (free once it completes), per pool. */
  private releasing(): number[] {
    const pools = this.pools();
    const n = pools.map(() => 0);
    for (const s of this.waiting) if (s.status === PREEMPTED && s.inFlight > 0) pools.forEach((p, i) => { n[i]! += p.held(s.id); });
    return n;
  }

  /**
   * Preempts running sequences of a less urgent class than `head` (the least urgent, then the
   * latest first) until there is a seat and enough blocks for it, counting the seats and blocks
   * that steps in flight are about to free (preempted or ending sequences). Preempts nothing when
   * even all of them would not do. True when it preempted any.
   */
  private preemptFor(head: Seq): boolean {
    const pools = this.pools();
    const need = this.blocksOf(head);
    const releasing = this.releasing();
    const blocks = pools.map((p, i) => p.freeBlocks + releasing[i]!);
    let seats = this.maxSeqs - this.running.length;
    const victims = () => this.running.filter((s) => s.status === RUNNING && s.classRank > head.classRank)
      .sort((a, b) => b.classRank - a.classRank || -before(a, b));
    // Ended or cancelled, or sampling its last allowed token in a step in flight: leaving within a step.
    const ending = (s: Seq) => s.status !== RUNNING || (s.inFlight > 0 && s.out.length + s.inFlight >= s.params.maxTokens);
    // A head owed an exclusive prefill that lacks only a seat takes one now (the header's exclusive
    // prefill): a victim's seat frees at once, its blocks only once no step in flight uses it, so
    // this is for a batch whose seats, not its blocks, are full.
    if (head.exclusive && seats < 1 && pools.every((p, i) => p.freeBlocks >= need[i]!)) {
      // Not one that is ending anyway: its last token would be dropped and recomputed.
      const v = victims().find((x) => !ending(x));
      if (!v) return false;
      this.preempt(v);
      return true;
    }
    // Sequences whose end is certain give back their seat and blocks within a step: ended or
    // cancelled ones (they leave once settled or once their planned steps complete) and those
    // sampling their last allowed token in a step in flight (`out` counts what apply() took, which
    // settle() may not have reported yet). Waiting that long costs the head a step; preempting
    // would cost a victim its recompute.
    for (const s of this.running) {
      if (!ending(s)) continue;
      seats++;
      pools.forEach((p, i) => { blocks[i]! += p.held(s.id); });
    }
    const room = () => seats >= 1 && blocks.every((b, i) => b >= need[i]!);
    if (room()) return false;  // room is coming: steps holding ending or preempted sequences are completing
    const chosen: Seq[] = [];
    for (const v of victims()) {
      if (room()) break;
      chosen.push(v);
      pools.forEach((p, i) => { blocks[i]! += p.held(v.id); });
      seats++;
    }
    if (!room()) return false;
    for (const v of chosen) this.preempt(v);
    return chosen.length > 0;
  }

  /** running → preempted: out of the batch, back in the queue to resume by recomputing prompt + output. */
  private preempt(seq: Seq): void {
    seq.status = transition(seq.status, PREEMPTED);
    this.running.splice(this.running.indexOf(seq), 1);
    seq.pos = 0;
    seq.feed = [...seq.prompt, ...seq.out];
    seq.tables = undefined;
    if (seq.inFlight === 0) this.alloc.free(seq.id);
    this.enqueue(seq);
    this.preemptions++;
    this.notices.push({ requestId: seq.id, tokenIds: [], text: '', index: seq.stop.tokens.length,
      finishReason: FinishReason.FINISH_REASON_UNSPECIFIED, error: '', preempted: true, logprobs: [] });
  }

  /**
   * The next micro-batch: decodes first (one token each), then prefill chunks up to the token
   * budget. `maxSeqs` splits the running set across the pipeline's micro-batches.
   */
  next(microBatches: number): PlannedStep | null {
    this.admit();
    const ready = this.ready();
    if (ready.length === 0) return null;
    const maxSeqs = Math.max(1, Math.ceil(this.running.length / microBatches));
    const picks: Pick[] = ready.map((seq) => ({ seq, skip: 0, left: seq.feed.length, from: -1 }));
    return this.plan(ordered(picks), maxSeqs);
  }

  /**
   * Run-ahead planning (pp = 1 with TP followers): the step after `cur`, planned while `cur`
   * runs so that its metadata reaches the other ranks before they need it. cur's sequences go on
   * as if none ended: a sampling member decodes cur's sampled token (`tokenFrom`, which every
   * rank fills in from its own result), a prefill chunk continues with the next prompt tokens.
   * One that cur's token ends (EOS, a stop string) runs once more and that result is dropped (it
   * is finished by then); its last allowed token (max tokens) is known now and ends it.
   * New sequences join after the continuing ones, as in next().
   */
  nextAhead(cur: PlannedStep): PlannedStep | null {
    this.admit();
    const decodes: Pick[] = [];
    const prefills: Pick[] = [];
    let j = 0;
    for (const m of cur.members) {
      const from = m.sample ? j++ : -1;
      const s = m.seq;
      if (s.status !== RUNNING) continue;
      if (m.sample) {
        if (s.stop.tokens.length + 1 < s.params.maxTokens) decodes.push({ seq: s, skip: m.n, left: 1, from });
      } else {
        prefills.push({ seq: s, skip: m.n, left: s.feed.length - m.n, from: -1 });
      }
    }
    const ready = this.ready();
    decodes.push(...ready.filter((s) => s.feed.length === 1).map((seq) => ({ seq, skip: 0, left: 1, from: -1 })));
    prefills.push(...ready.filter((s) => s.feed.length > 1).map((seq) => ({ seq, skip: 0, left: seq.feed.length, from: -1 })));
    if (decodes.length + prefills.length === 0) return null;
    return this.plan(ordered([...decodes, ...prefills]), Number.MAX_SAFE_INTEGER);
  }

  /** Running sequences no planned step holds. */
  private ready(): Seq[] {
    return this.running.filter((s) => s.status === RUNNING && s.inFlight === 0);
  }

  /**
   * Exclusive prefill: the class rank the step is cut to (its sequences of higher ranks left out),
   * or undefined for a normal step. Cut when a sequence owed an exclusive step (its class's, not yet
   * planned) would get its first chunk into the cut step, the cut leaves something out, and the
   * recent steps have room for one more exclusive step. With several such sequences, the most
   * urgent one's class decides (the others of that class ride along; a less urgent one gets its own
   * step later).
   */
  private cutRank(picks: Pick[], maxSeqs: number): number | undefined {
    let rank = Infinity;
    for (const p of picks) if (p.seq.exclusive && p.seq.classRank < rank) rank = p.seq.classRank;
    if (rank === Infinity || !picks.some((p) => p.seq.classRank > rank)) return undefined;
    while (this.exclusiveSteps.length && this.exclusiveSteps[0]! <= this.steps + 1 - EXCLUSIVE_WINDOW) this.exclusiveSteps.shift();
    if (this.exclusiveSteps.length >= EXCLUSIVE_MAX) return undefined;
    // Only when the chunk gets in: the picks before it (more urgent work) may fill the step.
    let budget = this.maxBatchTokens;
    let seats = maxSeqs;
    for (const p of picks) {
      if (p.seq.classRank > rank) continue;
      if (seats <= 0 || budget <= 0) return undefined;
      if (p.seq.exclusive && p.seq.classRank === rank) return rank;
      budget -= p.left;
      seats--;
    }
    return undefined;
  }

  /**
   * Takes picks in order up to the token budget and `maxSeqs`; marks them in flight. A sequence
   * left out of an exclusive step has no planned step: the next plan takes its input from its feed
   * (`from` -1), never from this step's sampled tokens.
   */
  private plan(picks: Pick[], maxSeqs: number): PlannedStep {
    const cut = this.cutRank(picks, maxSeqs);
    if (cut !== undefined) picks = picks.filter((p) => p.seq.classRank <= cut);
    const members: PlannedStep['members'] = [];
    const seqs: StepSeq[] = [];
    const from: number[] = [];
    const firsts: Seq[] = [];
    let budget = this.maxBatchTokens;
    // The one-token inputs (decodes) are views of one array a step: a typed array of their own each
    // was the driver's largest allocation per sampled token (an ArrayBuffer and its store a sequence).
    const ones = new Int32Array(Math.min(picks.length, maxSeqs));
    let nOnes = 0;
    for (const { seq, skip, left, from: f } of picks) {
      if (members.length >= maxSeqs || budget <= 0) break;
      const n = Math.min(left, budget);
      budget -= n;
      const sample = n === left;
      members.push({ seq, n, sample });
      seq.inFlight++;
      if (seq.exclusive) {
        seq.exclusive = false;
        firsts.push(seq);
      }
      if (seq.traced) this.once(seq, 'planned', { step: this.steps + 1, n, ...(cut !== undefined ? { exclusive: true } : {}) });
      seqs.push({
        tokens: n === 1 ? one(ones, nOnes++, f >= 0 ? 0 : seq.feed[skip]!) : Int32Array.from(seq.feed.slice(skip, skip + n)),
        pos: seq.pos + skip, ...seq.tables!, sample, ...seq.step,
      });
      from.push(f);
    }
    this.steps++;
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    this.maxStepBatch = Math.max(this.maxStepBatch, seqs.length);
    this.recent.push(seqs.length);
    if (this.recent.length > RECENT_STEPS) this.recent.shift();
    if (cut !== undefined) {
      this.exclusiveSteps.push(this.steps);
      this.exclusiveCount++;
    }
    const step: PlannedStep = { seqs, members, nSample: members.filter((m) => m.sample).length, firsts, exclusive: cut !== undefined };
    if (from.some((f) => f >= 0)) step.tokenFrom = Int32Array.from(from);
    return step;
  }

  /**
   * Whether a request of a more urgent class than `step`'s least urgent member waits to start: a
   * step planned ahead and not launched yet (tp 1, where no other rank has its frame) is then better
   * planned again, so that request's prefill is in it instead of in the step after.
   */
  urgentWaiting(step: PlannedStep): boolean {
    if (this.waiting.length === 0) return false;  // the common case, asked after every step
    const worst = this.leastUrgent(step);
    return this.waiting.some((s) => s.classRank < worst && s.inFlight === 0 && s.status === QUEUED);
  }

  /** The class rank of the step's least urgent member (a larger rank is less urgent). */
  leastUrgent(step: PlannedStep): number {
    let worst = -Infinity;
    for (const m of step.members) if (m.seq.classRank > worst) worst = m.seq.classRank;
    return worst;
  }

  /** Takes back a planned step that was never launched: its sequences are free to be planned again. */
  unplan(step: PlannedStep): void {
    for (const m of step.members) m.seq.inFlight--;
    // The sequences whose first chunk it carried are owed their exclusive step again; the step it counted is gone.
    for (const seq of step.firsts) seq.exclusive = true;
    if (step.exclusive) {
      this.exclusiveSteps.pop();
      this.exclusiveCount--;
    }
    this.steps--;
    this.inFlight--;
    this.recent.pop();
  }

  /** Applies a finished step's sampled tokens (and logprobs); returns the updates for the coordinator. */
  complete(step: PlannedStep, sampled: Int32Array, logprobs?: StepLogprobs): TokenUpdate[] {
    return this.settle(this.apply(step, sampled, logprobs));
  }

  /**
   * The cheap half of complete(): positions advance and each sampled token becomes its sequence's
   * next input, so the following step can be planned and launched at once; a token that ends its
   * sequence for certain (EOS, max tokens) finishes it now, which keeps it out of later steps.
   * settle() does the detokenizing and reporting, while that step runs; it always comes before the
   * next apply().
   */
  apply(step: PlannedStep, sampled: Int32Array, logprobs?: StepLogprobs): AppliedStep {
    const applied: AppliedStep = [];
    this.inFlight--;
    let j = 0;
    for (const { seq, n, sample } of step.members) {
      seq.inFlight--;
      const token = sample ? sampled[j++]! : -1;
      if (seq.status !== RUNNING) {
        // Cancelled, finished (and reported) or preempted while this step ran: its result is not
        // used (a preempted sequence recomputes it when it resumes). Once no planned step uses its
        // blocks they are freed: with the sequence, or (preempted) the sequence stays queued.
        if (seq.inFlight === 0) {
          if (seq.status === PREEMPTED) this.alloc.free(seq.id);
          else this.drop(seq);
        }
        continue;
      }
      seq.pos += n;
      if (!sample) {
        dropFront(seq.feed, n);
        continue;
      }
      // The sampled token is the next input. When the step took the whole feed (a decode, a last
      // chunk) it takes the first slot: emptied, the array would give up its store and push allocate one.
      if (n === seq.feed.length) {
        seq.feed[0] = token;
        seq.feed.length = 1;
      } else {
        dropFront(seq.feed, n);
        seq.feed.push(token);
      }
      seq.out.push(token);
      if (seq.traced) this.once(seq, 'sampled');
      if (seq.stop.endsWith(token)) seq.status = transition(seq.status, FINISHED);
      const k = seq.params.logprobs;
      applied.push(k >= 0 && logprobs ? { seq, token, logprobs: tokenLogprobs(logprobs, j - 1, k) } : { seq, token });
    }
    return applied;
  }

  /**
   * Detokenizes applied tokens, checks stop strings; returns the updates for the coordinator, then
   * a `preempted` notice for each sequence preempted since the last settle (after its last tokens).
   * A sequence with a stream interval has its update held until the interval since its last report
   * has passed (`now`: ms, performance.now()'s clock), unless it is its first or its last.
   */
  settle(applied: AppliedStep, now = performance.now()): TokenUpdate[] {
    const updates: TokenUpdate[] = [];
    for (const { seq, token, logprobs } of applied) {
      if (seq.status === CANCELLED || this.byId.get(seq.id) !== seq) continue;  // cancelled meanwhile: no more updates
      const before = seq.stop.tokens.length;
      const upd = seq.stop.push(token);
      const fresh = seq.stop.tokens.slice(before);
      this.generated += fresh.length;
      if (seq.traced && fresh.length) this.once(seq, 'sent');
      // EOS and stop token ids end the sequence without joining its output, nor do their logprobs.
      const finishReason = upd.finishReason ?? FinishReason.FINISH_REASON_UNSPECIFIED;
      const lp = logprobs && fresh.length ? logprobs : undefined;
      const u = seq.held ? hold(seq.held, fresh, upd.delta, lp, finishReason)
        : { requestId: seq.id, tokenIds: fresh, text: upd.delta, index: before, finishReason, error: '', preempted: false, logprobs: lp ? [lp] : [] };
      // A paced sequence (seq.held is only ever set for one) reports once its interval has passed, and its last update at once.
      if (seq.intervalMs <= 0 || upd.done || now - seq.reportedAt >= seq.intervalMs) this.report(seq, u, updates, now);
      else seq.held = u;
      if (!upd.done) {
        // apply() finishes a sequence only on a token that StopChecker.endsWith() says ends it.
        if (seq.status === FINISHED) throw new Error(`scheduler: ${seq.id} was finished by a token its stop checker did not end it on`);
        continue;
      }
      // A stop string (a preempted sequence's last token may hold one too: it ends without resuming).
      if (seq.status === RUNNING || seq.status === PREEMPTED) seq.status = transition(seq.status, FINISHED);
      // Still planned into a step computing its next token: that result is dropped, and its blocks
      // are freed, when the step completes.
      if (seq.inFlight === 0) this.drop(seq);
    }
    if (this.notices.length) {
      // A notice for a sequence that ended meanwhile is not sent (one that resumed already still is).
      for (const n of this.notices) {
        const seq = this.byId.get(n.requestId);
        if (seq?.status !== PREEMPTED && seq?.status !== RUNNING) continue;
        if (seq.held) this.report(seq, seq.held, updates, now);  // its held tokens first: the notice's index follows them
        updates.push(n);
      }
      this.notices = [];
    }
    return updates;
  }

  /** Adds `u` (the sequence's update, held ones joined in) to the updates; nothing is held after it. */
  private report(seq: Seq, u: TokenUpdate, updates: TokenUpdate[], now: number): void {
    updates.push(u);
    seq.held = undefined;
    seq.reportedAt = now;
  }

  /** A sequence's status (undefined once it has left the scheduler). */
  status(id: string): RequestStatus | undefined {
    return this.byId.get(id)?.status;
  }

  load(): ReplicaLoad {
    return {
      running: this.running.length, queued: this.waiting.length, kvBlocksTotal: this.alloc.main.numBlocks,
      kvBlocksFree: this.alloc.main.freeBlocks, kvBlockSize: this.alloc.blockSize,
      kvWindowBlocksTotal: this.alloc.windowed?.numBlocks ?? 0, kvWindowBlocksFree: this.alloc.windowed?.freeBlocks ?? 0, steps: String(this.steps),
      generatedTokens: String(this.generated), recentStepBatch: [...this.recent], maxStepBatch: this.maxStepBatch,
      maxInFlight: this.maxInFlight, preemptions: this.preemptions, stepMsBase: 0, stepMsPerToken: 0,
    };
  }
}
