#!/usr/bin/env node
// Where a process's event loop went when it was busy for long: the stretches of a V8 CPU profile
// (node --cpu-prof, or bench/coord-loop --profile) in which every sample ran code (none idle) for
// --min-ms or longer, each with the task it ran in (the first frames under the root: a timer, a
// socket read, the microtasks, the garbage collector) and the functions that took its samples.
// With --trace (a NODESPEED_REQUEST_TRACE file of the same run; its clock line for the profile's
// pid places the samples on the trace's epoch time line), it lists the stretches at the wall-clock
// times they ran, and for the --slowest realtime requests (arrive -> first token out, server side)
// the busy stretches of 1 ms or more that overlapped each one.
//   node bench/lib/long-tasks.mjs CPU.<date>.<time>.<pid>.0.001.cpuprofile [--trace FILE] [--min-ms 5] [--top 12] [--slowest 8]
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { parseArgs } from 'node:util';

const { values: a, positionals } = parseArgs({
  allowPositionals: true,
  options: { trace: { type: 'string' }, 'min-ms': { type: 'string', default: '5' }, top: { type: 'string', default: '12' }, slowest: { type: 'string', default: '8' } },
});
if (positionals.length !== 1) {
  console.error('usage: node bench/lib/long-tasks.mjs PROFILE.cpuprofile [--trace FILE] [--min-ms 5] [--top 12] [--slowest 8]');
  process.exit(2);
}
const file = positionals[0];
const profile = JSON.parse(readFileSync(file, 'utf8'));
const minMs = Number(a['min-ms']);

const nodes = new Map(profile.nodes.map((n) => [n.id, n]));
const parent = new Map();
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
const frame = (id) => {
  const cf = nodes.get(id).callFrame;
  return `${cf.functionName || '(anon)'} ${cf.url ? cf.url.split('/').pop() : ''}:${cf.lineNumber + 1}`;
};
/** The first `depth` frames under the root on the way to `id`: the task a sample ran in. */
function entry(id, depth = 3) {
  const chain = [];
  for (let i = id; parent.has(i); i = parent.get(i)) chain.push(i);
  return chain.reverse().slice(0, depth).map(frame).join(' > ');
}
const IDLE = new Set(['(idle)']);
const idle = (id) => IDLE.has(nodes.get(id).callFrame.functionName);

// Sample k ran from times[k] for deltas[k + 1] (V8 stamps a sample when it is taken).
const times = [];
let t = profile.startTime;
for (const d of profile.timeDeltas) times.push((t += d));
const stretches = [];
let from = -1;
for (let k = 0; k <= profile.samples.length; k++) {
  const busy = k < profile.samples.length && !idle(profile.samples[k]);
  if (busy && from < 0) from = k;
  if (!busy && from >= 0) {
    const end = k < times.length ? times[k] : times[k - 1];
    stretches.push({ from, to: k - 1, startUs: times[from], ms: (end - times[from]) / 1000 });
    from = -1;
  }
}

/** Sample counts of the tasks and of the functions (self) of one stretch, most first. */
function describe(s, n = 4) {
  const tasks = new Map();
  const self = new Map();
  for (let k = s.from; k <= s.to; k++) {
    const id = profile.samples[k];
    const e = entry(id);
    tasks.set(e, (tasks.get(e) ?? 0) + 1);
    const f = frame(id);
    self.set(f, (self.get(f) ?? 0) + 1);
  }
  const top = (m) => [...m].sort((x, y) => y[1] - x[1]).slice(0, n);
  return { samples: s.to - s.from + 1, tasks: top(tasks), self: top(self) };
}

// Epoch ms of a monotonic µs, from the trace's clock line of this profile's process.
let epochOf;
let trace;
const pid = Number(/\.(\d+)\.\d+\.\d+\.cpuprofile$/.exec(basename(file))?.[1]);
if (a.trace) {
  trace = readFileSync(a.trace, 'utf8').split('\n').filter(Boolean).flatMap((l) => {
    try {
      return [JSON.parse(l)];
    } catch {
      return [];
    }
  });
  const clock = trace.find((e) => e.ev === 'clock' && e.pid === pid);
  if (!clock) {
    console.error(`long-tasks: ${a.trace} has no clock line of pid ${pid} (the profile's file name); times stay monotonic`);
  } else epochOf = (us) => clock.t + (us - clock.mono_us) / 1000;
}

const windowMs = (times[times.length - 1] - profile.startTime) / 1000;
const busyMs = stretches.reduce((x, s) => x + s.ms, 0);
const long = stretches.filter((s) => s.ms >= minMs).sort((x, y) => y.ms - x.ms);
console.log(`${basename(file)}: ${(windowMs / 1000).toFixed(1)} s profiled, busy ${((100 * busyMs) / windowMs).toFixed(1)}%, ` +
  `${stretches.length} busy stretches, ${long.length} of ${minMs} ms or more (their time ${long.reduce((x, s) => x + s.ms, 0).toFixed(0)} ms)`);
const fmt = (pairs) => pairs.map(([k, c]) => `${c} ${k}`).join('; ');
// Over all the long stretches together: which tasks and functions their samples were in.
const all = long.reduce((acc, s) => {
  for (let k = s.from; k <= s.to; k++) {
    const id = profile.samples[k];
    const e = entry(id, 2);
    acc.tasks.set(e, (acc.tasks.get(e) ?? 0) + 1);
    acc.self.set(frame(id), (acc.self.get(frame(id)) ?? 0) + 1);
    acc.n++;
  }
  return acc;
}, { tasks: new Map(), self: new Map(), n: 0 });
const share = (m) => [...m].sort((x, y) => y[1] - x[1]).slice(0, 8).map(([k, c]) => `${((100 * c) / all.n).toFixed(0)}% ${k}`).join('; ');
if (all.n) console.log(`  all ${long.length} together (${all.n} samples), tasks: ${share(all.tasks)}\n    self: ${share(all.self)}`);
for (const s of long.slice(0, Number(a.top))) {
  const d = describe(s);
  const at = epochOf ? new Date(epochOf(s.startUs)).toISOString().slice(11, 23) : `+${((s.startUs - profile.startTime) / 1e6).toFixed(3)} s`;
  console.log(`  ${s.ms.toFixed(1)} ms at ${at} (${d.samples} samples)\n    tasks: ${fmt(d.tasks)}\n    self:  ${fmt(d.self)}`);
}

if (trace && epochOf) {
  const byId = new Map();
  for (const e of trace) {
    if (e.id === undefined) continue;
    const r = byId.get(e.id) ?? {};
    r[e.ev] ??= e;
    byId.set(e.id, r);
  }
  const realtime = [...byId.values()].filter((r) => r.arrive?.cls === 'realtime' && r.first_out)
    .sort((x, y) => (y.first_out.t - y.arrive.t) - (x.first_out.t - x.arrive.t)).slice(0, Number(a.slowest));
  const spans = stretches.filter((s) => s.ms >= 1).map((s) => ({ s, t0: epochOf(s.startUs), t1: epochOf(s.startUs) + s.ms }));
  console.log(`slowest realtime requests (arrive -> first out, server side) and this process's busy stretches of 1 ms or more during each:`);
  for (const r of realtime) {
    const t0 = r.arrive.t;
    const t1 = r.first_out.t;
    const hops = ['routed', 'recv', 'admitted', 'planned', 'sampled', 'sent', 'first_in', 'first_out'].filter((k) => r[k]).map((k) => `${k} +${(r[k].t - t0).toFixed(1)}`).join(', ');
    console.log(`  ${(t1 - t0).toFixed(1)} ms at ${new Date(t0).toISOString().slice(11, 23)}: ${hops}`);
    for (const { s, t0: b0 } of spans.filter((x) => x.t1 > t0 - 5 && x.t0 < t1)) {
      const off = b0 - t0;
      console.log(`    busy ${s.ms.toFixed(1)} ms from ${off < 0 ? '-' : '+'}${Math.abs(off).toFixed(1)}: ${fmt(describe(s, 2).tasks)}`);
    }
  }
}
