// NODESPEED_HEAP_GROWING_PERCENT (src/settings/heap.ts): a process that applies it runs fewer full
// collections under the same allocation, which is all the setting is for. A child process keeps a
// live set and churns objects that outlive the scavenges (promoted garbage, as a loaded coordinator
// makes), counting its mark-compacts with the setting at 0 (V8's own growth) and at 1000.
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

import { ROOT } from '../launcher/cli-helpers.js';

const CHILD = `
const { PerformanceObserver, constants } = require('node:perf_hooks');
import(${JSON.stringify(join(ROOT, 'dist', 'settings', 'heap.js'))}).then(({ applyHeapGrowth }) => {
  applyHeapGrowth();
  let majors = 0;
  new PerformanceObserver((l) => { for (const e of l.getEntries()) if (e.detail.kind === constants.NODE_PERFORMANCE_GC_MAJOR) majors++; })
    .observe({ entryTypes: ['gc'] });
  const live = Array.from({ length: 20000 }, (_, i) => ({ i, pad: new Array(64).fill(i) }));
  const ring = new Array(100000);  // each object lives 100k allocations: past two scavenges, so promoted
  for (let i = 0; i < 6000000; i++) ring[i % ring.length] = { i, pad: new Array(32).fill(i) };
  setTimeout(() => process.stdout.write(JSON.stringify({ majors, live: live.length, ring: ring.length })), 50);
});`;

function majors(percent: string): number {
  const out = execFileSync(process.execPath, ['-e', CHILD], { encoding: 'utf8', env: { ...process.env, NODESPEED_HEAP_GROWING_PERCENT: percent } });
  return (JSON.parse(out) as { majors: number }).majors;
}

describe('heap growth', () => {
  it('a larger growth factor makes full collections rarer under the same promoted garbage', () => {
    const own = majors('0');
    const grown = majors('1000');
    expect(own).toBeGreaterThanOrEqual(6);
    expect(grown * 2).toBeLessThanOrEqual(own);
  });
});
