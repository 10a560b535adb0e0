// A worker's own health checks (failure detection), run from one timer on the JS thread. The
// engine and the communicators run off that thread, so the timer keeps firing while a long native
// call is in flight — which is exactly why a wedged call would otherwise look healthy forever:
//   - step watchdog: a forward step (engine.step, collectives inside it included) that runs longer
//     than --step-timeout is declared wedged. A step that is merely long but under the limit is
//     left alone: the watchdog only looks at the clock, never interrupts progress.
//   - communicator errors: each communicator's asyncError() (ncclCommGetAsyncError on GPU, a socket
//     error or a peer's hang-up on the CPU TCP comm) is polled, so a broken communicator is
//     reported even when no call is waiting on it.
// Either finding is reported once per epoch through `unhealthy`; the worker then tells the
// coordinator and stops heartbeating, so even a lost report ends in a heartbeat timeout.
import type { Comm } from '../comm/comm.js';

export interface HealthOptions {
  /** 0 disables the step watchdog. */
  stepTimeoutMs: number;
  pollMs: number;
  unhealthy: (reason: string, kind: 'step' | 'comm') => void;
}

export class WorkerHealth {
  private stepSince = 0;
  private comms: { name: string; comm: Comm }[] = [];
  private reported = false;
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly o: HealthOptions) {
    this.timer = setInterval(() => this.check(), o.pollMs);
    this.timer.unref();
  }

  /** A new epoch: new communicators, nothing reported yet. */
  reset(comms: { name: string; comm: Comm }[]): void {
    this.comms = comms;
    this.stepSince = 0;
    this.reported = false;
  }

  /** Stops watching the current epoch's communicators (they are being aborted on purpose). */
  quiet(): void {
    this.comms = [];
    this.reported = true;
  }

  /** Runs one step under the watchdog. */
  async step<T>(run: () => Promise<T>): Promise<T> {
    this.stepSince = Date.now();
    try {
      return await run();
    } finally {
      this.stepSince = 0;
    }
  }

  private check(): void {
    if (this.reported) return;
    const now = Date.now();
    if (this.o.stepTimeoutMs > 0 && this.stepSince > 0 && now - this.stepSince > this.o.stepTimeoutMs) {
      this.reported = true;
      this.o.unhealthy(`step watchdog: a step has been running for ${now - this.stepSince} ms (--step-timeout ${this.o.stepTimeoutMs / 1000} s)`, 'step');
      return;
    }
    for (const { name, comm } of this.comms) {
      let err: string | null;
      try {
        err = comm.asyncError();
      } catch (e) {
        err = (e as Error).message;
      }
      if (err) {
        this.reported = true;
        this.o.unhealthy(`communicator ${name}: ${err}`, 'comm');
        return;
      }
    }
  }

  dispose(): void {
    clearInterval(this.timer);
  }
}
