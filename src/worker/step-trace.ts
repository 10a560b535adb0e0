// NODESPEED_STEP_TRACE=FILE: the replica driver appends one JSON line per step it runs (its pid,
// sequences, new tokens, how many of them are decodes, how many sequences it samples a token for,
// `ms`: the step's time as the driver saw it (from its submission, or from the previous step's
// result when it was submitted behind that one, to its own result), the addon's split of it
// (run_ms: the backend's step, device work included; queue_ms: from the submission to a worker
// thread starting it, which for a step submitted behind another includes waiting for that one;
// return_ms: from its end to the JS thread taking the result), gap_ms: how long the engine sat
// idle between the previous step's end and this one's start, measured on the worker thread (the
// time the device waited for the host; absent for the engine's first step), after_idle: the driver
// had no work before planning it (its gap_ms includes that wait), exclusive: it left less urgent
// classes out for a first prompt chunk of an exclusive-prefill class (scheduler.ts), and `at`: when the backend
// started the step, in ms after the first traced step started, and epochMs: the same instant as
// Unix time in ms, to line up with a client's clock), so a serving benchmark can say where its
// time went (prefill vs decode steps, the device vs the driver's host work, the device's idle time
// between steps) without a profiler. Several drivers may share one file (each line is one short
// append). Lines are buffered and written every 200 ms and at exit, never on the step loop's path.
import { jsonLines } from '../protocol/request-trace.js';
import { settings } from '../settings/index.js';
import type { StepTiming } from '../native/addon.js';
import type { PlannedStep } from './scheduler.js';

export type StepTracer = (step: PlannedStep, ms: number, timing: StepTiming, afterIdle?: boolean) => void;

export function stepTracer(file: string | undefined = settings().stepTrace): StepTracer | undefined {
  if (!file) return undefined;
  let origin: number | undefined;
  const out = jsonLines(file);
  const r3 = (x: number) => Math.round(x * 1000) / 1000;
  return (step, ms, timing, afterIdle = false) => {
    // The backend's start, on this clock: the result is being taken now, returnMs after the end.
    const start = performance.now() - timing.returnMs - timing.runMs;
    origin ??= start;
    let tokens = 0, decodes = 0;
    for (const s of step.seqs) { tokens += s.tokens.length; if (s.tokens.length === 1) decodes++; }
    out.push({ pid: process.pid, seqs: step.seqs.length, tokens, decodes, sampled: step.nSample, ms: r3(ms),
      run_ms: r3(timing.runMs), queue_ms: r3(timing.queueMs), return_ms: r3(timing.returnMs),
      ...(timing.gapMs >= 0 ? { gap_ms: r3(timing.gapMs) } : {}), ...(afterIdle ? { after_idle: true } : {}),
      ...(step.exclusive ? { exclusive: true } : {}), at: r3(start - origin),
      epochMs: r3(performance.timeOrigin + start) });
  };
}
