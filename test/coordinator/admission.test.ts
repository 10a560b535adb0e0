// Admission under a burst: a flood's requests validated together are admitted a slice per turn of
// the event loop, so a more urgent request that arrives a turn later goes before the rest of them.
import { describe, expect, it } from 'vitest';

import { AdmissionQueue } from '../../src/coordinator/admission.js';

const turn = () => new Promise<void>((r) => setImmediate(r));

describe('admission queue', () => {
  it('a burst goes a slice per turn; a realtime request arriving a turn later is admitted next, before the rest of the burst', async () => {
    const q = new AdmissionQueue();
    const order: string[] = [];
    const turns: number[] = [];
    let t = 0;
    const ticking = (async () => {
      for (; t < 200; t++) await turn();
    })();
    const burst = Array.from({ length: 100 }, (_, i) => q.turn(100).then(() => {
      order.push(`b${i}`);
      turns.push(t);
    }));
    await turn();  // the coordinator reads its connections again: the realtime request arrives
    const rt = q.turn(-100).then(() => order.push('rt'));
    await Promise.all([...burst, rt]);
    await ticking;
    // The first slice went at once, at most one more before the realtime request's turn came.
    const at = order.indexOf('rt');
    expect(at).toBeGreaterThan(0);
    expect(at).toBeLessThanOrEqual(16);
    // The burst kept its order, and no turn admitted more than a slice.
    expect(order.filter((x) => x !== 'rt')).toEqual(Array.from({ length: 100 }, (_, i) => `b${i}`));
    const perTurn = new Map<number, number>();
    for (const x of turns) perTurn.set(x, (perTurn.get(x) ?? 0) + 1);
    expect(Math.max(...perTurn.values())).toBeLessThanOrEqual(8);
    expect(q.size).toBe(0);
  });

  it('an idle queue admits at once', async () => {
    const q = new AdmissionQueue();
    let done = false;
    void q.turn(0).then(() => (done = true));
    await Promise.resolve();
    expect(done).toBe(true);
  });
});
