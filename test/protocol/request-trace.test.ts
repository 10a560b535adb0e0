// The request trace's per-process lines: each second the event loop's delay and busy share with the
// garbage collector's pauses in that second, and each pause of 2 ms or more as a line of its own,
// so a benchmark can tell a loop stall that was a collection from one that was JS.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Session } from 'node:inspector/promises';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterAll, describe, expect, it } from 'vitest';

import { requestTrace } from '../../src/protocol/request-trace.js';

const dir = mkdtempSync(join(tmpdir(), 'ns-trace-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Line { t: number; p: string; pid: number; ev: string; ms?: number; kind?: string; gc_ms?: number; gc_major?: number; elu?: number; mono_us?: number }
const lines = (file: string): Line[] => readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Line);

describe('request trace', () => {
  it('reports a forced mark-compact as a gc line and in its second\'s loop line', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const file = join(dir, 'trace.jsonl');
    const trace = requestTrace('coord', file)!;
    trace.event('req-1', 'arrive', { cls: 'realtime' });
    // A few million live objects: marking them takes far longer than 2 ms on any machine.
    const live = Array.from({ length: 3_000_000 }, (_, i) => ({ i }));
    const before = Date.now();
    gc();
    expect(live.length).toBe(3_000_000);
    // The loop line comes once a second and the buffer is written every 200 ms.
    await new Promise((r) => setTimeout(r, 1_500));
    const all = lines(file);
    const majors = all.filter((l) => l.ev === 'gc' && l.kind === 'major');
    expect(majors.length).toBeGreaterThanOrEqual(1);
    for (const g of majors) {
      expect(g.p).toBe('coord');
      expect(g.pid).toBe(process.pid);
      expect(g.ms!).toBeGreaterThanOrEqual(2);
    }
    // The pause started at the forced collection (epoch ms, the same clock as the request events).
    expect(majors.some((g) => g.t >= before - 5 && g.t <= Date.now())).toBe(true);
    const loops = all.filter((l) => l.ev === 'loop');
    expect(loops.length).toBeGreaterThanOrEqual(1);
    expect(loops.reduce((s, l) => s + l.gc_major!, 0)).toBeGreaterThanOrEqual(1);
    expect(Math.max(...loops.map((l) => l.gc_ms!))).toBeGreaterThanOrEqual(Math.max(...majors.map((g) => g.ms!)) - 0.01);
    expect(all.find((l) => l.ev === 'arrive')).toMatchObject({ p: 'coord' });
  });

  it('writes a clock line on the monotonic clock that V8 CPU profiles stamp their samples with', async () => {
    const file = join(dir, 'clock.jsonl');
    const mono0 = Number(process.hrtime.bigint() / 1000n);
    const epoch0 = performance.timeOrigin + performance.now();
    requestTrace('worker', file);
    const mono1 = Number(process.hrtime.bigint() / 1000n);
    const session = new Session();
    session.connect();
    await session.post('Profiler.enable');
    await session.post('Profiler.start');
    const { profile } = await session.post('Profiler.stop');
    const mono2 = Number(process.hrtime.bigint() / 1000n);
    session.disconnect();
    await new Promise((r) => setTimeout(r, 300));
    const clock = lines(file).find((l) => l.ev === 'clock')!;
    expect(clock).toMatchObject({ p: 'worker', pid: process.pid });
    expect(clock.mono_us!).toBeGreaterThanOrEqual(mono0);
    expect(clock.mono_us!).toBeLessThanOrEqual(mono1);
    expect(Math.abs(clock.t - (epoch0 + (clock.mono_us! - mono0) / 1000))).toBeLessThan(5);
    // The profile began after the clock line and before the stop, on the same clock.
    expect(profile.startTime).toBeGreaterThanOrEqual(mono1);
    expect(profile.startTime).toBeLessThanOrEqual(mono2);
  });
});
