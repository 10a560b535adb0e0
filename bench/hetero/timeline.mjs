// Where a request's time to first token went, from a NODESPEED_REQUEST_TRACE file (src/protocol/request-trace.ts)
// and the load generators' own records (load.mjs: each request's id, client start and first-token
// times), for the requests that started in [from, to):
//   client_to_arrive   client start -> the coordinator's API call handler runs
//   arrive_to_routed   -> sent to a replica (validation, routing)
//   routed_to_recv     -> the replica's driver has it in its scheduler (control stream, worker event loop)
//   recv_to_admitted   -> admitted to the batch (waiting for a seat / KV, preemption)
//   admitted_to_planned-> put in a step
//   planned_to_sampled -> its first token computed (the steps before and its own)
//   sampled_to_sent    -> handed to the control stream (detokenizing, the step after)
//   sent_to_first_in   -> the coordinator's router has it (control stream, coordinator event loop)
//   first_in_to_out    -> written to the client's stream
//   out_to_client      -> the client's for-await sees it (gRPC, the client's event loop)
// Each as p50 / p90 / p99 / max over the requests of a class that have every event, plus each
// process's event-loop delay and utilization over the window (one line a second per process), its
// garbage collector's pauses, and for the slowest requests of each run (`slowest`): their stages
// and the GC pauses of any process that overlapped them (a stall is a collection, or JS).
import { readFileSync } from 'node:fs';

const STAGES = [
  ['client_to_arrive', 'client', 'arrive'], ['arrive_to_routed', 'arrive', 'routed'], ['routed_to_recv', 'routed', 'recv'],
  ['recv_to_admitted', 'recv', 'admitted'], ['admitted_to_planned', 'admitted', 'planned'], ['planned_to_sampled', 'planned', 'sampled'],
  ['sampled_to_sent', 'sampled', 'sent'], ['sent_to_first_in', 'sent', 'first_in'], ['first_in_to_out', 'first_in', 'first_out'],
  ['out_to_client', 'first_out', 'client_first'], ['total', 'client', 'client_first'],
];

function pct(values, p) {
  const v = [...values].sort((x, y) => x - y);
  return v.length ? v[Math.min(v.length - 1, Math.max(0, Math.ceil(p * v.length) - 1))] : null;
}
const r1 = (x) => (x === null ? null : Math.round(x * 10) / 10);
const summary = (xs) => ({ n: xs.length, p50: r1(pct(xs, 0.5)), p90: r1(pct(xs, 0.9)), p99: r1(pct(xs, 0.99)), max: r1(pct(xs, 1)) });

/** A JSON-lines file's records ([] when it is missing); a line cut by a process killed mid-write is skipped. */
function records(file) {
  let text;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return [];
  }
  const out = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    try {
      out.push(JSON.parse(line));
    } catch {
      /* cut */
    }
  }
  return out;
}

/** Reads the trace file: request events by id (the first of each kind) and the event-loop lines. */
export function readTrace(file) {
  const byId = new Map();
  const loops = [];
  const gcs = [];
  for (const e of records(file)) {
    if (e.ev === 'loop') {
      loops.push(e);
      continue;
    }
    if (e.ev === 'gc') {
      gcs.push(e);
      continue;
    }
    if (e.id === undefined) continue;  // a process's clock line
    let r = byId.get(e.id);
    if (!r) byId.set(e.id, (r = {}));
    if (r[e.ev] === undefined) r[e.ev] = e;
  }
  return { byId, loops, gcs };
}

/** How many of a run's slowest requests `slowest` lists. */
const SLOWEST = 10;

/**
 * The stage breakdown of the traced requests of each load run (`runs`: name -> load.mjs result)
 * that started in [from, to), and the event-loop lines of each process in that window.
 */
export function timeline(trace, runs, from, to) {
  const out = { stages: {}, loops: {}, gc: {}, slowest: {}, preempted: {} };
  const gcs = (trace.gcs ?? []).filter((g) => g.t + g.ms >= from && g.t < to);
  for (const [name, run] of Object.entries(runs)) {
    const per = Object.fromEntries(STAGES.map(([s]) => [s, []]));
    const done = [];
    let traced = 0;
    for (const q of run.requests) {
      if (!q.id || q.first === null || q.start < from || q.start >= to) continue;
      const ev = trace.byId.get(q.id);
      if (!ev) continue;
      traced++;
      const at = { ...Object.fromEntries(Object.entries(ev).map(([k, e]) => [k, e.t])), client: q.start, client_first: q.first };
      for (const [s, a, b] of STAGES) if (at[a] !== undefined && at[b] !== undefined) per[s].push(at[b] - at[a]);
      if (ev.preempted) out.preempted[name] = (out.preempted[name] ?? 0) + 1;
      done.push(at);
    }
    out.stages[name] = { traced, ...Object.fromEntries(STAGES.map(([s]) => [s, summary(per[s])])) };
    done.sort((x, y) => (y.client_first - y.client) - (x.client_first - x.client));
    out.slowest[name] = done.slice(0, SLOWEST).map((at) => ({
      total: r1(at.client_first - at.client),
      ...Object.fromEntries(STAGES.filter(([s, a, b]) => s !== 'total' && at[a] !== undefined && at[b] !== undefined).map(([s, a, b]) => [s, r1(at[b] - at[a])])),
      gc: gcs.filter((g) => g.t < at.client_first && g.t + g.ms > at.client).map((g) => `${g.p}-${g.pid} ${g.kind} ${r1(g.ms)}`),
    }));
  }
  for (const g of gcs) {
    const k = `${g.p}-${g.pid}`;
    const o = (out.gc[k] ??= {});
    const c = (o[g.kind] ??= { pauses: 0, ms: 0, max_ms: 0 });
    c.pauses++;
    c.ms = r1(c.ms + g.ms);
    c.max_ms = Math.max(c.max_ms, r1(g.ms));
  }
  const procs = new Map();
  for (const l of trace.loops) {
    if (l.t < from || l.t >= to) continue;
    const k = `${l.p}-${l.pid}`;
    if (!procs.has(k)) procs.set(k, []);
    procs.get(k).push(l);
  }
  for (const [k, ls] of procs) {
    out.loops[k] = { seconds: ls.length, delay_p99_ms: summary(ls.map((l) => l.p99)), delay_max_ms: r1(Math.max(...ls.map((l) => l.max))),
      elu_mean: Math.round((1000 * ls.reduce((s, l) => s + l.elu, 0)) / ls.length) / 1000, elu_max: Math.max(...ls.map((l) => l.elu)),
      gc_share: Math.round(ls.reduce((s, l) => s + (l.gc_ms ?? 0), 0) / ls.length) / 1000, mark_compacts: ls.reduce((s, l) => s + (l.gc_major ?? 0), 0) };
  }
  return out;
}

/**
 * What each replica driver's steps did in [from, to) (epoch ms), from a NODESPEED_STEP_TRACE file:
 * per driver pid, its steps and their time (`step_ms`: as the driver saw it, from its submission or
 * the previous step's result to its own result), the time between one step's end and the next
 * one's start (`gap_ms`: the device idles then, including the driver's idle waits for work), what a
 * step carried (tokens, decodes, sampled: the tokens it generated), and `busy`: the share of the
 * window the backend ran steps. Throughput is sampled / (run + gap) time, so a replica that
 * generates less in one phase than in another shows whether its steps got slower (run_ms at the
 * same tokens), carried less (sampled per step), or started later (gap_ms). A step's period splits
 * into `run_ms` (the addon's backend step: launches, device work, the copy back) and `host_ms`: how
 * long the device waited for the host before it, i.e. the engine's idle time since the previous
 * step ended (the trace's gap_ms, measured on the worker thread), over the steps the driver had
 * work for (not after_idle). A step submitted while the one before it ran starts microseconds after
 * it; a slower step then tells a slower device from a busier host. Traces written before the addon
 * measured the gap have no gap_ms: there host_ms is the step's wall time less run_ms (the queue and
 * return trips) and the gap is taken between the JS-side start and end times.
 */
export function steps(file, from, to) {
  const byPid = new Map();
  for (const s of records(file)) {
    if (s.epochMs < from || s.epochMs >= to) continue;
    if (!byPid.has(s.pid)) byPid.set(s.pid, []);
    byPid.get(s.pid).push(s);
  }
  const out = {};
  const mean = (xs) => (xs.length ? Math.round((1000 * xs.reduce((a, b) => a + b, 0)) / xs.length) / 1000 : null);
  for (const [pid, ss] of byPid) {
    ss.sort((a, b) => a.epochMs - b.epochMs);
    // gap_ms on the lines: the engine's own measure (its first step has none); else from the JS-side times.
    const native = ss.some((s) => s.gap_ms !== undefined);
    const gaps = [];
    for (let i = 1; i < ss.length; i++) {
      gaps.push(native ? ss[i].gap_ms ?? 0 : ss[i].epochMs - (ss[i - 1].epochMs + ss[i - 1].ms));
    }
    const ms = ss.map((s) => s.ms);
    const timed = ss.filter((s) => s.run_ms !== undefined);
    const host = native ? timed.filter((s) => s.gap_ms !== undefined && !s.after_idle).map((s) => s.gap_ms) : timed.map((s) => s.ms - s.run_ms);
    const split = timed.length ? {
      run_ms: { ...summary(timed.map((s) => s.run_ms)), mean: mean(timed.map((s) => s.run_ms)) },
      host_ms: { ...summary(host), mean: mean(host) },
      queue_ms_mean: mean(timed.map((s) => s.queue_ms)), return_ms_mean: mean(timed.map((s) => s.return_ms)),
    } : {};
    const inSteps = native ? timed.map((s) => s.run_ms) : ms;
    const sum = (k) => ss.reduce((a, s) => a + (s[k] ?? 0), 0);
    const spanS = (to - from) / 1000;
    out[`driver-${pid}`] = {
      steps: ss.length, steps_per_s: Math.round(ss.length / spanS), sampled_per_s: Math.round(sum('sampled') / spanS),
      busy: Math.round((1000 * inSteps.reduce((a, b) => a + b, 0)) / (to - from)) / 1000,
      step_ms: { ...summary(ms), mean: mean(ms) }, ...split, gap_ms: { ...summary(gaps), mean: mean(gaps), total: r1(gaps.reduce((a, b) => a + b, 0)) },
      per_step: { seqs: mean(ss.map((s) => s.seqs)), tokens: mean(ss.map((s) => s.tokens)), decodes: mean(ss.map((s) => s.decodes)), sampled: mean(ss.map((s) => s.sampled ?? 0)) },
      // Steps without a decode (every running sequence prefilling: a wave of admissions) and steps that sampled nothing.
      no_decode_steps: ss.filter((s) => s.decodes === 0).length, no_sample_steps: ss.filter((s) => (s.sampled ?? 1) === 0).length,
      // Steps that left less urgent classes out for a first prompt chunk (a class's exclusive_prefill).
      exclusive_steps: ss.filter((s) => s.exclusive).length,
    };
  }
  return out;
}

/**
 * Each driver's first step of each token count against the later steps of that count (the whole
 * launch's step file): a first use that runs slower paid for something once (cuBLAS choosing and
 * loading kernels for a GEMM row count the load did not warm). Split at `warmedRows` (the warm-up's
 * row counts): per side, how many counts had later steps, the first step's excess over their median
 * (ms, p50 / p90 / max) and how many first steps took more than twice it.
 */
export function firstUses(file, warmedRows = 256) {
  const byPid = new Map();
  for (const s of records(file)) {
    if (s.run_ms === undefined) continue;
    if (!byPid.has(s.pid)) byPid.set(s.pid, new Map());
    const byTokens = byPid.get(s.pid);
    if (!byTokens.has(s.tokens)) byTokens.set(s.tokens, []);
    byTokens.get(s.tokens).push(s.run_ms);
  }
  const out = {};
  for (const [pid, byTokens] of byPid) {
    const side = (keep) => {
      const excess = [];
      let doubled = 0;
      for (const [tokens, runs] of byTokens) {
        if (!keep(tokens) || runs.length < 2) continue;
        const later = pct(runs.slice(1), 0.5);
        excess.push(runs[0] - later);
        if (runs[0] > 2 * later) doubled++;
      }
      return { counts: excess.length, excess_ms: { p50: r1(pct(excess, 0.5)), p90: r1(pct(excess, 0.9)), max: r1(pct(excess, 1)) }, over_twice: doubled };
    };
    out[`driver-${pid}`] = { warmed: side((t) => t <= warmedRows), past_warmed: side((t) => t > warmedRows) };
  }
  return out;
}
