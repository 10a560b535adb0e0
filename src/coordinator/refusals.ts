// Refusals (a Join with a wrong token or certificate, a connection that never joins) are logged
// once per source and reason, then summarised at most once per interval: a flood of refused
// attempts costs one log line per second, not one per attempt, and the first one is still seen at once.
import { printable } from './log-text.js';

interface Window {
  count: number;
  timer: NodeJS.Timeout;
}

export class RefusalLog {
  private readonly windows = new Map<string, Window>();
  /** Refusals since start, for ClusterStatus/metrics. */
  total = 0;

  constructor(private readonly log: (line: string) => void, private readonly intervalMs = 1000) {}

  /** `source`: the peer address (or what stands for it); `what`: who was refused; `reason`: why. */
  refused(source: string, what: string, reason: string): void {
    this.total++;
    const key = `${source}\u0000${reason}`;
    const w = this.windows.get(key);
    if (w) {
      w.count++;
      return;
    }
    this.log(`coordinator: refused ${printable(what)} from ${printable(source, 80)}: ${printable(reason, 300)}`);
    const win: Window = {
      count: 0,
      timer: setTimeout(() => this.flush(key, source, reason), this.intervalMs),
    };
    win.timer.unref();
    this.windows.set(key, win);
  }

  private flush(key: string, source: string, reason: string): void {
    const w = this.windows.get(key);
    if (!w) return;
    if (w.count === 0) {
      this.windows.delete(key);
      return;
    }
    this.log(`coordinator: refused ${w.count} more from ${printable(source, 80)} in the last ${(this.intervalMs / 1000).toFixed(1)} s: ${printable(reason, 300)}`);
    w.count = 0;
    w.timer = setTimeout(() => this.flush(key, source, reason), this.intervalMs);
    w.timer.unref();
  }

  dispose(): void {
    for (const w of this.windows.values()) clearTimeout(w.timer);
    this.windows.clear();
  }
}
