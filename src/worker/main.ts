// A serving worker: one process per slot, started by the launcher (`node dist/worker/main.js`).
// Reads its identity from the environment (RANK, NODESPEED_JOB_TOKEN, NODESPEED_COORDINATOR),
// joins the coordinator, receives its assignment, forms its communicators, loads only its shard,
// reports progress and readiness, and at Start hands over to its replica's step loop
// (replica.ts) until told to stop. Heartbeats flow from the first message on; the engine and the
// communicators run off the JS thread, so they keep flowing.
//
// A worker lives through membership epochs. When its replica loses a peer, the coordinator aborts
// the epoch; a surviving worker keeps its process and its loaded shard, waits for the next epoch's
// assignment (fresh communicators with a new unique id, a spare in the lost peer's place) and
// serves again. A spare is a worker that joined and got no assignment yet: it waits, heartbeating,
// until the coordinator hands it a lost rank. The step watchdog and the communicator poll
// (health.ts) report a wedged step or a broken communicator.
import { availableParallelism, hostname } from 'node:os';

import { Engine, resolveDevice } from '../engine/engine.js';
import { TokenizerPool, loadTokenizer } from '../model/index.js';
import type { QuantizeChoice, ReplayedText, Tokenizer } from '../model/index.js';
import type { KvCacheDtypeChoice } from '../model/precision.js';
import { loadAddon } from '../native/addon.js';
import type { Comm } from '../comm/comm.js';
import type { Assignment, Start, Submit, TokenUpdate } from '../protocol/control.js';
import { takeJobSecrets } from '../protocol/job-secrets.js';
import { FinishReason } from '../protocol/lifecycle.js';
import { ControlClient } from './control-client.js';
import { formWorkerGroup } from './groups.js';
import { WorkerHealth } from './health.js';
import { Replica } from './replica.js';
import { applyHeapGrowth } from '../settings/heap.js';
import { settings } from '../settings/index.js';

function required(name: string, v: string | undefined = process.env[name]): string {
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

/** An assignment's shard: a survivor re-formed with the same one keeps its loaded engine. */
function shardKey(a: Assignment): string {
  return [a.modelDir, a.dtype, a.device, a.stage, a.tpRank, a.tp, a.layerStart, a.layerEnd, a.kvBlocks, a.threads, a.quantize,
    a.kvCacheDtype].join('/');
}

/**
 * One membership epoch of this worker: aborted when the coordinator gives up on it. Requests that
 * arrive before its replica serves wait here, then go to the replica's driver.
 */
/** A replay with more tokens than this rebuilds its text in a tokenizer thread instead of on the event loop. */
const REPLAY_ON_LOOP = 64;

class Epoch {
  aborted = false;
  private replica: Replica | undefined;
  private readonly early: { submit: Submit[]; cancel: string[] } = { submit: [], cancel: [] };
  private rejectAborted!: (err: Error) => void;
  /** Rejects when the epoch is aborted: raced against every wait that only the coordinator ends. */
  readonly abortedSignal = new Promise<never>((_, reject) => (this.rejectAborted = reject));

  /** Replays whose stop-checker text a tokenizer thread is rebuilding: request id → cancelled meanwhile. */
  private readonly replaying = new Map<string, { cancelled: boolean }>();

  /** `replay`: a replayed request's text, rebuilt off the event loop (a long one would delay the heartbeats). */
  constructor(readonly id: string, private readonly refuse: (update: TokenUpdate) => void,
    private readonly replay: (ids: number[]) => Promise<ReplayedText>) {
    this.abortedSignal.catch(() => {});
  }

  /** The replica serves: it takes the requests that came early, and every later one. */
  serve(replica: Replica): void {
    this.replica = replica;
    for (const s of this.early.submit) this.submit(s);
    for (const id of this.early.cancel) this.cancel(id);
  }

  submit(s: Submit): void {
    if (!this.replica) this.early.submit.push(s);
    else if (!this.replica.isDriver) return;
    else if (s.generatedIds.length > REPLAY_ON_LOOP) this.submitReplay(this.replica, s);
    else {
      const refused = this.replica.submit(s);
      if (refused) this.refuse(refused);
    }
  }

  private submitReplay(replica: Replica, s: Submit): void {
    if (this.replaying.has(s.requestId)) return; // duplicate delivery
    const state = { cancelled: false };
    this.replaying.set(s.requestId, state);
    void this.replay(s.generatedIds).then((replayed) => {
      this.replaying.delete(s.requestId);
      if (state.cancelled || this.aborted) return;
      const refused = replica.submit(s, replayed);
      if (refused) this.refuse(refused);
    }, (err: unknown) => {
      this.replaying.delete(s.requestId);
      if (!state.cancelled && !this.aborted) this.refuse({ requestId: s.requestId, tokenIds: [], text: '', index: 0,
        finishReason: FinishReason.FINISH_REASON_UNSPECIFIED, error: `replay: ${(err as Error).message}`, preempted: false, logprobs: [] });
    });
  }

  cancel(id: string): void {
    if (!this.replica) this.early.cancel.push(id);
    else if (this.replica.isDriver) {
      const pending = this.replaying.get(id);
      if (pending) pending.cancelled = true;
      else this.replica.cancel(id);
    }
  }

  /** Ends the replica's loop (the driver tells the other ranks). */
  stop(): void {
    this.replica?.stop();
  }

  abort(reason: string): void {
    if (this.aborted) return;
    this.aborted = true;
    this.rejectAborted(new Error(`generation ${this.id} aborted: ${reason}`));
    this.stop();
  }
}

class Worker {
  private engine: Engine | undefined;
  private engineKey = '';
  private tokenizer: Tokenizer | undefined;
  /** The driver's tokenizer thread (replays), started on the first long replay. */
  private tokenizerThread: Promise<TokenizerPool> | undefined;
  private comms: Comm[] = [];
  private epoch: Epoch | undefined;
  stopRequested = false;
  /** Set once this worker has served (got Start): a later failure waits to be re-formed instead of exiting. */
  served = false;

  /** `key`: the job's data-plane key, which every peer of this worker's communicators must prove it holds. */
  constructor(private readonly control: ControlClient, private readonly key: Uint8Array, readonly health: WorkerHealth) {
    this.control.on('submit', (s) => {
      if (s.epoch === this.epoch?.id) this.epoch.submit(s);
    });
    this.control.on('cancel', (c) => this.epoch?.cancel(c.requestId));
  }

  get epochAborted(): boolean {
    return this.epoch?.aborted ?? false;
  }

  /**
   * Runs one epoch: forms the communicators, loads the shard (or keeps the loaded one), reports
   * ready, and at Start hands over to the replica's step loop. Resolves when told to stop, rejects
   * on a failure or when the epoch is aborted.
   */
  async run(a: Assignment): Promise<void> {
    const epoch = new Epoch(a.epoch, (update) => this.control.send({ tokens: { epoch: a.epoch, updates: [update] } }),
      async (ids) => (await (this.tokenizerThread ??= TokenizerPool.start(a.modelDir, 1))).replay(ids));
    this.epoch = epoch;
    const started = Promise.race([new Promise<Start>((resolve) => {
      const on = (s: Start) => {
        if (s.epoch !== a.epoch) return;
        this.control.off('start', on);
        resolve(s);
      };
      this.control.on('start', on);
      void epoch.abortedSignal.catch(() => this.control.off('start', on));
    }), epoch.abortedSignal]);
    // Awaited only once loaded: a failure before then must not leave it rejected unhandled (a stack trace).
    started.catch(() => {});
    // Before the communicators: without a GPU, NCCL's "unavailable" would be the error, not the cause.
    if (a.device === 'cuda') {
      try {
        resolveDevice('cuda', loadAddon().info());
      } catch (err) {
        throw new Error(`${(err as Error).message} on ${hostname()}`);
      }
    }
    // Communicators first (cheap, and a missing peer shows up before minutes of loading).
    const { tpComm, plane } = await this.formGroups(a, epoch);
    const driver = a.stage === 0 && a.tpRank === 0;
    const engine = await this.loadShard(a);
    if (driver && !this.tokenizer) this.tokenizer = await loadTokenizer(a.modelDir);
    if (epoch.aborted) throw new Error(`generation ${a.epoch} aborted while loading`);
    if (tpComm) engine.setTpComm(tpComm.native);
    const p2p = tpComm?.native.p2p;  // NCCL: whether the one-shot P2P collectives are on, or why not
    this.control.send({ ready: { epoch: a.epoch, kvBlocks: engine.kvBlocks, kvBlockSize: engine.kvBlockSize, kvWindowBlocks: engine.kvWindowBlocks,
      describe: engine.describe() + (p2p ? `; tp comm: ${p2p}` : '') } });
    const start = await started;
    this.served = true;
    const replica = new Replica(engine, plane ?? null, { stage: a.stage, tpRank: a.tpRank, tp: a.tp, pp: a.pp }, {
      watch: (run) => this.health.step(run),
      ...(driver ? {
        driver: {
          tokenizer: this.tokenizer!, kvBlocks: start.kvBlocks, kvBlockSize: start.kvBlockSize, kvWindowBlocks: start.kvWindowBlocks,
          maxBatchTokens: a.maxBatchTokens || 256, maxQueue: a.maxQueue || 1024, maxSeqs: a.maxSeqs,
          emit: (updates) => {
            if (updates.length && !epoch.aborted) this.control.send({ tokens: { epoch: a.epoch, updates } });
          },
        },
      } : {}),
    });
    if (driver) this.control.load = () => replica.load()!;
    epoch.serve(replica);
    if (this.stopRequested || epoch.aborted) replica.stop();
    await replica.run();
    if (driver && epoch.aborted) throw new Error(`generation ${a.epoch} aborted`);
  }

  /**
   * The epoch's communicators, met through the coordinator: "tp" (the ranks of this pipeline stage:
   * the engine's collectives) and "replica" (every rank of the replica: the data plane).
   */
  private async formGroups(a: Assignment, epoch: Epoch): Promise<{ tpComm?: Comm; plane?: Comm }> {
    const local = a.stage * a.tp + a.tpRank;
    const advertise = settings().advertiseAddr ?? a.peers[local]?.host ?? hostname();
    const deviceIndex = this.deviceIndex(a);
    // Each group's handshake is keyed by the job's secret and bound to the group and epoch: a peer
    // of another job, another group or an older epoch cannot connect to this one.
    const group = (name: string) => ({ name, context: `${name}@${a.epoch}`, key: this.key, advertise, deviceIndex,
      encrypt: a.encryptDataPlane ? 'cross-host' as const : 'off' as const, log });
    let tpComm: Comm | undefined;
    if (a.tp > 1)
      tpComm = await Promise.race([formWorkerGroup(this.control, { ...group(`r${a.replica}/tp/s${a.stage}`), rank: a.tpRank, size: a.tp,
        kind: a.device === 'cuda' ? 'nccl' : 'tcp' }), epoch.abortedSignal]);
    if (tpComm) this.comms.push(tpComm);
    let plane: Comm | undefined;
    if (a.tp * a.pp > 1)
      plane = await Promise.race([formWorkerGroup(this.control, { ...group(`r${a.replica}/replica`), rank: local, size: a.tp * a.pp, kind: 'tcp' }),
        epoch.abortedSignal]);
    if (plane) this.comms.push(plane);
    this.health.reset([...(tpComm ? [{ name: `r${a.replica}/tp/s${a.stage}`, comm: tpComm }] : []),
      ...(plane ? [{ name: `r${a.replica}/replica`, comm: plane }] : [])]);
    return { ...(tpComm ? { tpComm } : {}), ...(plane ? { plane } : {}) };
  }

  private deviceIndex(a: Assignment): number {
    const cudaVisible = process.env.CUDA_VISIBLE_DEVICES;
    return cudaVisible && !cudaVisible.includes(',') ? 0 : a.deviceIndex;
  }

  /** This rank's shard: the one already loaded when the assignment keeps it (a survivor re-formed in place). */
  private async loadShard(a: Assignment): Promise<Engine> {
    const key = shardKey(a);
    if (this.engine && this.engineKey !== key) {
      this.engine.dispose();
      this.engine = undefined;
    }
    if (this.engine) {
      this.control.send({ loadProgress: { epoch: a.epoch, done: 1, total: 1 } });
      return this.engine;
    }
    // A worker pinned by the launcher runs one thread per core it was given. Unpinned CPU workers
    // sharing a host split its cores instead of each spawning one thread per core (oversubscribed
    // pools spin against each other, and a TP all-reduce waits for the slowest).
    const bound = settings().boundCores;
    const perHost = Number(process.env.LOCAL_WORLD_SIZE ?? 1);
    const threads = a.threads || (a.device !== 'cpu' ? 0 : bound || (perHost > 1 ? Math.max(1, Math.floor(availableParallelism() / perHost)) : 0));
    this.engine = await Engine.load(a.modelDir, {
      device: a.device as 'cpu' | 'cuda', dtype: a.dtype as 'auto', tpRank: a.tpRank, tpSize: a.tp,
      layerStart: a.layerStart, layerEnd: a.layerEnd, deviceIndex: this.deviceIndex(a),
      ...(a.kvBlocks ? { kvBlocks: a.kvBlocks } : {}), ...(threads ? { threads } : {}),
      ...(a.maxBatchTokens ? { maxStepTokens: a.maxBatchTokens } : {}),
      ...(a.quantize ? { quantize: a.quantize as QuantizeChoice } : {}),
      ...(a.kvCacheDtype ? { kvCacheDtype: a.kvCacheDtype as KvCacheDtypeChoice } : {}),
      onProgress: (done, total) => this.control.send({ loadProgress: { epoch: a.epoch, done, total } }),
    });
    this.engineKey = key;
    return this.engine;
  }

  requestStop(): void {
    this.stopRequested = true;
    this.epoch?.stop();
  }

  /** The coordinator gave up on this epoch: unblock everything of it, keep the process and the shard. */
  abortEpoch(reason: string): void {
    this.health.quiet();
    this.epoch?.abort(reason);
    this.control.load = undefined;
    this.control.cancelRendezvous(`generation aborted: ${reason}`);
    this.abortComms();
  }

  /** A peer is gone: make every pending and later collective fail at once. */
  abortComms(): void {
    this.health.quiet(); // an abort on purpose is not a communicator failure to report
    for (const c of this.comms) c.abort();
    this.comms = [];
  }

  dispose(): void {
    this.engine?.dispose();
  }
}

/** How long a worker whose epoch failed waits for the next one before it gives up and exits. */
const REFORM_WAIT_MS = 120_000;

async function main(): Promise<void> {
  applyHeapGrowth();
  const { jobToken, coordinator, heartbeatMs, stepTimeoutMs, host } = settings();
  const token = required('NODESPEED_JOB_TOKEN', jobToken);
  const secrets = takeJobSecrets();
  const key = new Uint8Array(Buffer.from(secrets.dataPlaneKey, 'hex'));
  const address = required('NODESPEED_COORDINATOR', coordinator);
  const rank = Number(required('RANK'));
  if (!Number.isInteger(rank) || rank < 0) throw new Error(`worker: RANK must be a non-negative integer (got ${process.env.RANK})`);
  const control = new ControlClient(address, {
    token, rank, host: host ?? hostname(), pid: process.pid, device: deviceInfo(), listenAddresses: [],
  }, heartbeatMs, secrets.control, key);
  const health = new WorkerHealth({
    stepTimeoutMs, pollMs: Math.max(50, Math.min(500, heartbeatMs / 2)),
    unhealthy: (reason, kind) => {
      if (worker.stopRequested) return; // peers hanging up during a shutdown are expected
      log(`worker ${rank}: unhealthy: ${reason}`);
      control.send({ error: { epoch: control.epoch, message: reason, fatal: true } });
      // A wedged step: stop beating so the coordinator's heartbeat timeout confirms it even if the
      // report is lost. A broken communicator leaves the process healthy (it can be re-formed).
      if (kind === 'step') control.stopBeating();
      worker.abortComms();
    },
  });
  const worker = new Worker(control, key, health);
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
    log(`worker ${rank}: abort of generation ${m.epoch}: ${m.reason}`);
    worker.abortEpoch(m.reason);
  });
  const assignments: Assignment[] = [];
  let assigned: (() => void) | undefined;
  control.on('assignment', (a) => {
    assignments.push(a);
    assigned?.();
  });
  const nextAssignment = async (limitMs: number): Promise<Assignment | null> => {
    const timeout = new Promise<null>((r) => setTimeout(() => r(null), limitMs).unref());
    while (!assignments.length) {
      const got = await Promise.race([new Promise<boolean>((r) => (assigned = () => r(true))), stopped.then(() => false), timeout.then(() => false)]);
      assigned = undefined;
      if (!got) return null;
    }
    // Only the newest matters: an assignment superseded while this worker was busy is stale.
    const a = assignments[assignments.length - 1]!;
    assignments.length = 0;
    return a;
  };
  let clean = false;
  // A spare may wait for its first assignment as long as the job lives.
  let a = await nextAssignment(2 ** 31 - 1);
  while (a && !worker.stopRequested) {
    try {
      // Loading cannot be interrupted by the data plane; a stop during it ends the process.
      await Promise.race([worker.run(a).then(() => { clean = true; }), stopped.then(() => new Promise((r) => setTimeout(r, 6000)))]);
      break;
    } catch (err) {
      if (worker.stopRequested) break;
      if (!worker.epochAborted) {
        log(`worker ${rank}: ${(err as Error).message}`);
        control.send({ error: { epoch: control.epoch, message: (err as Error).message, fatal: true } });
      }
      worker.abortComms();
      if (!worker.served) {
        // Never served: a failure while starting is the launch's failure, not something to re-form.
        exitCode = 1;
        break;
      }
    }
    a = await nextAssignment(REFORM_WAIT_MS);
    if (!a && !worker.stopRequested) {
      log(`worker ${rank}: no new assignment within ${REFORM_WAIT_MS / 1000} s after the generation failed; exiting`);
      exitCode = 1;
    }
  }
  health.dispose();
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
