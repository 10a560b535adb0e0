// Loaded into every worker by `bench/soak/run.mjs --gc-every S` (NODE_OPTIONS=--import through the
// job's env file): a full GC every S seconds on the worker's main thread, then one line with the JS
// heap still in use after it, so a soak can tell memory a worker retains from garbage V8 has not
// collected yet. A diagnostic: it changes when workers collect, so such a run is not the soak's bar.
import { appendFileSync } from 'node:fs';
import { join } from 'node:path';
import v8 from 'node:v8';
import vm from 'node:vm';
import { isMainThread } from 'node:worker_threads';

const everyMs = Number(process.env.SOAK_GC_EVERY_MS);
const dir = process.env.SOAK_GC_DIR;
if (isMainThread && everyMs > 0 && dir) {
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc');
  const t0 = Date.now();
  setInterval(() => {
    const start = performance.now();
    gc();
    const gcMs = performance.now() - start;
    appendFileSync(join(dir, `${process.pid}.jsonl`),
      JSON.stringify({ t_ms: Date.now() - t0, gc_ms: +gcMs.toFixed(1), heap_used_kib: process.memoryUsage().heapUsed >> 10 }) + '\n');
  }, everyMs).unref();
}
