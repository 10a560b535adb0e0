// The V8 heap growth of the long-running processes: the coordinator's (launch) and every worker's.
// Their live heaps are small (20-50 MB) but the request traffic promotes several MB a second into
// the old generation (each request's state outlives the scavenges), and V8 sizes the next full
// collection's limit at 1.1-4x the live size: under a 64k tokens/s flood the coordinator ran a
// mark-compact every ~2 s, a 3-10 ms pause plus incremental steps of up to 8 ms on its event loop,
// which a realtime request's time to first token meets at its tail. Growing to (1 + N/100) x the
// live size makes them that much rarer for memory the host has (bench/coord-loop: every ~2 s at
// V8's factor, every ~7 s at 500). `--heap-growing-percent` is read at each collection, so setting
// it at start-up of the process is enough (the heap-size flags, read once when V8 starts, are not
// allowed in NODE_OPTIONS and would need a re-exec of the launch).
import { setFlagsFromString } from 'node:v8';

import { settings } from './index.js';

/** V8's flag as this process last set it (its own default: 0, V8's factor). */
let applied = 0;

/** Applies NODESPEED_HEAP_GROWING_PERCENT (or `percent`) to this process. */
export function applyHeapGrowth(percent = settings().heapGrowingPercent): void {
  if (percent === applied) return;
  setFlagsFromString(`--heap-growing-percent=${percent}`);
  applied = percent;
}
