// `nodespeed launch` as a function: plan the layout of the replica groups, start the coordinator in
// this process and one worker per rank through the launcher, show load progress, and resolve once
// every replica serves. Used by the launch command and the demo.
import { randomBytes } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import type { ClassSpec } from '../coordinator/classes.js';
import { DEFAULT_GROUP } from '../coordinator/layout.js';
import type { Layout, LayoutOptions } from '../coordinator/layout.js';
import { Coordinator } from '../coordinator/server.js';
import { loadGenerationConfig, loadModelConfig } from '../model/config.js';
import type { ModelConfig } from '../model/config.js';
import { samplingDefaults } from '../protocol/sampling.js';
import { loadTokenizer } from '../model/tokenizer.js';
import { checkGroupPrecision, planDeployment } from './deploy-plan.js';
import { bindingScript } from './cores.js';
import type { CoreBinding } from './cores.js';
import type { GroupOptions } from './deploy-plan.js';
import type { ChatMessage, ChatRenderOptions } from '../model/chat-template.js';
import { TokenizerPool } from '../model/tokenizer-pool.js';
import { DEFAULT_REQUEST_LIMITS, checkControlFits, checkQueueFits, defaultPromptsLimit, promptBytesLimit } from '../protocol/limits.js';
import type { RequestLimits } from '../protocol/limits.js';
import { JOB_SECRETS_VAR, encodeJobSecrets } from '../protocol/job-secrets.js';
import type { PublicTls } from '../coordinator/public-auth.js';
import { JobPki } from './pki.js';
import { isLocalHost } from './plan.js';
import type { Placement, RankPlacement } from './plan.js';
import type { SshOptions } from './ssh.js';
import { startJob } from './supervisor.js';
import type { Job } from './supervisor.js';

export interface ClusterOptions {
  model: string;
  placement: Placement;
  /** The replica groups, in order (one for a launch from flags). */
  groups: GroupOptions[];
  /** The request classes; absent: realtime, standard and batch over every group. */
  classes?: ClassSpec[];
  /** The layout and the job's placement when planned already (planDeployment over `placement`, with the spares); absent: planned here. */
  planned?: { layout: Layout; placement: Placement };
  /** Each slot of the job's placement pinned to these cores (cores.ts planCoreBindings); absent or undefined: not pinned. */
  cores?: Array<CoreBinding | undefined>;
  bind: string;
  port: number;
  /** Address the workers dial (the control plane listens there); default: the address this machine uses to reach the first remote host. */
  advertise?: string;
  /** The control plane's port (0 or absent: any free one). */
  controlPort?: number;
  /** Encrypt replicas' TCP data planes between hosts. */
  encryptDataPlane?: boolean;
  /** What one request may ask for (default DEFAULT_REQUEST_LIMITS). */
  limits?: RequestLimits;
  /** TLS of the public API and /metrics. */
  tls?: PublicTls;
  /** A request in flight through this many replica losses is failed instead of replayed (default 2). */
  quarantineAfter?: number;
  maxQueue: number;
  heartbeatIntervalMs: number;
  heartbeatTimeoutMs: number;
  /** See CoordinatorOptions.requestTimeoutMs. */
  requestTimeoutMs: number;
  /** A worker whose forward step runs longer declares itself wedged (0: no watchdog). */
  stepTimeoutMs?: number;
  /** A started worker that has not joined after this long fails the launch (or its re-form); default 60 s. */
  joinTimeoutMs?: number;
  /** Spare workers kept joined to take over a lost rank (--spares). */
  spares?: number;
  /** See CoordinatorOptions.metricsPort. */
  metricsPort?: number;
  /** See CoordinatorOptions.httpPort. */
  httpPort?: number;
  allowTpAcrossHosts: boolean;
  authToken?: string;
  ssh?: SshOptions;
  remoteWorkdir?: string;
  node?: string;
  logDir?: string;
  /** Registry settings the workers get on top of the launching environment's (src/settings/index.ts settingsEnv). */
  workerEnv?: Record<string, string>;
  log: (line: string) => void;
  /** Worker output lines, already prefixed with [host:rank]. */
  onWorkerLine?: (line: string) => void;
  onProgress?: (done: number, total: number) => void;
}

export interface Cluster {
  coordinator: Coordinator;
  job: Job;
  layout: Layout;
  config: ModelConfig;
  /** host:port clients can dial. */
  address: string;
  /** host:port of the Prometheus endpoint (GET /metrics), with --metrics-port. */
  metricsAddress?: string;
  /** host:port of the OpenAI-compatible HTTP API, when it is on. */
  httpAddress?: string;
  stop(reason?: string): Promise<void>;
}

const packageRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const WORKER_SCRIPT = join(packageRoot, 'dist', 'worker', 'main.js');
/**
 * V8 flags of every worker: its young generation fixed at V8's own ceiling (16 MiB semi-spaces).
 * Left to itself V8 grows the young generation to that ceiling under a step loop's allocation rate
 * and its memory reducer shrinks it again minutes later, so a loaded worker's RSS moved in steps of
 * up to 30 MiB (bench/soak measured the young generation, not live objects, as the whole swing);
 * fixed, a worker's memory is flat under load and no scavenge runs at a smaller size than V8 would pick.
 */
export const WORKER_NODE_FLAGS = ['--min-semi-space-size=16', '--max-semi-space-size=16'];

/**
 * The one group of a launch from flags (`--tp`, `--pp`, `--replicas`, `--device`, ...) plus `spares`
 * spare slots (planDeployment).
 */
export function planWithSpares(config: ModelConfig, placement: Placement, o: LayoutOptions, spares: number,
  device: 'cpu' | 'cuda'): { layout: Layout; placement: Placement } {
  const group: GroupOptions = { name: DEFAULT_GROUP, tp: o.tp, pp: o.pp, replicas: o.replicas,
    serving: { device, dtype: 'auto', quantize: 'none', kvCacheDtype: 'auto', threads: 0, kvBlocks: 0, maxBatchTokens: device === 'cuda' ? 8192 : 256,
      maxSeqs: 0 } };
  return planDeployment(config, placement, [group], spares, o.allowTpAcrossHosts ?? false);
}

/** The source address the kernel would use to reach `host` (no packet is sent). */
async function routeTo(host: string): Promise<string> {
  return new Promise((resolve) => {
    const s = createSocket(host.includes(':') ? 'udp6' : 'udp4');
    s.on('error', () => {
      s.close();
      resolve('127.0.0.1');
    });
    s.connect(9, host, () => {
      const a = s.address().address;
      s.close();
      resolve(a);
    });
  });
}

/**
 * The address the workers dial, where the control plane listens: --advertise-addr, else the
 * address this machine uses to reach the first remote host, else loopback (every worker local).
 */
export async function controlHost(p: Placement, advertise?: string): Promise<string> {
  if (advertise) return advertise;
  const remote = p.ranks.find((r) => !r.isLocal && !isLocalHost(r.host));
  return remote ? routeTo(remote.host) : '127.0.0.1';
}

const hostPort = (host: string, port: number) => `${host.includes(':') ? `[${host}]` : host}:${port}`;

export async function launchCluster(o: ClusterOptions): Promise<Cluster> {
  const config = loadModelConfig(o.model);
  const { layout, placement } = o.planned ?? planDeployment(config, o.placement, o.groups, o.spares ?? 0, o.allowTpAcrossHosts);
  const tokenizer = await loadTokenizer(o.model);
  const limits = o.limits ?? { ...DEFAULT_REQUEST_LIMITS, prompts: defaultPromptsLimit(o.maxQueue) };
  // Fails the launch (naming the flags) when the limits would let through a request that a driver
  // could not receive as one control message.
  checkControlFits(config.maxPosition, limits);
  checkQueueFits(limits, o.maxQueue);
  // Prompts are tokenized off this process's event loop (it sends and judges the heartbeats).
  const tokenizers = await TokenizerPool.start(o.model);
  // The logprob tokens' texts, built on a tokenizer thread while the workers load (a request that
  // needs them before then waits); a failure reaches the request that awaits them.
  const tokenTexts = tokenizers.tokenTexts(config.vocabSize);
  tokenTexts.catch(() => {});
  const token = randomBytes(24).toString('hex');
  // What a group's workers would refuse, refused once before any starts.
  for (const g of o.groups) checkGroupPrecision(config, g);
  const first = o.groups[0]!.serving;
  // The job's secrets (SECURITY.md): its CA and certificates, and the data plane's key. Each slot's
  // worker gets its own certificate; the CA key never leaves this process.
  const pki = await JobPki.create();
  const dataPlaneKey = randomBytes(32);
  const slotSecrets = await Promise.all(placement.ranks.map(async (r) =>
    encodeJobSecrets({ control: await pki.workerIdentity(r.rank), dataPlaneKey: dataPlaneKey.toString('hex') })));
  const control = await controlHost(placement, o.advertise);
  const coordinator = new Coordinator({
    layout, token, modelDir: resolve(o.model), maxQueue: o.maxQueue, heartbeatIntervalMs: o.heartbeatIntervalMs,
    heartbeatTimeoutMs: o.heartbeatTimeoutMs, requestTimeoutMs: o.requestTimeoutMs, joinTimeoutMs: o.joinTimeoutMs ?? 60_000, log: o.log, bind: o.bind, port: o.port,
    slots: placement.ranks.map((r) => ({ host: r.host, localRank: r.localRank, ...(r.gpu === null ? { device: 'cpu' as const } : {}) })),
    shrink: { config, allowTpAcrossHosts: o.allowTpAcrossHosts },
    ...(o.classes ? { classes: o.classes } : {}),
    ...(o.metricsPort !== undefined ? { metricsPort: o.metricsPort } : {}),
    ...(o.httpPort !== undefined ? { httpPort: o.httpPort } : {}),
    ...(o.authToken ? { authToken: o.authToken } : {}),
    control: { host: control, port: o.controlPort ?? 0, identity: await pki.serverIdentity(), key: dataPlaneKey },
    limits, ...(o.quarantineAfter !== undefined ? { quarantineAfter: o.quarantineAfter } : {}), ...(o.tls ? { tls: o.tls } : {}),
    encryptDataPlane: o.encryptDataPlane ?? false,
    model: {
      name: basename(resolve(o.model)), path: resolve(o.model), architecture: config.architecture,
      contextLength: config.maxPosition, vocabSize: config.vocabSize, numLayers: config.numLayers, dtype: first.dtype,
      encode: (text: string, priority?: number) => tokenizers.encode(text, { priority }),
      encodeChat: (messages: ChatMessage[], opts: ChatRenderOptions, priority?: number) => tokenizers.encodeChat(messages, opts, { priority }),
      decode: (ids: number[], priority?: number) => tokenizers.decode(ids, { priority }),
      tokenTexts: () => tokenTexts,
      promptBytes: promptBytesLimit(config.maxPosition, tokenizer.maxTokenBytes),
      defaults: samplingDefaults(loadGenerationConfig(o.model)),
    },
  });
  const port = await coordinator.start();
  if (o.onProgress) coordinator.members.on('progress', o.onProgress);
  const dial = hostPort(control, coordinator.controlPort);
  o.log(`coordinator: control plane on ${dial} (mutual TLS with this job's certificates), liveness responder on port ${coordinator.livenessPort}`);
  let job: Job;
  // Each rank's first error-looking line on stderr: what a worker that dies while starting died of.
  const firstError = new Map<number, string>();
  try {
    job = await startJob({
      placement, command: [o.node ?? process.execPath, ...WORKER_NODE_FLAGS, WORKER_SCRIPT], jobToken: token, failFast: false, visibleDevices: 'rank',
      secrets: (r) => ({ [JOB_SECRETS_VAR]: slotSecrets[r.rank]! }),
      env: { NODESPEED_COORDINATOR: dial, NODESPEED_HEARTBEAT_MS: String(o.heartbeatIntervalMs),
        NODESPEED_STEP_TIMEOUT_MS: String(o.stepTimeoutMs ?? 30_000), ...o.workerEnv },
      cwd: process.cwd(),
      ...(o.cores?.some(Boolean) ? { prelude: (r: RankPlacement) => (o.cores![r.rank] ? bindingScript(o.cores![r.rank]!) : undefined) } : {}),
      ...(o.ssh ? { ssh: o.ssh } : {}), ...(o.remoteWorkdir ? { remoteWorkdir: o.remoteWorkdir } : {}),
      ...(o.logDir ? { logDir: o.logDir } : {}),
    }, (j) => {
      j.on('line', (e) => {
        if (e.stream === 'stderr' && !firstError.has(e.rank) && /error|cannot|failed|unavailable/i.test(e.line)) firstError.set(e.rank, e.line);
        o.onWorkerLine?.(`[${e.host}:${e.rank}] ${e.line}`);
      });
      j.on('rank-exit', (e) => {
        if (!e.expected && e.code !== 0) o.log(`launcher: rank ${e.rank} on ${e.host} exited (code ${e.code ?? '?'}${e.signal ? `, ${e.signal}` : ''})`);
      });
    });
  } catch (err) {
    await coordinator.stop('launch failed');
    await tokenizers.close();
    throw err;
  }
  const stop = async (reason = 'shutting down') => {
    await coordinator.stop(reason);
    await tokenizers.close();
    // Workers exit on the Stop message; give them a moment, then the launcher kills what is left.
    const deadline = Date.now() + 3000;
    while (Date.now() < deadline && placement.ranks.some((r) => job.rankState(r.rank).running))
      await new Promise((r) => setTimeout(r, 50));
    await job.stop(reason);
  };
  // A worker that dies before the cluster serves makes the launch fail (with its exit in the log).
  const died = new Promise<never>((_, reject) => {
    job.on('rank-exit', (e) => {
      if (!e.expected) reject(new Error(`rank ${e.rank} on ${e.host} exited with code ${e.code ?? '?'} before the cluster was ready` +
        (firstError.has(e.rank) ? `: ${firstError.get(e.rank)}` : '')));
    });
  });
  // A worker that started but never joins (hung at start-up, or it cannot reach `dial`) fails the launch too.
  const joinMs = o.joinTimeoutMs ?? 60_000;
  let joinTimer: NodeJS.Timeout | undefined;
  const joined = new Promise<never>((_, reject) => {
    joinTimer = setTimeout(() => {
      const m = coordinator.members;
      const missing = placement.ranks.filter((r) => {
        const rank = m.slots.rankOf(r.rank);
        return rank !== undefined ? !m.workers.has(rank) : !m.slots.spare(r.rank);
      });
      if (missing.length) reject(new Error(`rank ${missing.map((r) => `${r.rank} on ${r.host}`).join(', ')} did not join the coordinator at ` +
        `${dial} within ${joinMs / 1000} s (--join-timeout): check that the host can reach that address (--advertise-addr) and the rank's output above`));
    }, joinMs);
    joinTimer.unref();
  });
  joined.catch(() => {});
  try {
    await Promise.race([coordinator.whenAllServing(), died, joined]);
    // Ready means ready to heal too: the spares have joined (they load nothing, so this is quick).
    const spares = placement.ranks.length - layout.world;
    await Promise.race([(async () => {
      while (coordinator.members.slots.spareCount < spares) await new Promise((r) => setTimeout(r, 20));
    })(), died, joined]);
  } catch (err) {
    await stop('launch failed');
    throw err;
  } finally {
    clearTimeout(joinTimer);
  }
  died.catch(() => {});
  // From now on a lost rank is recovered (respawned by this job) instead of failing the launch.
  coordinator.failover.attach(job);
  const host = o.bind === '0.0.0.0' || o.bind === '::' ? control : o.bind;
  const metrics = coordinator.metricsServer;
  const http = coordinator.httpApi;
  return { coordinator, job, layout, config, address: hostPort(host, port), ...(metrics ? { metricsAddress: hostPort(host, metrics.port) } : {}),
    ...(http ? { httpAddress: hostPort(host, http.port) } : {}), stop };
}
