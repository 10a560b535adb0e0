// NODESPEED_REQUEST_TRACE=FILE: the coordinator and every replica driver append JSON lines to FILE
// (one file for all of them: each line is one short append), so a serving benchmark can say where a
// request's time to first token went:
//   {"t": epoch ms, "p": process ("coord" | "worker" | "client"), "id": request id, "ev": event, ...details}
//   coordinator: arrive (the API call came in), routed (sent to a replica), first_in (its first
//                token came back from the replica), first_out (written to the client), preempted, end
//   worker:      recv (the submit reached the driver's event loop), admitted, planned (first put in
//                a step), sampled (its first token computed), sent (its first token handed to the
//                control stream)
// (a benchmark's load generator, role "client", writes no request events: only its loop and GC lines, so a
// late first token can be told from a late client) and, every second and once as it exits, each process's event loop: {"p", "ev": "loop", "t", delay p50/p99/max in ms
// (perf_hooks monitorEventLoopDelay), "elu" (the share of that second the loop was busy), "gc_ms" (the
// garbage collector's pauses in that second, summed) and "gc_major" (how many were mark-compacts)}, and each
// pause of GC_LINE_MS or more as its own line {"p", "pid", "ev": "gc", "t" (its start), "ms", "kind"}: a
// loop stall lines up with a collection, or with the JS that ran then. Each process also writes one
// {"p", "pid", "ev": "clock", "t", "mono_us"} line as it starts tracing: its epoch time beside the monotonic clock
// that V8's CPU profiles (node --cpu-prof) stamp their samples with, so a profile's busy stretches can be placed
// on the trace's time line (bench/lib/long-tasks.mjs).
// Lines are buffered and written every 200 ms (and at exit), never on the request's path.
// Requests of the most urgent class seen (class rank 0) are traced always, others one in `sample`.
import { appendFileSync } from 'node:fs';
import { constants, monitorEventLoopDelay, performance, PerformanceObserver } from 'node:perf_hooks';
import type { EventLoopUtilization, NodeGCPerformanceDetail } from 'node:perf_hooks';

import { settings } from '../settings/index.js';

const FLUSH_MS = 200;
const LOOP_MS = 1000;
/** One in this many requests below the most urgent class is traced. */
const SAMPLE = 16;
/** GC pauses at least this long (ms) get a trace line of their own. */
const GC_LINE_MS = 2;

const GC_KINDS: Record<number, string> = {
  [constants.NODE_PERFORMANCE_GC_MINOR]: 'minor',
  [constants.NODE_PERFORMANCE_GC_MAJOR]: 'major',
  [constants.NODE_PERFORMANCE_GC_INCREMENTAL]: 'incremental',
  [constants.NODE_PERFORMANCE_GC_WEAKCB]: 'weakcb',
};

export interface RequestTrace {
  /** Whether a request of this class rank and id is traced (decided once per request by its caller). */
  wants(classRank: number, id: string): boolean;
  /** Appends one event of request `id` now (or at `t`, epoch ms). */
  event(id: string, ev: string, details?: Record<string, unknown>, t?: number): void;
}

/** Epoch ms with sub-ms precision (Date.now() is whole ms). */
export function nowMs(): number {
  return performance.timeOrigin + performance.now();
}

function hash(id: string): number {
  let h = 0;
  for (let i = 0; i < id.length; i++) h = (h * 31 + id.charCodeAt(i)) | 0;
  return h >>> 0;
}

const tracers = new Map<string, RequestTrace>();

/**
 * JSON lines appended to `file` off the caller's path: kept in memory, written every FLUSH_MS and
 * as the process exits (`flush`, also for a caller's own exit handler that pushes a last line).
 */
export function jsonLines(file: string): { push(o: Record<string, unknown>): void; flush(): void } {
  let lines: string[] = [];
  const flush = () => {
    if (!lines.length) return;
    const chunk = lines.join('\n') + '\n';
    lines = [];
    appendFileSync(file, chunk);
  };
  setInterval(flush, FLUSH_MS).unref();
  process.on('exit', flush);
  return { push: (o) => void lines.push(JSON.stringify(o)), flush };
}

/** The process's tracer, or undefined when NODESPEED_REQUEST_TRACE is unset. One per process and role. */
export function requestTrace(role: 'coord' | 'worker' | 'client', file: string | undefined = settings().requestTrace): RequestTrace | undefined {
  if (!file) return undefined;
  const key = `${role}:${file}`;
  const have = tracers.get(key);
  if (have) return have;
  const { push, flush } = jsonLines(file);
  const round = (x: number) => Math.round(x * 1000) / 1000;
  push({ t: round(nowMs()), p: role, pid: process.pid, ev: 'clock', mono_us: Number(process.hrtime.bigint() / 1000n) });
  const delay = monitorEventLoopDelay({ resolution: 1 });
  delay.enable();
  let elu: EventLoopUtilization = performance.eventLoopUtilization();
  let gcMs = 0;
  let gcMajor = 0;
  const gc = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      const kind = ((e as PerformanceEntry & { detail?: NodeGCPerformanceDetail }).detail)?.kind ?? 0;
      gcMs += e.duration;
      if (kind === constants.NODE_PERFORMANCE_GC_MAJOR) gcMajor++;
      if (e.duration >= GC_LINE_MS) {
        push({ t: round(performance.timeOrigin + e.startTime), p: role, pid: process.pid, ev: 'gc', ms: round(e.duration), kind: GC_KINDS[kind] ?? String(kind) });
      }
    }
  });
  gc.observe({ entryTypes: ['gc'] });
  const sampleLoop = () => {
    const e = performance.eventLoopUtilization(elu);
    elu = performance.eventLoopUtilization();
    const ms = (ns: number) => round(ns / 1e6);
    push({ t: round(nowMs()), p: role, pid: process.pid, ev: 'loop', p50: ms(delay.percentile(50)), p99: ms(delay.percentile(99)), max: ms(delay.max),
      elu: round(e.utilization), gc_ms: round(gcMs), gc_major: gcMajor });
    delay.reset();
    gcMs = 0;
    gcMajor = 0;
  };
  setInterval(sampleLoop, LOOP_MS).unref();
  // A process that lives less than a sampling interval still reports its loop once, as it exits.
  process.on('exit', () => {
    sampleLoop();
    flush();
  });
  const t: RequestTrace = {
    wants: (classRank, id) => classRank === 0 || hash(id) % SAMPLE === 0,
    event: (id, ev, details, at) => push({ t: round(at ?? nowMs()), p: role, id, ev, ...details }),
  };
  tracers.set(key, t);
  return t;
}
