// Replica loops for pp = 1, planning one step ahead (with or without tensor-parallel followers).
//
// A TP follower cannot start a step before the driver's metadata for it arrives; planned after the
// previous step's tokens are known, that metadata costs every step a driver wake-up, the planning
// and a data-plane crossing (~0.2 ms of a ~3 ms tp-2 decode step on two H200s; planning ahead took
// tp-2 batch-1 serving from 291.5 to 319.7 tok/s, bench/results/serve-cuda-h200x2-ab6-bbaa8c7.json). At tp 1 the planning
// alone sat between steps (~0.1 ms each of a 64-stream run's 259 steps on an H200). Here the
// driver plans step N+1 while step N runs (Scheduler.nextAhead) and sends it at once; the inputs
// that depend on N are N's sampled tokens, which every TP rank computes identically (same logits
// after the vocab all-gather, same seeds), so each rank fills them in from its own result
// (`tokenFrom`). A sequence that N's token ends (EOS, a stop string) runs once more in N+1 and that
// result is dropped; its last allowed token (max tokens) is known ahead and not over-run.
// NODESPEED_RUN_AHEAD=0 makes the driver plan each step after the previous one (runDriver's loop);
// the follower loop here takes both kinds of step.
import type { Engine } from '../engine/engine.js';
import type { AppliedStep, PlannedStep, Scheduler } from './scheduler.js';
import type { DataPlane, DriverHooks, StepRunner } from './executor.js';
import { FRAME_BYTES, KIND_STEP, KIND_STOP, decodeStep, encodeStep, fillTokens, frame, INLINE_BYTES, readFrame } from './step-codec.js';
import type { StepMeta } from './step-codec.js';
import { stepTracer } from './step-trace.js';
import { settings } from '../settings/index.js';

export function runAheadEnabled(): boolean {
  return settings().runAhead;
}

/** Sends a step's metadata to ranks 1..world-1 (queued in order on the plane's thread). */
export function announce(plane: DataPlane, world: number, stepNo: number, step: PlannedStep): Promise<unknown> {
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

/** The driver's next frame: a step's metadata, or null for STOP. */
export async function receiveStep(plane: DataPlane, hdr: Uint8Array): Promise<StepMeta | null> {
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

/** The driver of a pp = 1 replica (plane null: no followers); resolves after telling every rank to stop. */
export async function runDriverAhead(engine: Engine, plane: DataPlane | null, tp: number, sched: Scheduler,
  hooks: DriverHooks, watch: StepRunner): Promise<void> {
  const trace = stepTracer();
  let unsettled: AppliedStep | null = null;
  const settle = () => {
    if (unsettled) hooks.emit(sched.settle(unsettled));
    unsettled = null;
  };
  const send = (step: PlannedStep) => (plane ? announce(plane, tp, sched.steps, step) : Promise.resolve());
  let ahead: { step: PlannedStep; sent: Promise<unknown> } | null = null;
  let prevSampled: Int32Array | null = null;
  for (;;) {
    // A step already announced runs even when stopping: the followers are waiting in it.
    if (!ahead && hooks.stopping()) break;
    let cur = ahead;
    ahead = null;
    if (!cur) {
      const step = sched.next(1);
      if (!step) {
        if (unsettled) {  // settling may end sequences and free the KV blocks a queued request waits for
          settle();
          continue;
        }
        await hooks.waitForWork();
        continue;
      }
      cur = { step, sent: send(step) };
    }
    fillTokens(cur.step.seqs, cur.step.tokenFrom, prevSampled);
    const t0 = trace ? performance.now() : 0;
    const step = cur.step;
    const running = watch(() => engine.step({ seqs: step.seqs }));
    let out: Awaited<typeof running>;
    try {
      settle();  // step N-1's reports; a stop string found here keeps its sequence out of the plan below
      if (!hooks.stopping()) {
        const next = sched.nextAhead(step);
        if (next) ahead = { step: next, sent: send(next) };
      }
    } finally {
      out = await running;
    }
    await cur.sent;
    trace?.(step, performance.now() - t0);
    unsettled = sched.apply(step, out.sampled);
    prevSampled = out.sampled;
  }
  settle();
  if (plane) for (let r = 1; r < tp; r++) await plane.send(frame(KIND_STOP), r);
}

/** A pp = 1 follower: takes steps planned ahead or not; resolves at STOP, rejects if the plane fails. */
export async function runFollowerAhead(engine: Engine, plane: DataPlane, watch: StepRunner): Promise<void> {
  const hdr = new Uint8Array(FRAME_BYTES);
  let prevSampled: Int32Array | null = null;
  let pending = receiveStep(plane, hdr);
  for (;;) {
    const meta = await pending;
    if (!meta) return;
    fillTokens(meta.seqs, meta.tokenFrom, prevSampled);
    // Post the next frame's receive before stepping (the plane has no other traffic at pp = 1),
    // so a step planned ahead is already here when this one ends.
    pending = receiveStep(plane, hdr);
    pending.catch(() => {});  // awaited at the top of the loop
    const out = await watch(() => engine.step({ seqs: meta.seqs }));
    prevSampled = out.sampled;
  }
}
