// NODESPEED_STEP_TRACE=FILE: the replica driver appends one JSON line per step it runs (sequences,
// new tokens, how many of them are decodes, the driver's own engine.step wall time in ms, and `at`:
// when that step started, in ms after the first traced step started, and epochMs: the same instant
// as Unix time in ms, to line up with a client's clock), so a serving benchmark can say
// where its time went (prefill vs decode steps, and the driver's time between steps) without a profiler.
import { appendFileSync } from 'node:fs';

import { settings } from '../settings/index.js';
import type { PlannedStep } from './scheduler.js';

export type StepTracer = (step: PlannedStep, ms: number) => void;

export function stepTracer(file: string | undefined = settings().stepTrace): StepTracer | undefined {
  if (!file) return undefined;
  let origin: number | undefined;
  return (step, ms) => {
    const start = performance.now() - ms;
    origin ??= start;
    let tokens = 0, decodes = 0;
    for (const s of step.seqs) { tokens += s.tokens.length; if (s.tokens.length === 1) decodes++; }
    appendFileSync(file, JSON.stringify({ seqs: step.seqs.length, tokens, decodes, ms: Math.round(ms * 1000) / 1000, at: Math.round((start - origin) * 1000) / 1000, epochMs: Math.round((performance.timeOrigin + start) * 1000) / 1000 }) + '\n');
  };
}
