// What happened to each request class since launch (ClusterStatus classes, `nodespeed status`, the
// metrics): routings per group and how many overflowed past the class's first group, refusals,
// preemptions, finished requests, and the latency its clients saw: time to first token (accepted to
// first token) and inter-token latency (between two tokens of one stream; a message carrying k
// tokens k gaps of 1/k its wait), as percentiles over a window of recent samples.
import type { RequestClass } from './classes.js';

const WINDOW = 1024;
const WINDOW_MS = 10 * 60_000;

/** The latest samples (at most WINDOW, none older than WINDOW_MS) and their percentiles. */
export class LatencyWindow {
  private readonly values = new Float64Array(WINDOW);
  private readonly at = new Float64Array(WINDOW);
  private next = 0;
  private size = 0;

  add(ms: number, now = Date.now()): void {
    this.values[this.next] = ms;
    this.at[this.next] = now;
    this.next = (this.next + 1) % WINDOW;
    this.size = Math.min(WINDOW, this.size + 1);
  }

  /** count and the 50th, 90th and 99th percentiles (nearest rank) of the window; 0s when empty. */
  percentiles(now = Date.now()): { count: number; p50Ms: number; p90Ms: number; p99Ms: number } {
    const v: number[] = [];
    for (let i = 0; i < this.size; i++) if (now - this.at[i]! <= WINDOW_MS) v.push(this.values[i]!);
    if (!v.length) return { count: 0, p50Ms: 0, p90Ms: 0, p99Ms: 0 };
    v.sort((a, b) => a - b);
    const q = (p: number) => v[Math.min(v.length - 1, Math.max(0, Math.ceil(p * v.length) - 1))]!;
    return { count: v.length, p50Ms: q(0.5), p90Ms: q(0.9), p99Ms: q(0.99) };
  }
}

export class ClassCounters {
  routed = 0;
  overflowed = 0;
  rejected = 0;
  preemptions = 0;
  finished = 0;
  readonly routedByGroup = new Map<string, number>();
  readonly overflowByGroup = new Map<string, number>();
  readonly ttft = new LatencyWindow();
  readonly itl = new LatencyWindow();

  constructor(readonly cls: RequestClass) {}

  route(group: string, overflow: boolean): void {
    this.routed++;
    this.routedByGroup.set(group, (this.routedByGroup.get(group) ?? 0) + 1);
    if (overflow) {
      this.overflowed++;
      this.overflowByGroup.set(group, (this.overflowByGroup.get(group) ?? 0) + 1);
    }
  }
}

export class ClassStats {
  private readonly byName = new Map<string, ClassCounters>();

  constructor(classes: RequestClass[]) {
    for (const c of classes) this.byName.set(c.name, new ClassCounters(c));
  }

  of(cls: RequestClass): ClassCounters {
    let c = this.byName.get(cls.name);
    if (!c) this.byName.set(cls.name, (c = new ClassCounters(cls)));
    return c;
  }

  all(): ClassCounters[] {
    return [...this.byName.values()];
  }
}
