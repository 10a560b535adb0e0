// `node --import` hook of bench/worker-alloc (through NODE_OPTIONS): in a worker process (dist/worker/main.js)
// only, samples every allocation (those the collector freed included; with WORKER_ALLOC_SURVIVORS=1
// only those no scavenge freed) from WORKER_ALLOC_START_S to WORKER_ALLOC_END_S after the worker
// started, with its event-loop utilization over the same window, and writes both to
// $WORKER_ALLOC_DIR/worker-<pid>.heapprofile.json.
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import { performance } from 'node:perf_hooks';

const dir = process.env.WORKER_ALLOC_DIR;
if (dir && process.argv[1]?.endsWith('worker/main.js')) {
  const startMs = Number(process.env.WORKER_ALLOC_START_S ?? 15) * 1000;
  const endMs = Number(process.env.WORKER_ALLOC_END_S ?? 25) * 1000;
  const session = new Session();
  session.connect();
  setTimeout(async () => {
    await session.post('HeapProfiler.startSampling', { samplingInterval: 1024, includeObjectsCollectedByMajorGC: true,
      includeObjectsCollectedByMinorGC: process.env.WORKER_ALLOC_SURVIVORS !== '1' });
    const t0 = performance.timeOrigin + performance.now();
    const elu0 = performance.eventLoopUtilization();
    setTimeout(async () => {
      const elu = performance.eventLoopUtilization(elu0).utilization;
      const ms = performance.timeOrigin + performance.now() - t0;
      const { profile } = await session.post('HeapProfiler.stopSampling');
      writeFileSync(`${dir}/worker-${process.pid}.heapprofile.json`, JSON.stringify({ t0, ms, elu, profile }));
    }, endMs - startMs).unref();
  }, startMs).unref();
}
