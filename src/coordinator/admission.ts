// The order in which validated requests are admitted (routed and sent to a replica): by priority,
// at most SLICE a turn of the event loop. Requests that arrive together -- a flood's hundreds, read
// from their connection in one go -- were routed one after the other before the coordinator read
// anything else, and routing is the costly part of admission (the router's estimate on every
// replica a class may use), so a realtime request arriving on another connection meanwhile waited
// for all of them. Past SLICE admissions in a turn, requests wait here, most urgent first, and the
// next SLICE go in the next turn, after the coordinator has read its connections again.
const SLICE = 8;

interface Waiter {
  priority: number;
  order: number;
  go: () => void;
}

export class AdmissionQueue {
  private readonly waiting: Waiter[] = [];
  private inTurn = 0;
  private arrivals = 0;

  /** Requests waiting for their turn (the API's queue limit counts them). */
  get size(): number {
    return this.waiting.length;
  }

  /** Resolves when the request may be admitted: at once while this turn has room and nobody waits. */
  async turn(priority: number): Promise<void> {
    if (this.waiting.length === 0 && this.inTurn < SLICE) {
      this.take();
      return;
    }
    await new Promise<void>((go) => {
      const w: Waiter = { priority, order: this.arrivals++, go };
      let i = this.waiting.length;
      while (i > 0 && (this.waiting[i - 1]!.priority > priority)) i--;
      this.waiting.splice(i, 0, w);
      if (this.inTurn === 0) this.take(false);
    });
  }

  /** Counts one admission in this turn; the first of a turn opens the next one (setImmediate: after the poll for I/O). */
  private take(count = true): void {
    if (this.inTurn === 0) setImmediate(() => this.next());
    if (count) this.inTurn++;
    else this.inTurn = Math.max(this.inTurn, 1);
  }

  private next(): void {
    this.inTurn = 0;
    while (this.waiting.length && this.inTurn < SLICE) {
      const w = this.waiting.shift()!;
      this.take();
      w.go();
    }
  }
}
