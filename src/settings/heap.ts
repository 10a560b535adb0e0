// The V8 heap growth of the long-running processes: the coordinator's (launch) and every worker's.
// Their live heaps are small (20-50 MB) but request traffic promotes several MB a second into the
// old generation (each request's state outlives the scavenges), and V8 sizes the next full
// collection's limit at 1.1-4x the live size: under a 64k tokens/s flood the coordinator ran a
// mark-compact every 2-4 s, a 4-11 ms pause plus incremental marking steps on its event loop,
// which a realtime request's time to first token met at its tail (bench/hetero on an H100: p99
// 2.4x its value without the flood at V8's factor, 1.05-1.33x at 1000). At (1 + N/100) x the live
// size they come every ~15-50 s instead, each longer (7-14 ms on a 2-core VM, 32-62 ms on a busy
// GPU host), with scavenges about twice as frequent, and the heap and the RSS climb to that size
// before the first one: bench/soak's 10 minutes saw the launch's RSS still growing 3-30 MiB a
// minute at 300-1000, so V8's own factor stays the default (docs/LAUNCHER.md).
// `--heap-growing-percent` is read at each collection, so setting it at start-up of the process is
// enough (the heap-size flags, read once when V8 starts, are not allowed in NODE_OPTIONS and would
// need a re-exec of the launch).
import { setFlagsFromString } from 'node:v8';

import { settings } from './index.js';

/** Applies NODESPEED_HEAP_GROWING_PERCENT to this process (0, the default, leaves V8's own factor). */
export function applyHeapGrowth(): void {
  const percent = settings().heapGrowingPercent;
  if (percent > 0) setFlagsFromString(`--heap-growing-percent=${percent}`);
}
