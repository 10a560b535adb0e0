// The per-step loops of a replica over the data plane (the replica's communicator, not gRPC).
//
// Replica-local rank i = stage * tp + tpRank; the driver is local rank 0 (stage 0, TP rank 0).
// Driver: plans a micro-batch (Scheduler), sends its metadata to every other rank, runs its own
// stage-0 shard, hands the activations to stage 1, and keeps up to `pp` micro-batches in flight
// before it waits for the oldest one's sampled tokens from the last stage. Other ranks: receive
// metadata, receive activations from the previous stage (same TP rank), step, pass activations on;
// the last stage's TP rank 0 returns the sampled tokens to the driver. Every rank processes the
// same sequence of micro-batches, so TP collectives inside the engine always pair up.
// pp = 1 with TP followers plans one step ahead instead (run-ahead.ts).
import type { Engine } from '../engine/engine.js';
import type { Comm } from '../comm/comm.js';
import type { TokenUpdate } from '../protocol/control.js';
import type { AppliedStep, PlannedStep, Scheduler } from './scheduler.js';
import { announce, receiveStep, runAheadEnabled, runDriverAhead, runFollowerAhead } from './run-ahead.js';
import { stepTracer } from './step-trace.js';
import { FRAME_BYTES, KIND_STOP, frame, totalTokens } from '../protocol/step-codec.js';

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

function localRank(p: { stage: number; tpRank: number; tp: number }): number {
  return p.stage * p.tp + p.tpRank;
}

function hiddenBytes(engine: Engine, tokens: number): number {
  return tokens * engine.shard.hidden * (engine.shard.compute === 'f32' || !engine.shard.compute ? 4 : 2);
}

/** Runs a non-driver rank until the driver sends STOP (resolves) or the data plane fails (rejects). */
export async function runFollower(engine: Engine, plane: DataPlane, pos: ReplicaPosition, watch: StepRunner = unwatched): Promise<void> {
  if (pos.pp === 1) return runFollowerAhead(engine, plane, watch);
  const hdr = new Uint8Array(FRAME_BYTES);
  const last = pos.stage === pos.pp - 1;
  const prev = pos.stage > 0 ? localRank({ ...pos, stage: pos.stage - 1 }) : -1;
  const next = last ? -1 : localRank({ ...pos, stage: pos.stage + 1 });
  for (;;) {
    const meta = await receiveStep(plane, hdr);
    if (!meta) return;
    let hiddenIn: Uint8Array | undefined;
    if (prev >= 0) {
      hiddenIn = new Uint8Array(hiddenBytes(engine, totalTokens(meta.seqs)));
      await plane.recv(hiddenIn, prev);
    }
    const out = await watch(() => engine.step({ seqs: meta.seqs, ...(hiddenIn ? { hiddenIn } : {}) }));
    if (!last) await plane.send(out.hiddenOut!, next);
    else if (pos.tpRank === 0 && pos.stage > 0 && out.sampled.length > 0) await plane.send(new Uint8Array(out.sampled.buffer, out.sampled.byteOffset, out.sampled.byteLength), 0);
  }
}

// A micro-batch of prefill chunks only samples nothing, and then nothing is sent back.
async function recvSampled(plane: DataPlane, step: PlannedStep, from: number): Promise<Int32Array> {
  const sampled = new Int32Array(step.nSample);
  if (step.nSample > 0) await plane.recv(new Uint8Array(sampled.buffer), from);
  return sampled;
}

export interface DriverHooks {
  /** Sends token updates to the coordinator. */
  emit(updates: TokenUpdate[]): void;
  /** Resolves when there may be new work (a submit or cancel arrived) or stop was requested. */
  waitForWork(): Promise<void>;
  stopping(): boolean;
}

/** The replica driver's loop; resolves after telling every rank to stop. */
export async function runDriver(engine: Engine, plane: DataPlane | null, pos: ReplicaPosition, sched: Scheduler,
  hooks: DriverHooks, watch: StepRunner = unwatched): Promise<void> {
  const world = pos.tp * pos.pp;
  if (pos.pp === 1 && (plane || world === 1) && runAheadEnabled()) return runDriverAhead(engine, plane, world, sched, hooks, watch);
  const lastStage0 = (pos.pp - 1) * pos.tp;
  const inFlight: PlannedStep[] = [];
  const trace = stepTracer();
  // pp = 1: the last step's sampled tokens, applied (the next step can use them) but not yet
  // detokenized and reported; that happens while the next step computes.
  let unsettled: AppliedStep | null = null;
  const settle = () => {
    if (unsettled) hooks.emit(sched.settle(unsettled));
    unsettled = null;
  };
  for (;;) {
    if (hooks.stopping()) break;
    // Fill the pipeline: up to pp micro-batches in flight.
    let launched = false;
    while (inFlight.length < pos.pp) {
      const step = sched.next(pos.pp);
      if (!step) break;
      launched = true;
      // The metadata sends are queued on the plane's thread (in order) and awaited after this
      // rank's own step: the followers' copies go out while the driver launches and runs.
      const sent = plane ? announce(plane, world, sched.steps, step) : Promise.resolve();
      const t0 = trace ? performance.now() : 0;
      const running = watch(() => engine.step({ seqs: step.seqs }));
      if (pos.pp === 1) {
        let out: Awaited<typeof running>;
        try {
          settle();
        } finally {
          out = await running;
        }
        await sent;
        trace?.(step, performance.now() - t0);
        unsettled = sched.apply(step, out.sampled);
        continue;
      }
      const out = await running;
      await sent;
      trace?.(step, performance.now() - t0);
      await plane!.send(out.hiddenOut!, pos.tp); // stage 1, TP rank 0
      inFlight.push(step);
    }
    settle();
    if (inFlight.length) {
      const step = inFlight.shift()!;
      hooks.emit(sched.complete(step, await recvSampled(plane!, step, lastStage0)));
      continue;
    }
    if (!launched) await hooks.waitForWork();
  }
  settle();
  // Drain what is still in the pipeline so every rank ends at the same step, then stop them.
  while (inFlight.length) await recvSampled(plane!, inFlight.shift()!, lastStage0);
  if (plane) for (let r = 1; r < world; r++) await plane.send(frame(KIND_STOP), r);
}
