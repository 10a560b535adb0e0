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
  inFlight: boolean;
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
}

export class QueueFullError extends Error {}

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
    private readonly maxBatchTokens: number, private readonly maxQueue: number, private readonly contextLength: number) {
    this.alloc = new BlockAllocator(kvBlocks, kvBlockSize);
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
    if (this.alloc.blocksFor(budget) > this.alloc.numBlocks)
      return err(`needs ${this.alloc.blocksFor(budget)} KV blocks, the replica's cache has ${this.alloc.numBlocks}`);
    const stop = new StopChecker({ eosTokenIds: this.tokenizer.eosTokenIds, stop: sub.stop, maxTokens: sub.maxTokens,
      ignoreEos: sub.ignoreEos, decode: (ids) => this.tokenizer.decode(ids) });
    // Replay: the tokens the client already has go back into the cache and the stop checker.
    for (const t of sub.generatedIds) stop.push(t);
    const seq: Seq = { id: sub.requestId, sub, stop, budget, pos: 0, feed: [...sub.promptIds, ...sub.generatedIds],
      inFlight: false, cancelled: false, ending: false, retired: false, seed: BigInt(sub.seed) };  // validated by the coordinator (validate.ts)
    this.byId.set(seq.id, seq);
    this.waiting.push(seq);
    return null;
  }

  cancel(id: string): void {
    const seq = this.byId.get(id);
    if (!seq) return;
    seq.cancelled = true;
    if (!seq.inFlight) this.drop(seq);
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
    while (this.waiting.length && this.alloc.canAllocate(this.waiting[0]!.id, this.waiting[0]!.budget)) {
      const seq = this.waiting.shift()!;
      this.alloc.allocate(seq.id, seq.budget);
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
    const ready = this.running.filter((s) => !s.inFlight && !s.cancelled && !s.ending && !s.retired);
    if (ready.length === 0) return null;
    const maxSeqs = Math.max(1, Math.ceil(this.running.length / microBatches));
    const decodes = ready.filter((s) => s.feed.length === 1);
    const prefills = ready.filter((s) => s.feed.length > 1);
    const members: PlannedStep['members'] = [];
    let budget = this.maxBatchTokens;
    for (const s of [...decodes, ...prefills]) {
      if (members.length >= maxSeqs || budget <= 0) break;
      const n = Math.min(s.feed.length, budget);
      budget -= n;
      members.push({ seq: s, n, sample: n === s.feed.length });
    }
    const seqs: StepSeq[] = members.map(({ seq, n, sample }) => {
      seq.inFlight = true;
      const p = seq.sub;
      return {
        tokens: n === 1 ? Int32Array.of(seq.feed[0]!) : Int32Array.from(seq.feed.slice(0, n)), pos: seq.pos, blockTable: seq.table!, sample,
        temperature: p.temperature, topK: p.topK, topP: p.topP, seed: seq.seed,
      };
    });
    this.steps++;
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    this.maxStepBatch = Math.max(this.maxStepBatch, seqs.length);
    this.recent.push(seqs.length);
    if (this.recent.length > RECENT_STEPS) this.recent.shift();
    return { seqs, members, nSample: members.filter((m) => m.sample).length };
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
      seq.inFlight = false;
      seq.pos += n;
      seq.feed.splice(0, n);
      const token = sample ? sampled[j++]! : -1;
      if (seq.cancelled || seq.retired) {
        this.drop(seq);
        continue;
      }
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
      if (seq.inFlight) seq.retired = true;
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
