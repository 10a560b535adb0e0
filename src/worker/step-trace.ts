// NODESPEED_STEP_TRACE=FILE: the replica driver appends one JSON line per step it runs (its pid,
// sequences, new tokens, how many of them are decodes, how many sequences it samples a token for,
// the driver's own engine.step wall time in ms, the addon's split of it (run_ms: the backend's step,
// device work included; queue_ms and return_ms: getting onto a worker thread and back onto the JS
// thread), and `at`: when that step started, in ms after the first traced step started, and
// epochMs: the same instant as Unix time in ms, to line up with a client's clock), so a serving
// benchmark can say where its time went (prefill vs decode steps, the device vs the driver's host
// work, the driver's time between steps) without a profiler. Several drivers may share one file (each
// line is one short append). Lines are buffered and written every 200 ms and at exit, never on the
// step loop's path.
import { jsonLines } from '../protocol/request-trace.js';
import { settings } from '../settings/index.js';
import type { StepTiming } from '../native/addon.js';
import type { PlannedStep } from './scheduler.js';

export type StepTracer = (step: PlannedStep, ms: number, timing: StepTiming) => void;

export function stepTracer(file: string | undefined = settings().stepTrace): StepTracer | undefined {
  if (!file) return undefined;
  let origin: number | undefined;
  const out = jsonLines(file);
  const r3 = (x: number) => Math.round(x * 1000) / 1000;
  return (step, ms, timing) => {
    const start = performance.now() - ms;
    origin ??= start;
    let tokens = 0, decodes = 0;
    for (const s of step.seqs) { tokens += s.tokens.length; if (s.tokens.length === 1) decodes++; }
    out.push({ pid: process.pid, seqs: step.seqs.length, tokens, decodes, sampled: step.nSample, ms: r3(ms),
      run_ms: r3(timing.runMs), queue_ms: r3(timing.queueMs), return_ms: r3(timing.returnMs), at: r3(start - origin),
      epochMs: r3(performance.timeOrigin + start) });
  };
}
