// How long this replica's steps take: ms = base + perToken x tokens, a least-squares fit over the
// driver's recent steps in which each older step weighs DECAY times the next one (a step is the
// time from launching it to its sampled tokens). The coordinator's router estimates a request's
// time to first token from it (coordinator/estimate.ts): one decode step at the replica's batch, a
// prefill chunk of so many tokens.
const DECAY = 0.97;

export class StepModel {
  private w = 0;
  private x = 0;
  private y = 0;
  private xx = 0;
  private xy = 0;

  observe(tokens: number, ms: number): void {
    if (!(ms >= 0) || !Number.isFinite(ms)) return;
    this.w = this.w * DECAY + 1;
    this.x = this.x * DECAY + tokens;
    this.y = this.y * DECAY + ms;
    this.xx = this.xx * DECAY + tokens * tokens;
    this.xy = this.xy * DECAY + tokens * ms;
  }

  /**
   * The fit, both terms >= 0. With steps of (nearly) one size only, the slope is unknown: it is 0
   * and the base is their mean time.
   */
  fit(): { stepMsBase: number; stepMsPerToken: number } {
    if (this.w === 0) return { stepMsBase: 0, stepMsPerToken: 0 };
    const mx = this.x / this.w;
    const my = this.y / this.w;
    const varX = this.xx / this.w - mx * mx;
    let slope = varX > 1e-6 * Math.max(1, mx * mx) ? (this.xy / this.w - mx * my) / varX : 0;
    slope = Math.max(0, slope);
    let base = my - slope * mx;
    if (base < 0) {
      // The line would start below 0: keep it through the origin instead.
      slope = this.xx > 0 ? this.xy / this.xx : 0;
      base = 0;
    }
    return { stepMsBase: base, stepMsPerToken: slope };
  }
}
