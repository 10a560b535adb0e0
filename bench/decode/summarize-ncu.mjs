// Sums an `ncu --csv --metrics gpu__time_duration.sum[,dram__bytes_read.sum]` log by kernel and grid:
// where one decode step's GPU time goes and, with the DRAM metric, how fast each kernel read.
// Writes decode-profile-<gpu>.json (RESULTS_DIR) and prints it.
// usage: node bench/decode/summarize-ncu.mjs NCU_CSV [STEP_WALL_MS]
import { readFileSync } from 'node:fs';

import { writeResult } from '../../test/gpu/lib.mjs';

const [file, wall] = process.argv.slice(2);
const lines = readFileSync(file, 'utf8').split('\n').filter((l) => l.startsWith('"'));
const header = lines.shift()?.match(/"([^"]*)"/g)?.map((s) => s.slice(1, -1)) ?? [];
const col = (name) => {
  const i = header.indexOf(name);
  if (i < 0) throw new Error(`${file}: no "${name}" column (an ncu --csv log?)`);
  return i;
};
const iGrid = header.indexOf('Grid Size');
const iId = col('ID'), iName = col('Kernel Name'), iMetric = col('Metric Name'), iUnit = col('Metric Unit'), iValue = col('Metric Value');
const timeScale = { nsecond: 1e-3, ns: 1e-3, usecond: 1, us: 1, msecond: 1e3, ms: 1e3 };
const byteScale = { byte: 1, Kbyte: 1e3, Mbyte: 1e6, Gbyte: 1e9, KB: 1e3, MB: 1e6, GB: 1e9 };
// One record a launch (ncu's ID), then summed by kernel name.
const launchesById = new Map();
for (const l of lines) {
  const f = l.match(/"([^"]*)"/g).map((s) => s.slice(1, -1));
  const value = Number(f[iValue].replace(/,/g, ''));
  // The grid tells apart launches of one kernel on different matrices (o_proj and down_proj).
  const name = f[iName].replace(/\(.*$/, '').replace(/^void /, '').slice(0, 80) + (iGrid >= 0 ? ` grid ${f[iGrid]}` : '');
  const launch = launchesById.get(f[iId]) ?? { name, us: 0, bytes: null };
  if (f[iMetric] === 'gpu__time_duration.sum') {
    const scale = timeScale[f[iUnit]];
    if (scale === undefined) throw new Error(`${file}: unknown time unit ${f[iUnit]}`);
    launch.us = value * scale;
  } else if (f[iMetric] === 'dram__bytes_read.sum') {
    const scale = byteScale[f[iUnit]];
    if (scale === undefined) throw new Error(`${file}: unknown byte unit ${f[iUnit]}`);
    launch.bytes = value * scale;
  } else continue;
  launchesById.set(f[iId], launch);
}
const byKernel = new Map();
let totalUs = 0, totalBytes = 0;
for (const { name, us, bytes } of launchesById.values()) {
  const k = byKernel.get(name) ?? { kernel: name, launches: 0, us: 0, bytes: bytes === null ? null : 0 };
  k.launches++; k.us += us; if (k.bytes !== null) k.bytes += bytes ?? 0;
  byKernel.set(name, k);
  totalUs += us; totalBytes += bytes ?? 0;
}
// TB/s: DRAM bytes read over the kernel's own time (1 byte/us = 1e-6 TB/s).
const tbs = (bytes, us) => +(bytes / us / 1e6).toFixed(2);
const rows = [...byKernel.values()].sort((a, b) => b.us - a.us).map((k) => ({
  kernel: k.kernel, launches: k.launches, us: +k.us.toFixed(1), pct: +((100 * k.us) / totalUs).toFixed(1),
  ...(k.bytes === null ? {} : { mb: +(k.bytes / 1e6).toFixed(1), readTBs: tbs(k.bytes, k.us) }) }));
const hasBytes = rows.some((r) => r.mb !== undefined);
const out = { launches: launchesById.size, kernelSumUs: +totalUs.toFixed(1),
  ...(hasBytes ? { dramReadMB: +(totalBytes / 1e6).toFixed(1), readTBs: tbs(totalBytes, totalUs) } : {}),
  ...(wall ? { stepWallUs: Number(wall) * 1000, gapUs: +(Number(wall) * 1000 - totalUs).toFixed(1) } : {}), kernels: rows };
const doc = writeResult('decode-profile.json', {
  what: 'one batch-1 decode step of the 7B-shape model (CUDA graph replay), ncu --clock-control none --cache-control none, gpu__time_duration per kernel (and dram__bytes_read when recorded: readTBs = bytes / kernel time); stepWallUs: median step time without the profiler',
  ...out });
console.log(JSON.stringify(doc, null, 1));
