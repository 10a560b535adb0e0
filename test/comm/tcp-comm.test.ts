// The TCP communicator between real processes on 127.0.0.1: collectives are correct and bitwise
// identical on every rank, failures (kill -9, abort, another group or epoch, length mismatch) reject fast
// with errors naming the peer.
import { afterEach, beforeAll, describe, expect, it } from 'vitest';

import { base64, fill, fromBf16, toBf16 } from './fixtures/data.mjs';
import { requireBuilt, startGroup } from './group.js';
import type { Group } from './group.js';

let group: Group | undefined;
afterEach(() => { group?.close(); group = undefined; });
beforeAll(() => requireBuilt());

// Every element summed in rank order 0..n-1 with f32 rounding at each step (what the comm promises).
function sumF32(seedBase: number, n: number, count: number): Float32Array {
  const acc = fill(seedBase, count);
  for (let r = 1; r < n; ++r) {
    const x = fill(seedBase + r, count);
    for (let i = 0; i < count; ++i) acc[i] += x[i]!;
  }
  return acc;
}

function sumBf16(seedBase: number, n: number, count: number): Uint16Array {
  const acc = fromBf16(toBf16(fill(seedBase, count)));
  for (let r = 1; r < n; ++r) {
    const x = fromBf16(toBf16(fill(seedBase + r, count)));
    for (let i = 0; i < count; ++i) acc[i] += x[i]!;
  }
  return toBf16(acc);
}

describe.each([2, 3, 4])('a group of %i processes', (n) => {
  it('all-reduces f32 (small and 16 MB) and bf16 in rank order, bitwise identical on every rank; gathers, broadcasts, sends', async () => {
    group = startGroup('collectives', n);
    const results = await group.waitAll('result', undefined, 60_000);
    for (const r of results) expect(r.error, `rank ${r.rank}`).toBeUndefined();
    const expected = {
      small: base64(sumF32(1, n, 1000)),
      large: base64(sumF32(101, n, 4 << 20)),
      bf: base64(sumBf16(201, n, 3001)),
      bfLarge: base64(sumBf16(301, n, 100003)),
    };
    for (const r of results) {
      expect(r.small, `rank ${r.rank} small`).toBe(expected.small);
      expect(r.large, `rank ${r.rank} 16 MB`).toBe(expected.large);
      expect(r.bf, `rank ${r.rank} bf16`).toBe(expected.bf);
      expect(r.bfLarge, `rank ${r.rank} bf16 large`).toBe(expected.bfLarge);
      expect(r.gathered).toEqual(Array.from({ length: n * 37 }, (_, i) => Math.floor(i / 37) + 1));
      expect(r.broadcast).toEqual([9, 8, 7, 6, 5]);
      expect(r.ring).toEqual([(r.rank + n - 1) % n, (r.rank + n - 1) % n]);
      expect(r.asyncError).toBeNull();
    }
    // Each rank exits on its own with its communicator still connected (teardown must be clean).
    expect(await group.exits()).toEqual(Array(n).fill(0));
    console.log(`tcp comm n=${n}: 16 MB f32 all-reduce ${results.map((r) => (r.largeMs as number).toFixed(0)).join('/')} ms`);
  });

  it('kill -9 of one rank makes the pending all-reduce of the others reject naming it', async () => {
    group = startGroup('kill', n);
    const victim = n - 1;
    const survivors = Array.from({ length: n - 1 }, (_, i) => i);
    await group.waitAll('victim-ready', [victim]);
    await group.waitAll('pending', survivors);
    const t0 = performance.now();
    group.procs[victim]!.kill('SIGKILL');
    for (const r of survivors) group.send(r, { type: 'killed' });
    const results = await group.waitAll('result', survivors, 10_000);
    const ms = performance.now() - t0;
    expect(ms).toBeLessThan(5000);
    for (const r of results) {
      expect(r.ok).toBe(false);
      expect(r.error).toMatch(new RegExp(`peer rank ${victim} \\(127\\.0\\.0\\.1:\\d+\\)`));
      expect(r.asyncError).toBe(r.error);
    }
  });
});

it('abort() rejects a pending recv at once, later calls fail, and the peer sees the connection close', async () => {
  group = startGroup('abort', 2);
  await group.waitAll('pending', [0]);
  await new Promise((r) => setTimeout(r, 200));  // the recv is really blocked in poll() by now
  group.send(0, { type: 'abort' });
  const [r0, r1] = await group.waitAll('result', [0, 1], 10_000);
  expect(r0!.ok).toBe(false);
  expect(r0!.error).toMatch(/tcp comm rank 0: recv: aborted/);
  expect(r0!.abortMs).toBeLessThan(200);
  expect(r0!.later).toMatch(/aborted/);
  expect(r1!.ok).toBe(false);
  expect(r1!.error).toMatch(/peer rank 0 \(127\.0\.0\.1:\d+\) closed the connection/);
});

it('refuses a peer of another group or membership epoch and names it on both sides', async () => {
  group = startGroup('connect', 2, { context: (r) => (r === 1 ? 'test-job:2' : 'test-job:1'), env: { CONNECT_TIMEOUT_MS: '1500' } });
  const [r0, r1] = await group.waitAll('result', [0, 1], 15_000);
  expect(r1!.ok).toBe(false);
  expect(r1!.error).toMatch(/connect to peer rank 0 at 127\.0\.0\.1:\d+: refused the handshake: another group or membership epoch/);
  expect(r0!.ok).toBe(false);
  expect(r0!.error).toMatch(/timed out after 1500 ms waiting for peer rank\(s\) 1 \(127\.0\.0\.1:\d+\) to connect/);
});

it('asyncError() names a peer that closed its connection while no op is pending (the CPU side of the NCCL async-error poll)', async () => {
  group = startGroup('idle-exit', 2);
  const [r0] = await group.waitAll('result', [0], 10_000);
  expect(r0!.before).toBeNull();
  expect(r0!.asyncError).toMatch(/tcp comm rank 0: peer rank 1 \(127\.0\.0\.1:\d+\) closed its connection/);
  expect(r0!.ms).toBeLessThan(5000);
});

it('a recv whose length differs from the send fails naming both sizes', async () => {
  group = startGroup('length', 2);
  const [, r1] = await group.waitAll('result', [0, 1], 10_000);
  expect(r1!.ok).toBe(false);
  expect(r1!.error).toMatch(/peer rank 0 .* sent send\/recv of 8 bytes where this rank expected send\/recv of 16 bytes/);
});
