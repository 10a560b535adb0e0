// A serving worker: one process per slot, started by the launcher (`node dist/worker/main.js`).
// Reads its identity from the environment (RANK, NODESPEED_JOB_TOKEN, NODESPEED_COORDINATOR),
// joins the coordinator, receives its assignment, forms its communicators, loads only its shard,
// reports progress and readiness, and then runs steps until told to stop. Heartbeats flow from the
// first message on; the engine and the communicators run off the JS thread, so they keep flowing.
import { availableParallelism, hostname } from 'node:os';

import { Engine } from '../engine/engine.js';
import { loadTokenizer } from '../model/index.js';
import { loadAddon } from '../native/addon.js';
import type { Comm } from '../comm/comm.js';
import type { AssignmentMsg, StartMsg, SubmitMsg } from '../coordinator/control-messages.js';
import { ControlClient } from './control-client.js';
import { runDriver, runFollower } from './executor.js';
import type { ReplicaPosition } from './executor.js';
import { formWorkerGroup } from './groups.js';
import { Scheduler } from './scheduler.js';

function env(name: string): string {
  const v = process.env[name];
  if (!v) throw new Error(`worker: ${name} is not set (the worker is started by \`nodespeed launch\`)`);
  return v;
}

function log(line: string): void {
  process.stderr.write(`${line}\n`);
}

function deviceInfo() {
  const info = loadAddon().info();
  const gpu = info.cuda.available ? info.cuda.devices[0] : undefined;
  return gpu
    ? { kind: 'cuda', name: gpu.name, totalMemory: String(gpu.totalMemory), freeMemory: String(gpu.freeMemory), threads: info.cpu.threads }
    : { kind: 'cpu', name: info.cpu.simd, totalMemory: '0', freeMemory: '0', threads: info.cpu.threads };
}

class Worker {
  private engine: Engine | undefined;
  private comms: Comm[] = [];
  stopRequested = false;
  private wake: (() => void) | undefined;
  private scheduler: Scheduler | undefined;
  private readonly early: { submit: SubmitMsg[]; cancel: string[] } = { submit: [], cancel: [] };

  constructor(private readonly control: ControlClient, private readonly token: string) {}

  async run(a: AssignmentMsg): Promise<void> {
    const pos: ReplicaPosition = { stage: a.stage, tpRank: a.tpRank, tp: a.tp, pp: a.pp };
    const local = a.stage * a.tp + a.tpRank;
    const me = a.peers[local];
    const advertise = process.env.NODESPEED_ADVERTISE_ADDR ?? me?.host ?? hostname();
    const nonce = `${this.token}/${a.generation}`;
    const cudaVisible = process.env.CUDA_VISIBLE_DEVICES;
    const deviceIndex = cudaVisible && !cudaVisible.includes(',') ? 0 : a.deviceIndex;
    const started = new Promise<StartMsg>((resolve) => this.control.once('start', resolve));
    this.control.on('submit', (s) => this.onSubmit(s));
    this.control.on('cancel', (c) => this.onCancel(c.requestId));
    // Communicators first (cheap, and a missing peer shows up before minutes of loading).
    let tpComm: Comm | undefined;
    if (a.tp > 1)
      tpComm = await formWorkerGroup(this.control, { name: `r${a.replica}/tp/s${a.stage}`, rank: a.tpRank, size: a.tp,
        kind: a.device === 'cuda' ? 'nccl' : 'tcp', advertise, deviceIndex, nonce });
    let plane: Comm | undefined;
    if (a.tp * a.pp > 1)
      plane = await formWorkerGroup(this.control, { name: `r${a.replica}/replica`, rank: local, size: a.tp * a.pp, kind: 'tcp',
        advertise, deviceIndex, nonce });
    this.comms = [tpComm, plane].filter((c): c is Comm => !!c);
    const driver = local === 0;
    // CPU workers sharing a host split its cores instead of each spawning one thread per core
    // (oversubscribed pools spin against each other, and a TP all-reduce waits for the slowest).
    const perHost = Number(process.env.LOCAL_WORLD_SIZE ?? 1);
    const threads = a.threads || (a.device === 'cpu' && perHost > 1 ? Math.max(1, Math.floor(availableParallelism() / perHost)) : 0);
    const [engine, tokenizer] = await Promise.all([
      Engine.load(a.modelDir, {
        device: a.device as 'cpu' | 'cuda', dtype: a.dtype as 'auto', tpRank: a.tpRank, tpSize: a.tp,
        layerStart: a.layerStart, layerEnd: a.layerEnd, deviceIndex,
        ...(a.kvBlocks ? { kvBlocks: a.kvBlocks } : {}), ...(threads ? { threads } : {}),
        onProgress: (done, total) => this.control.send({ loadProgress: { generation: this.control.generation, done, total } }),
      }),
      driver ? loadTokenizer(a.modelDir) : Promise.resolve(undefined),
    ]);
    this.engine = engine;
    if (tpComm) engine.setTpComm(tpComm.native);
    this.control.send({ ready: { generation: this.control.generation, kvBlocks: engine.kvBlocks, kvBlockSize: engine.kvBlockSize,
      describe: engine.describe() } });
    const start = await started;
    if (!driver) return runFollower(engine, plane!, pos);
    const sched = new Scheduler(start.kvBlocks, start.kvBlockSize, tokenizer!, a.maxBatchTokens || 256, a.maxQueue || 1024,
      engine.maxPosition);
    this.scheduler = sched;
    this.control.load = () => sched.load();
    for (const s of this.early.submit) this.onSubmit(s);
    for (const c of this.early.cancel) this.onCancel(c);
    await runDriver(engine, plane ?? null, pos, sched, {
      emit: (updates) => {
        if (updates.length) this.control.send({ tokens: { generation: this.control.generation, updates } });
      },
      waitForWork: () => new Promise<void>((resolve) => {
        this.wake = resolve;
      }),
      stopping: () => this.stopRequested,
    });
  }

  private poke(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  private onSubmit(s: SubmitMsg): void {
    if (!this.scheduler) {
      this.early.submit.push(s);
      return;
    }
    const err = this.scheduler.submit(s);
    if (err) this.control.send({ tokens: { generation: this.control.generation, updates: [err] } });
    this.poke();
  }

  private onCancel(id: string): void {
    if (!this.scheduler) {
      this.early.cancel.push(id);
      return;
    }
    this.scheduler.cancel(id);
    this.poke();
  }

  requestStop(): void {
    this.stopRequested = true;
    this.poke();
  }

  /** A peer is gone: make every pending and later collective fail at once. */
  abortComms(): void {
    for (const c of this.comms) c.abort();
  }

  dispose(): void {
    this.engine?.dispose();
  }
}

async function main(): Promise<void> {
  const token = env('NODESPEED_JOB_TOKEN');
  const address = env('NODESPEED_COORDINATOR');
  const rank = Number(env('RANK'));
  if (!Number.isInteger(rank) || rank < 0) throw new Error(`worker: RANK must be a non-negative integer (got ${process.env.RANK})`);
  const heartbeatMs = Number(process.env.NODESPEED_HEARTBEAT_MS ?? 1000);
  const control = new ControlClient(address, {
    token, rank, host: process.env.NODESPEED_HOST ?? hostname(), pid: process.pid, device: deviceInfo(), listenAddresses: [],
  }, heartbeatMs);
  const worker = new Worker(control, token);
  let exitCode = 0;
  let signalStop: () => void = () => {};
  const stopped = new Promise<void>((resolve) => {
    signalStop = resolve;
  });
  control.on('closed', (err) => {
    if (err) {
      log(`worker ${rank}: control stream closed: ${err.message}`);
      exitCode = 1;
    }
    // After a Stop the stream closes normally while the driver still tells its peers to stop over
    // the data plane (the Stop handler's timer aborts if that hangs); otherwise abort at once.
    if (err || !worker.stopRequested) worker.abortComms();
    worker.requestStop();
    signalStop();
  });
  control.on('stop', () => {
    // The driver tells its peers over the data plane; give it a moment before forcing them.
    worker.requestStop();
    setTimeout(() => worker.abortComms(), 5000).unref();
    signalStop();
  });
  control.on('abort', (m) => {
    log(`worker ${rank}: abort: ${m.reason}`);
    exitCode = 1;
    worker.abortComms();
    worker.requestStop();
    signalStop();
  });
  const assignment = await Promise.race([
    new Promise<AssignmentMsg>((resolve) => control.once('assignment', resolve)),
    stopped.then(() => null),
  ]);
  let clean = false;
  if (assignment) {
    try {
      // Loading cannot be interrupted by the data plane; a stop during it ends the process.
      await Promise.race([worker.run(assignment).then(() => { clean = true; }), stopped.then(() => new Promise((r) => setTimeout(r, 6000)))]);
    } catch (err) {
      if (!worker.stopRequested) {
        log(`worker ${rank}: ${(err as Error).message}`);
        control.send({ error: { generation: control.generation, message: (err as Error).message, fatal: true } });
        exitCode = 1;
      }
    }
  }
  if (clean) worker.dispose();
  control.close();
  // Native threads of an aborted communicator or engine may still be parked; do not wait on them.
  setTimeout(() => process.exit(exitCode), 50).unref();
  process.exitCode = exitCode;
}

main().catch((err: unknown) => {
  log(`worker: ${(err as Error).message}`);
  process.exit(1);
});
