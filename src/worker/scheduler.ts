// Continuous batching for one replica, run by its driver. Requests join and leave at every step:
// each step carries the decodes of running sequences and prefill chunks of newly admitted ones
// (long prompts are cut into chunks so one prefill cannot stall everyone's decode). A request is
// admitted only when the KV cache can hold its whole budget (prompt + max tokens), reserved up
// front, so nothing ever needs preempting; its blocks are freed on finish or cancel.
import { BlockAllocator } from '../engine/block-allocator.js';
import type { TokenizerLike } from '../engine/generate.js';
import { StopChecker } from '../engine/stop-checker.js';
import type { ReplicaLoadMsg, SubmitMsg, TokenUpdateMsg } from '../coordinator/control-messages.js';
import { FINISH_LENGTH, FINISH_STOP } from '../coordinator/control-messages.js';
import type { StepSeq } from '../native/addon.js';

interface Seq {
  id: string;
  sub: SubmitMsg;
  stop: StopChecker;
  budget: number;
  /** Tokens already in the KV cache. */
  pos: number;
  /** Tokens still to feed: the prompt (plus replayed output) first, then each sampled token. */
  feed: number[];
  /** Planned steps not yet applied (2 when run-ahead planned the next one while one runs). */
  inFlight: number;
  cancelled: boolean;
  /** Its last sampled token ends it (EOS, max tokens): not planned again while that token settles. */
  ending: boolean;
  /** Settled as finished (a stop string) while already planned into a later step: dropped silently then. */
  retired: boolean;
  /** Its KV block table and seed, fixed at admission (the whole budget is reserved then): built once, not per step. */
  table?: Int32Array;
  seed: bigint;
}

/** A step's sampled tokens applied to the sequences, not yet detokenized and reported (settle). */
export type AppliedStep = { seq: Seq; token: number }[];

export interface PlannedStep {
  seqs: StepSeq[];
  members: { seq: Seq; n: number; sample: boolean }[];
  nSample: number;
  /**
   * Run-ahead steps (nextAhead): per seq, the index in the previous step's sampled tokens that is
   * its input token (every rank fills it from its own result), or -1 when `tokens` is complete.
   */
  tokenFrom?: Int32Array;
}

export class QueueFullError extends Error {}

/** A sequence to plan: `skip` feed tokens are taken by the step still running, `left` remain for this one. */
interface Pick { seq: Seq; skip: number; left: number; from: number }

const RECENT_STEPS = 256;

export class Scheduler {
  private readonly alloc: BlockAllocator;
  private readonly waiting: Seq[] = [];
  private readonly running: Seq[] = [];
  private readonly byId = new Map<string, Seq>();
  steps = 0;
  generated = 0;
  maxStepBatch = 0;
  /** Micro-batches planned and not completed yet, and the most there ever were. */
  inFlight = 0;
  maxInFlight = 0;
  private readonly recent: number[] = [];

  constructor(kvBlocks: number, kvBlockSize: number, private readonly tokenizer: TokenizerLike,
    private readonly maxBatchTokens: number, private readonly maxQueue: number, private readonly contextLength: number,
    kvWindow = 0) {
    this.alloc = new BlockAllocator(kvBlocks, kvBlockSize, kvWindow);
  }

  get idle(): boolean {
    return this.waiting.length === 0 && this.running.length === 0;
  }

  /** Queues a request; returns an error update when it can never run. */
  submit(sub: SubmitMsg): TokenUpdateMsg | null {
    const err = (error: string): TokenUpdateMsg => ({ requestId: sub.requestId, tokenIds: [], text: '', index: 0, finishReason: 0, error });
    if (this.byId.has(sub.requestId)) return null; // duplicate delivery
    if (this.waiting.length >= this.maxQueue) return err(`replica queue full (${this.maxQueue} waiting)`);
    const budget = Math.min(this.contextLength, sub.promptIds.length + sub.maxTokens);
    const longest = Math.min(this.maxBatchTokens, sub.promptIds.length + sub.generatedIds.length);
    if (this.alloc.blocksNeeded(budget, longest) > this.alloc.numBlocks)
      return err(`needs ${this.alloc.blocksNeeded(budget, longest)} KV blocks, the replica's cache has ${this.alloc.numBlocks}`);
    const stop = new StopChecker({ eosTokenIds: this.tokenizer.eosTokenIds, stop: sub.stop, maxTokens: sub.maxTokens,
      ignoreEos: sub.ignoreEos, decode: (ids) => this.tokenizer.decode(ids) });
    // Replay: the tokens the client already has go back into the cache and the stop checker.
    for (const t of sub.generatedIds) stop.push(t);
    const seq: Seq = { id: sub.requestId, sub, stop, budget, pos: 0, feed: [...sub.promptIds, ...sub.generatedIds],
      inFlight: 0, cancelled: false, ending: false, retired: false, seed: BigInt(sub.seed) };  // validated by the coordinator (validate.ts)
    this.byId.set(seq.id, seq);
    this.waiting.push(seq);
    return null;
  }

  cancel(id: string): void {
    const seq = this.byId.get(id);
    if (!seq) return;
    seq.cancelled = true;
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

  private admit(): void {
    // A step carries at most maxBatchTokens of a sequence's feed (prefill chunks), then single tokens.
    const longest = (s: Seq) => Math.min(this.maxBatchTokens, s.feed.length);
    while (this.waiting.length && this.alloc.canAllocate(this.waiting[0]!.id, this.waiting[0]!.budget, longest(this.waiting[0]!))) {
      const seq = this.waiting.shift()!;
      this.alloc.allocate(seq.id, seq.budget, longest(seq));
      seq.table = this.alloc.table(seq.id);
      this.running.push(seq);
    }
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
    const picks: Pick[] = [...ready.filter((s) => s.feed.length === 1), ...ready.filter((s) => s.feed.length > 1)]
      .map((seq) => ({ seq, skip: 0, left: seq.feed.length, from: -1 }));
    return this.plan(picks, maxSeqs);
  }

  /**
   * Run-ahead planning (pp = 1 with TP followers): the step after `cur`, planned while `cur`
   * runs so that its metadata reaches the other ranks before they need it. cur's sequences go on
   * as if none ended: a sampling member decodes cur's sampled token (`tokenFrom`, which every
   * rank fills in from its own result), a prefill chunk continues with the next prompt tokens.
   * One that cur's token ends (EOS, a stop string) runs once more and that result is dropped
   * (retired, as for stop strings); its last allowed token (max tokens) is known now and ends it.
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
      if (s.cancelled || s.ending || s.retired) continue;
      if (m.sample) {
        if (s.stop.tokens.length + 1 < s.sub.maxTokens) decodes.push({ seq: s, skip: m.n, left: 1, from });
      } else {
        prefills.push({ seq: s, skip: m.n, left: s.feed.length - m.n, from: -1 });
      }
    }
    const ready = this.ready();
    decodes.push(...ready.filter((s) => s.feed.length === 1).map((seq) => ({ seq, skip: 0, left: 1, from: -1 })));
    prefills.push(...ready.filter((s) => s.feed.length > 1).map((seq) => ({ seq, skip: 0, left: seq.feed.length, from: -1 })));
    if (decodes.length + prefills.length === 0) return null;
    return this.plan([...decodes, ...prefills], Number.MAX_SAFE_INTEGER);
  }

  private ready(): Seq[] {
    return this.running.filter((s) => s.inFlight === 0 && !s.cancelled && !s.ending && !s.retired);
  }

  /** Takes picks in order up to the token budget and `maxSeqs`; marks them in flight. */
  private plan(picks: Pick[], maxSeqs: number): PlannedStep {
    const members: PlannedStep['members'] = [];
    const seqs: StepSeq[] = [];
    const from: number[] = [];
    let budget = this.maxBatchTokens;
    for (const { seq, skip, left, from: f } of picks) {
      if (members.length >= maxSeqs || budget <= 0) break;
      const n = Math.min(left, budget);
      budget -= n;
      const sample = n === left;
      members.push({ seq, n, sample });
      seq.inFlight++;
      const p = seq.sub;
      seqs.push({
        tokens: f >= 0 ? Int32Array.of(0) : n === 1 ? Int32Array.of(seq.feed[skip]!) : Int32Array.from(seq.feed.slice(skip, skip + n)),
        pos: seq.pos + skip, blockTable: seq.table!, sample,
        temperature: p.temperature, topK: p.topK, topP: p.topP, seed: seq.seed,
      });
      from.push(f);
    }
    this.steps++;
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    this.maxStepBatch = Math.max(this.maxStepBatch, seqs.length);
    this.recent.push(seqs.length);
    if (this.recent.length > RECENT_STEPS) this.recent.shift();
    const step: PlannedStep = { seqs, members, nSample: members.filter((m) => m.sample).length };
    if (from.some((f) => f >= 0)) step.tokenFrom = Int32Array.from(from);
    return step;
  }

  /** Applies a finished step's sampled tokens; returns the updates for the coordinator. */
  complete(step: PlannedStep, sampled: Int32Array): TokenUpdateMsg[] {
    return this.settle(this.apply(step, sampled));
  }

  /**
   * The cheap half of complete(): positions advance and each sampled token becomes its sequence's
   * next input, so the following step can be planned and launched at once; a token that ends its
   * sequence for certain (EOS, max tokens) keeps the sequence out of later steps. settle() does the
   * detokenizing and reporting, while that step runs.
   */
  apply(step: PlannedStep, sampled: Int32Array): AppliedStep {
    const applied: AppliedStep = [];
    this.inFlight--;
    let j = 0;
    for (const { seq, n, sample } of step.members) {
      seq.inFlight--;
      const token = sample ? sampled[j++]! : -1;
      if (seq.cancelled || seq.retired) {
        if (seq.inFlight === 0) this.drop(seq);  // a run-ahead step still using its blocks drops it later
        continue;
      }
      seq.pos += n;
      seq.feed.splice(0, n);
      if (!sample) continue;
      seq.feed.push(token);
      const eos = !seq.sub.ignoreEos && this.tokenizer.eosTokenIds.includes(token);
      if (eos || seq.stop.tokens.length + 1 >= seq.sub.maxTokens) seq.ending = true;
      applied.push({ seq, token });
    }
    return applied;
  }

  /** Detokenizes applied tokens, checks stop strings; returns the updates for the coordinator. */
  settle(applied: AppliedStep): TokenUpdateMsg[] {
    const updates: TokenUpdateMsg[] = [];
    for (const { seq, token } of applied) {
      if (seq.cancelled || this.byId.get(seq.id) !== seq) continue;  // cancelled meanwhile: no more updates
      const before = seq.stop.tokens.length;
      const upd = seq.stop.push(token);
      const fresh = seq.stop.tokens.slice(before);
      this.generated += fresh.length;
      const finish = upd.done ? (upd.finishReason === 'length' ? FINISH_LENGTH : FINISH_STOP) : 0;
      updates.push({ requestId: seq.id, tokenIds: fresh, text: upd.delta, index: before, finishReason: finish, error: '' });
      if (!upd.done) {
        seq.ending = false;  // apply()'s guess and the stop checker agree by construction; never strand a sequence if not
        continue;
      }
      // Finished by a stop string while its next token is already being computed: that step's
      // result for it is discarded and its blocks freed when the step completes.
      if (seq.inFlight > 0) seq.retired = true;
      else this.drop(seq);
    }
    return updates;
  }

  load(): ReplicaLoadMsg {
    return {
      running: this.running.length, queued: this.waiting.length, kvBlocksTotal: this.alloc.numBlocks,
      kvBlocksFree: this.alloc.freeBlocks, kvBlockSize: this.alloc.blockSize, steps: String(this.steps),
      generatedTokens: String(this.generated), recentStepBatch: [...this.recent], maxStepBatch: this.maxStepBatch,
      maxInFlight: this.maxInFlight,
    };
  }
}
