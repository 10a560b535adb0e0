// One replica's step loop, for every layout (tp x pp). The worker hands its loaded engine and
// communicators here once the replica serves (worker/main.ts); this module owns the steps.
//
// Replica-local rank i = stage * tp + tpRank. The driver (local rank 0: stage 0, TP rank 0) owns
// the replica's Scheduler and runs the loop in the shape of vLLM's engine core: plan a step
// (Scheduler.next / nextAhead), send its frame to every other rank over the data plane (the
// replica's TCP communicator, never gRPC), run its own part, then apply the sampled tokens
// (Scheduler.apply) and report them (Scheduler.settle: detokenize, stop strings, token updates).
// Every other rank follows the driver's frames (follow()), so the TP collectives inside the
// engine always pair up.
//
// pp = 1 (tp 1 or more): the driver plans step N+1 while N runs, sends it at once and submits it
//   to its own engine at once, so the followers have it before N ends, and the driver's engine
//   starts it on its worker thread as soon as N ends, with no trip through the JS thread between
//   the two. A decode's input token is N's sampled token, which every TP rank computes
//   identically (same logits after the vocab all-gather, same seed): the step carries its index
//   in N's sampled tokens (`tokenFrom`); the driver's engine fills it in natively (a chained
//   step, src/native/addon.ts), each follower from its own result. A sequence that N's token ends
//   (EOS, a stop string) runs once more and that result is dropped; its last allowed token (max
//   tokens) is known ahead and never over-run. N's tokens are detokenized and reported while N+1
//   runs. Alone (tp 1), a step submitted ahead that has not started yet is withdrawn and planned
//   again when a more urgent request arrives, so its prefill joins the very next step.
// pp > 1: the driver keeps up to pp micro-batches in flight; each stage receives the previous
//   stage's activations and passes its own on, and the last stage's TP rank 0 returns the sampled
//   tokens to the driver, which applies and reports them.
import type { ReplayedText } from '../model/tokenizer-pool.js';
import type { Comm } from '../comm/comm.js';
import type { Engine } from '../engine/engine.js';
import { MAX_LOGPROBS } from '../native/addon.js';
import type { StepLogprobs, StepResult, StepSeq, SubmittedStep } from '../native/addon.js';
import type { TokenizerLike } from '../engine/generate.js';
import type { ReplicaLoad, Submit, TokenUpdate } from '../protocol/control.js';
import {
  FRAME_BYTES, INLINE_BYTES, KIND_STEP, KIND_STOP, decodeStep, encodeStep, fillTokens, frame, readFrame, totalTokens,
} from '../protocol/step-codec.js';
import type { StepMeta } from '../protocol/step-codec.js';
import { Scheduler } from './scheduler.js';
import type { AppliedStep, PlannedStep } from './scheduler.js';
import { StepModel } from './step-model.js';
import { stepTracer } from './step-trace.js';

export interface ReplicaPosition {
  stage: number;
  tpRank: number;
  tp: number;
  pp: number;
}

export type DataPlane = Pick<Comm, 'send' | 'recv' | 'abort'>;

/** Runs one engine step (the worker passes its step watchdog here). */
export type StepRunner = <T>(run: () => Promise<T>) => Promise<T>;
const unwatched: StepRunner = (run) => run();

/** A step the driver submitted to its engine and has not applied yet (pp = 1). */
interface Launched {
  step: PlannedStep;
  run: SubmittedStep;
  /** Its frame to the other ranks. */
  sent: Promise<unknown>;
  /** When it was submitted (performance.now()). */
  t0: number;
  /** The driver waited for work before planning it: the engine's gap before it includes that wait. */
  afterIdle: boolean;
}

/** What the driver needs besides the engine: its scheduler's limits and where token updates go. */
export interface DriverOptions {
  tokenizer: TokenizerLike;
  kvBlocks: number;
  kvBlockSize: number;
  /** The windowed layers' own pool (the smallest of the replica's ranks), 0 when the model keeps none. */
  kvWindowBlocks?: number;
  /** Most tokens one step carries (long prefills are chunked). */
  maxBatchTokens: number;
  /** Most requests waiting for KV blocks. */
  maxQueue: number;
  /** Most sequences in the batch (0: only the KV cache limits it). */
  maxSeqs?: number;
  /** Sends token updates to the coordinator. */
  emit(updates: TokenUpdate[]): void;
}

export interface ReplicaOptions {
  /** Set on the driver (replica-local rank 0) only. */
  driver?: DriverOptions;
  watch?: StepRunner;
}

function localRank(p: { stage: number; tpRank: number; tp: number }): number {
  return p.stage * p.tp + p.tpRank;
}

/** Whether a sampled sequence of the step asked for logprobs (then the last stage sends them to the driver too). */
function wantsLogprobs(seqs: StepSeq[]): boolean {
  return seqs.some((s) => s.sample !== false && (s.sampling?.logprobs ?? -1) >= 0);
}

// A step's logprobs on the data plane: per sampled sequence, its token's logprob, MAX_LOGPROBS ids
// and MAX_LOGPROBS logprobs (StepLogprobs laid end to end).
const LP_WORDS = 1 + 2 * MAX_LOGPROBS;

function packLogprobs(lp: StepLogprobs): Uint8Array {
  const n = lp.sampled.length;
  const buf = new ArrayBuffer(4 * n * LP_WORDS);
  new Float32Array(buf, 0, n).set(lp.sampled);
  new Int32Array(buf, 4 * n, n * MAX_LOGPROBS).set(lp.topIds);
  new Float32Array(buf, 4 * n * (1 + MAX_LOGPROBS), n * MAX_LOGPROBS).set(lp.top);
  return new Uint8Array(buf);
}

function unpackLogprobs(bytes: Uint8Array, n: number): StepLogprobs {
  const buf = bytes.buffer;
  return { sampled: new Float32Array(buf, 0, n), topIds: new Int32Array(buf, 4 * n, n * MAX_LOGPROBS),
    top: new Float32Array(buf, 4 * n * (1 + MAX_LOGPROBS), n * MAX_LOGPROBS) };
}

/** Sends a step's frame to ranks 1..world-1 (queued in order on the plane's thread). */
function announce(plane: DataPlane, world: number, stepNo: number, step: PlannedStep): Promise<unknown> {
  const body = encodeStep({ step: stepNo, seqs: step.seqs, ...(step.tokenFrom ? { tokenFrom: step.tokenFrom } : {}) });
  const f = frame(KIND_STEP, body);
  const sends: Promise<void>[] = [];
  for (let r = 1; r < world; r++) {
    sends.push(plane.send(f, r));
    if (body.byteLength > INLINE_BYTES) sends.push(plane.send(body, r));
  }
  const all = Promise.all(sends);
  all.catch(() => {});  // awaited by the caller; a failure there rejects its loop
  return all;
}

/** The driver's next frame: a step, or null for STOP. */
async function receiveStep(plane: DataPlane, hdr: Uint8Array): Promise<StepMeta | null> {
  await plane.recv(hdr, 0);
  const f = readFrame(hdr);
  if (f.kind === KIND_STOP) return null;
  if (f.kind !== KIND_STEP) throw new Error(`data plane: unexpected frame kind ${f.kind} from the driver`);
  let body = f.inline;
  if (!body) {
    body = new Uint8Array(f.bytes);
    await plane.recv(body, 0);
  }
  return decodeStep(body);
}

export class Replica {
  /** The driver's scheduler; undefined on the other ranks. */
  readonly scheduler: Scheduler | undefined;
  private readonly watch: StepRunner;
  private readonly world: number;
  /** The driver's step times (launch to sampled tokens), for the router's TTFT estimate. */
  private readonly steps = new StepModel();
  private stopped = false;
  private wake: (() => void) | undefined;
  /** pp = 1: the step the driver waits for (N), and the step submitted behind it (N+1). */
  private running: Launched | null = null;
  private ahead: Launched | null = null;

  constructor(private readonly engine: Engine, private readonly plane: DataPlane | null, readonly pos: ReplicaPosition,
    private readonly o: ReplicaOptions = {}) {
    this.watch = o.watch ?? unwatched;
    this.world = pos.tp * pos.pp;
    if (this.world > 1 && !plane) throw new Error(`replica of tp ${pos.tp} x pp ${pos.pp}: a data plane is required`);
    const d = o.driver;
    this.scheduler = d && new Scheduler(d.kvBlocks, d.kvBlockSize, d.tokenizer, d.maxBatchTokens, d.maxQueue, engine.maxPosition,
      engine.kvWindowOptions(d.kvWindowBlocks ?? 0), d.maxSeqs ?? 0);
  }

  get isDriver(): boolean {
    return this.scheduler !== undefined;
  }

  /** Queues a request (driver); returns the refusal to report when it can never run here. */
  submit(s: Submit, replayed?: ReplayedText): TokenUpdate | null {
    const refused = this.driverScheduler().submit(s, replayed);
    if (!refused) this.reconsiderAhead(s.classRank);
    this.poke();
    return refused;
  }

  cancel(requestId: string): void {
    this.driverScheduler().cancel(requestId);
    this.poke();
  }

  /** The driver's state for its heartbeats. */
  load(): ReplicaLoad | undefined {
    return this.scheduler && { ...this.scheduler.load(), ...this.steps.fit() };
  }

  /** The driver ends its loop at the next step boundary and tells the other ranks to stop. */
  stop(): void {
    this.stopped = true;
    this.poke();
  }

  /** Driver: serves until stop(), then stops every rank. Others: follow until the driver's STOP. Rejects if the data plane fails. */
  async run(): Promise<void> {
    if (!this.scheduler) return this.follow();
    if (this.pos.pp === 1) await this.driveAhead(this.scheduler);
    else await this.drivePipeline(this.scheduler);
    if (this.plane) for (let r = 1; r < this.world; r++) await this.plane.send(frame(KIND_STOP), r);
  }

  private driverScheduler(): Scheduler {
    if (!this.scheduler) throw new Error('replica: only the driver takes requests');
    return this.scheduler;
  }

  private poke(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  /** Resolves at the next submit, cancel or stop. */
  private idle(): Promise<void> {
    return new Promise((resolve) => (this.wake = resolve));
  }

  private send(sched: Scheduler, step: PlannedStep): Promise<unknown> {
    return this.plane ? announce(this.plane, this.world, sched.steps, step) : Promise.resolve();
  }

  /** Sends the step's frame and submits it to the engine; a chained step takes its tokenFrom tokens from the step before it. */
  private launch(sched: Scheduler, step: PlannedStep, chained: boolean, afterIdle: boolean): Launched {
    const sent = this.send(sched, step);
    // Chained even without a decode (tokenFrom all -1): a failed step before it then fails it too.
    const tokenFrom = chained ? step.tokenFrom ?? new Int32Array(step.seqs.length).fill(-1) : undefined;
    const run = this.engine.submit({ seqs: step.seqs, ...(tokenFrom ? { tokenFrom } : {}) });
    run.result.catch(() => {});  // awaited when the driver gets to it; a withdrawn step's is not
    return { step, run, sent, t0: performance.now(), afterIdle };
  }

  /** While step N runs and nothing is planned after it: plans N+1 and submits it at once. */
  private planAhead(sched: Scheduler): void {
    const cur = this.running;
    if (!cur || this.ahead || this.stopped) return;
    const next = sched.nextAhead(cur.step);
    if (next) this.ahead = this.launch(sched, next, true, false);
  }

  /**
   * A request of class `rank` arrived while step N runs: a step planned after N when nothing else
   * was is planned now; alone (tp 1, where no other rank has its frame), a step planned after N
   * that has not started is withdrawn and planned again when the request is of a more urgent class
   * than its least urgent member, so the request's prefill is in it instead of in the step after
   * (only the arrival of such a request: one that waits on for a seat does not re-plan at every
   * later arrival). When the withdrawal loses the race (the step started), the step stands and is
   * applied as planned.
   */
  private reconsiderAhead(rank: number): void {
    const sched = this.scheduler;
    if (!sched || !this.running || this.stopped) return;
    const a = this.ahead;
    if (a) {
      if (this.world !== 1 || rank >= sched.leastUrgent(a.step) || !sched.urgentWaiting(a.step) || !a.run.withdraw()) return;
      sched.unplan(a.step);
      this.ahead = null;
    }
    this.planAhead(sched);
  }

  /** pp = 1: step N+1 is planned, sent and submitted while N runs; N's tokens are reported while N+1 runs. */
  private async driveAhead(sched: Scheduler): Promise<void> {
    const trace = stepTracer();
    const o = this.o.driver!;
    let unsettled: AppliedStep | null = null;
    const settle = () => {
      if (unsettled) o.emit(sched.settle(unsettled));
      unsettled = null;
    };
    let afterIdle = false;
    let lastResult = 0;
    try {
      for (;;) {
        // A step already submitted runs even when stopping: the followers are waiting in it.
        let cur = this.ahead;
        this.ahead = null;
        if (!cur) {
          if (this.stopped) break;
          const step = sched.next(1);
          if (!step) {
            if (unsettled) {  // settling may end sequences and free the KV blocks a queued request waits for
              settle();
              continue;
            }
            await this.idle();
            afterIdle = true;
            continue;
          }
          cur = this.launch(sched, step, false, afterIdle);
          afterIdle = false;
        }
        settle();  // step N-1's reports; a stop string found here keeps its sequence out of the plan below
        this.running = cur;
        this.planAhead(sched);
        const run = cur.run;
        const out: StepResult = await this.watch(() => run.result);
        // Only a withdrawn step is skipped, and the driver never waits for one.
        if (out.skipped) throw new Error('replica: a step the driver waited for was skipped');
        // The step's own time: from its submission, or from the previous step's result when it was submitted behind that one.
        const now = performance.now();
        const ms = now - Math.max(cur.t0, lastResult);
        lastResult = now;
        this.steps.observe(totalTokens(cur.step.seqs), ms);
        trace?.(cur.step, ms, out.timing, cur.afterIdle);
        await cur.sent;
        this.running = null;
        unsettled = sched.apply(cur.step, out.sampled, out.logprobs);
        // A more urgent request still waiting (say one that waited for a seat N's tokens freed): N+1
        // has most likely started by now, but when it has not, it is planned again with the request.
        const a = this.ahead as Launched | null;
        if (a && this.world === 1 && sched.urgentWaiting(a.step) && a.run.withdraw()) {
          sched.unplan(a.step);
          this.ahead = null;
        }
      }
      settle();
    } finally {
      this.running = null;
      this.ahead = null;
    }
  }

  /** pp > 1: up to pp micro-batches in flight; the last stage returns each one's sampled tokens. */
  private async drivePipeline(sched: Scheduler): Promise<void> {
    const { pos, plane } = this;
    const o = this.o.driver!;
    const trace = stepTracer();
    const lastStage0 = (pos.pp - 1) * pos.tp;
    const inFlight: { step: PlannedStep; t0: number }[] = [];
    for (;;) {
      if (this.stopped) break;
      let launched = false;
      while (inFlight.length < pos.pp) {
        const step = sched.next(pos.pp);
        if (!step) break;
        launched = true;
        // The frame sends are queued on the plane's thread (in order) and awaited after this rank's
        // own step: the followers' copies go out while the driver runs.
        const sent = this.send(sched, step);
        const t0 = performance.now();
        const out = await this.watch(() => this.engine.step({ seqs: step.seqs }));
        await sent;
        trace?.(step, performance.now() - t0, out.timing);
        await plane!.send(out.hiddenOut!, pos.tp); // stage 1, TP rank 0
        inFlight.push({ step, t0 });
      }
      if (inFlight.length) {
        // A micro-batch's time is from its launch to its sampled tokens (through every stage).
        const { step, t0 } = inFlight.shift()!;
        const got = await this.receiveSampled(step, lastStage0);
        this.steps.observe(totalTokens(step.seqs), performance.now() - t0);
        o.emit(sched.complete(step, got.sampled, got.logprobs));
        continue;
      }
      if (!launched) await this.idle();
    }
    // Drain what is still in the pipeline so every rank ends at the same step.
    while (inFlight.length) await this.receiveSampled(inFlight.shift()!.step, lastStage0);
  }

  // A micro-batch of prefill chunks only samples nothing, and then nothing is sent back.
  private async receiveSampled(step: PlannedStep, from: number): Promise<{ sampled: Int32Array; logprobs?: StepLogprobs }> {
    const sampled = new Int32Array(step.nSample);
    if (step.nSample === 0) return { sampled };
    await this.plane!.recv(new Uint8Array(sampled.buffer), from);
    if (!wantsLogprobs(step.seqs)) return { sampled };
    const lp = new Uint8Array(4 * step.nSample * LP_WORDS);
    await this.plane!.recv(lp, from);
    return { sampled, logprobs: unpackLogprobs(lp, step.nSample) };
  }

  /** A rank other than the driver: runs the driver's steps until STOP (resolves) or the data plane fails (rejects). */
  private async follow(): Promise<void> {
    const { pos, engine } = this;
    const plane = this.plane!;
    const hdr = new Uint8Array(FRAME_BYTES);
    const last = pos.stage === pos.pp - 1;
    const prev = pos.stage > 0 ? localRank({ ...pos, stage: pos.stage - 1 }) : -1;
    const next = last ? -1 : localRank({ ...pos, stage: pos.stage + 1 });
    const hiddenBytes = (tokens: number) => tokens * engine.shard.hidden * (engine.shard.compute === 'f32' || !engine.shard.compute ? 4 : 2);
    // pp = 1: the plane carries only frames, so the next frame's receive is posted before each
    // step and a step planned ahead is already here when this one ends. pp > 1: activations
    // travel on the plane between frames, so the next frame is received after them.
    const early = pos.pp === 1;
    let prevSampled: Int32Array | null = null;
    let pending = receiveStep(plane, hdr);
    for (;;) {
      const meta = await pending;
      if (!meta) return;
      fillTokens(meta.seqs, meta.tokenFrom, prevSampled);
      if (early) {
        pending = receiveStep(plane, hdr);
        pending.catch(() => {});  // awaited at the top of the loop
      }
      let hiddenIn: Uint8Array | undefined;
      if (prev >= 0) {
        hiddenIn = new Uint8Array(hiddenBytes(totalTokens(meta.seqs)));
        await plane.recv(hiddenIn, prev);
      }
      const out = await this.watch(() => engine.step({ seqs: meta.seqs, ...(hiddenIn ? { hiddenIn } : {}) }));
      prevSampled = out.sampled;
      if (!last) await plane.send(out.hiddenOut!, next);
      else if (pos.tpRank === 0 && pos.stage > 0 && out.sampled.length > 0) {
        await plane.send(new Uint8Array(out.sampled.buffer, out.sampled.byteOffset, out.sampled.byteLength), 0);
        if (wantsLogprobs(meta.seqs)) await plane.send(packLogprobs(out.logprobs!), 0);
      }
      if (!early) pending = receiveStep(plane, hdr);
    }
  }
}
