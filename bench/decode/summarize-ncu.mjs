// Sums an `ncu --csv --metrics gpu__time_duration.sum` log by kernel name: where one decode
// step's GPU time goes. Writes decode-profile-<gpu>.json (RESULTS_DIR) and prints it.
// usage: node bench/decode/summarize-ncu.mjs NCU_CSV [STEP_WALL_MS]
import { readFileSync } from 'node:fs';

import { writeResult } from '../../test/gpu/lib.mjs';

const [file, wall] = process.argv.slice(2);
const lines = readFileSync(file, 'utf8').split('\n').filter((l) => l.startsWith('"'));
const header = lines.shift()?.match(/"([^"]*)"/g)?.map((s) => s.slice(1, -1)) ?? [];
const iName = header.indexOf('Kernel Name'), iMetric = header.indexOf('Metric Name'), iUnit = header.indexOf('Metric Unit'),
  iValue = header.indexOf('Metric Value');
const byKernel = new Map();
let totalUs = 0, launches = 0;
for (const l of lines) {
  const f = l.match(/"([^"]*)"/g).map((s) => s.slice(1, -1));
  if (f[iMetric] !== 'gpu__time_duration.sum') continue;
  const scale = { nsecond: 1e-3, ns: 1e-3, usecond: 1, us: 1, msecond: 1e3, ms: 1e3 }[f[iUnit]];
  if (scale === undefined) throw new Error(`${file}: unknown time unit ${f[iUnit]}`);
  const us = Number(f[iValue].replace(/,/g, '')) * scale;
  const name = f[iName].replace(/\(.*$/, '').replace(/^void /, '').slice(0, 80);
  const k = byKernel.get(name) ?? { kernel: name, launches: 0, us: 0 };
  k.launches++; k.us += us; byKernel.set(name, k);
  totalUs += us; launches++;
}
const rows = [...byKernel.values()].sort((a, b) => b.us - a.us).map((k) => ({ ...k, us: +k.us.toFixed(1), pct: +((100 * k.us) / totalUs).toFixed(1) }));
const out = { launches, kernelSumUs: +totalUs.toFixed(1), ...(wall ? { stepWallUs: Number(wall) * 1000, gapUs: +(Number(wall) * 1000 - totalUs).toFixed(1) } : {}), kernels: rows };
const doc = writeResult('decode-profile.json', {
  what: 'one batch-1 decode step of the 7B-shape model (CUDA graph replay), ncu --clock-control none --cache-control none, gpu__time_duration per kernel; stepWallUs: median step time without the profiler',
  ...out });
console.log(JSON.stringify(doc, null, 1));
