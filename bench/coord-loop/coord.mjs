// The coordinator side of bench/coord-loop/run.mjs: a real Coordinator (public gRPC API, control
// plane with mutual TLS) in this process, forked by run.mjs over IPC. It tells the parent its ports
// and a worker identity for slot 0; on 'measure' it samples its own event loop (busy share,
// monitorEventLoopDelay percentiles) and, with --profile, a CPU profile of the window only
// (node:inspector), and answers 'stats' with them.
import { randomBytes } from 'node:crypto';
import { Session } from 'node:inspector/promises';
import { readFileSync } from 'node:fs';
import { PerformanceObserver, constants, monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const o = JSON.parse(process.argv[2]);
// --dist: another build of the coordinator (an A/B against a build kept aside).
const dist = (p) => join(o.dist ?? join(root, 'dist'), p);
// The launch's process applies NODESPEED_HEAP_GROWING_PERCENT before it starts the coordinator; so does this one.
const heap = await import(dist('settings/heap.js')).catch(() => null);  // a --dist build from before the setting has none
heap?.applyHeapGrowth();
const { Coordinator } = await import(dist('coordinator/server.js'));
const { planLayout } = await import(dist('coordinator/layout.js'));
const { loadModelConfig } = await import(dist('model/config.js'));
const { JobPki } = await import(dist('launcher/pki.js'));
const { DEFAULT_REQUEST_LIMITS } = await import(dist('protocol/limits.js'));

const config = loadModelConfig(o.model);
const layout = planLayout(config, [{ host: 'localhost', slots: 1 }], { tp: 1, pp: 1, replicas: 1 });
const group = layout.groups[0].name;
const pki = await JobPki.create();
const coord = new Coordinator({
  layout, token: 'bench-token', modelDir: o.model, maxQueue: 100_000,
  heartbeatIntervalMs: 1000, heartbeatTimeoutMs: 60_000, requestTimeoutMs: 60_000, log: () => {},
  bind: '127.0.0.1', port: 0, limits: DEFAULT_REQUEST_LIMITS,
  control: { host: '127.0.0.1', port: 0, identity: await pki.serverIdentity(), key: randomBytes(32) },
  classes: [
    { name: 'realtime', priority: -100, groups: [group], ttftP99Ms: 1000 },
    { name: 'batch', priority: 100, groups: [group], streamIntervalMs: o.streamMs },
  ],
  model: { name: 'bench', path: o.model, architecture: config.architecture, contextLength: config.maxPosition, vocabSize: config.vocabSize,
    numLayers: config.numLayers, dtype: 'f32', encode: async () => [1, 2, 3], promptBytes: 1 << 20 },
});
await coord.start();
const worker = await pki.workerIdentity(0);

// Tokens the coordinator took in from its worker (the rate the window ran at).
let tokensIn = 0;
coord.members.on('tokens', (_r, msg) => {
  for (const u of msg.updates) tokensIn += u.tokenIds.length;
});

/**
 * The main thread's CPU ms (Linux /proc: user + system ticks of the thread whose id is the pid), or
 * NaN elsewhere: unlike the loop's busy share it does not grow while the thread waits for a core.
 */
function mainThreadCpuMs() {
  try {
    const stat = readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) * 10;  // utime, stime in USER_HZ (100 on Linux)
  } catch {
    return NaN;
  }
}

// Garbage collections (minor: scavenges, whose count follows the bytes allocated; the rest) and their
// pause ms. Of the rest, the mark-compacts (kind major: their atomic pause, the loop's longest
// stalls) are counted apart, with the longest pause of each kind in the window.
const gc = { minor: 0, major: 0, markCompact: 0, ms: 0, markCompactMs: 0, minorMaxMs: 0, markCompactMaxMs: 0 };
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    const kind = e.detail?.kind;
    if (kind === constants.NODE_PERFORMANCE_GC_MINOR) {
      gc.minor++;
      gc.minorMaxMs = Math.max(gc.minorMaxMs, e.duration);
    } else gc.major++;
    if (kind === constants.NODE_PERFORMANCE_GC_MAJOR) {
      gc.markCompact++;
      gc.markCompactMs += e.duration;
      gc.markCompactMaxMs = Math.max(gc.markCompactMaxMs, e.duration);
    }
    gc.ms += e.duration;
  }
}).observe({ entryTypes: ['gc'] });

let window;
process.on('message', async (m) => {
  if (m.cmd === 'measure') {
    const delay = monitorEventLoopDelay({ resolution: 1 });
    delay.enable();
    let session;
    if (o.heapProfile) {
      session = new Session();
      session.connect();
      // Every allocation sampled, also those a scavenge collected: what the young generation's churn is
      // made of; or ('survivors') only what no scavenge collected: what was promoted to the old
      // generation (collected by a mark-compact, or live at the end), what makes mark-compacts come.
      await session.post('HeapProfiler.startSampling', { samplingInterval: 1024, includeObjectsCollectedByMajorGC: true,
        includeObjectsCollectedByMinorGC: o.heapProfile !== 'survivors' });
    } else if (o.profile) {
      session = new Session();
      session.connect();
      await session.post('Profiler.enable');
      await session.post('Profiler.setSamplingInterval', { interval: 200 });
      await session.post('Profiler.start');
    }
    gc.minorMaxMs = gc.markCompactMaxMs = 0;
    window = { delay, session, elu: performance.eventLoopUtilization(), t0: performance.now(), tokens0: tokensIn, cpu0: process.cpuUsage(), main0: mainThreadCpuMs(), gc0: { ...gc } };
  } else if (m.cmd === 'stats') {
    const w = window;
    const elu = performance.eventLoopUtilization(w.elu);
    const secs = (performance.now() - w.t0) / 1000;
    const cpu = process.cpuUsage(w.cpu0);
    w.delay.disable();
    const ms = (ns) => Math.round(ns / 1e4) / 100;
    let profile;
    if (w.session && o.heapProfile) {
      ({ profile } = await w.session.post('HeapProfiler.stopSampling'));
      w.session.disconnect();
    } else if (w.session) {
      ({ profile } = await w.session.post('Profiler.stop'));
      w.session.disconnect();
    }
    const tokens = tokensIn - w.tokens0;
    process.send({ stats: {
      secs, elu: elu.utilization, cpuShare: (cpu.user + cpu.system) / 1e6 / secs, tokensPerS: tokens / secs,
      mainCpuShare: (mainThreadCpuMs() - w.main0) / 1000 / secs, mainCpuUsPerToken: ((mainThreadCpuMs() - w.main0) * 1000) / tokens,
      delayMs: { p50: ms(w.delay.percentile(50)), p99: ms(w.delay.percentile(99)), max: ms(w.delay.max), mean: ms(w.delay.mean) },
      store: coord.store.size,
      gc: { minorPer100kTokens: ((gc.minor - w.gc0.minor) * 1e5) / tokens, major: gc.major - w.gc0.major, pauseShare: (gc.ms - w.gc0.ms) / 1000 / secs,
        markCompacts: gc.markCompact - w.gc0.markCompact, markCompactsPer100kTokens: ((gc.markCompact - w.gc0.markCompact) * 1e5) / tokens,
        markCompactMaxMs: gc.markCompactMaxMs, markCompactMs: gc.markCompactMs - w.gc0.markCompactMs, minorMaxMs: gc.minorMaxMs },
    }, profile });
  } else if (m.cmd === 'stop') {
    await coord.stop();
    process.exit(0);
  }
});
process.send({ ready: { port: coord.port, controlPort: coord.controlPort, identity: worker } });
