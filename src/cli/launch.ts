// `nodespeed launch --model DIR [launcher flags] [--tp N] [--pp N] [--replicas N|auto] ...`, or
// `nodespeed launch --config deploy.yaml` (launcher/deployment.ts: replica groups of their own
// device, layout and precision, request classes, spares): the coordinator in this process, one
// worker per rank through the launcher, one progress bar for the whole load, and exactly one line
// `nodespeed ready <addr:port> ...` on stdout once every replica serves. With a deployment file the
// flags still apply: --model, -H and --spares replace the file's; the group flags (--tp, --pp,
// --replicas, --device, --dtype, --quantize, --kv-cache-dtype, --threads, --kv-blocks,
// --max-batch-tokens, --max-seqs) replace the keys of its group when it has exactly one, and are
// refused when it has several (each group names its own precision and KV cache dtype). Ctrl-C (or
// SIGTERM) tears everything down. --dry-run prints the layout of every group and the per-rank
// memory estimate, and fails when the layout does not fit.
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { Command, Option } from 'commander';

import { loadAddon } from '../native/addon.js';
import { loadModelConfig } from '../model/config.js';
import type { ModelConfig } from '../model/config.js';
import type { Cluster } from '../launcher/cluster.js';
import { checkGroupPrecision, localDeploymentHosts, planDeployment } from '../launcher/deploy-plan.js';
import type { GroupOptions } from '../launcher/deploy-plan.js';
import { DeploymentError, loadDeployment, weightsOf } from '../launcher/deployment.js';
import type { Deployment } from '../launcher/deployment.js';
import { detectLocalGpus, planWorld } from '../launcher/plan.js';
import type { ClassSpec } from '../coordinator/classes.js';
import { DEFAULT_GROUP, LayoutError, describeGroup, describeLayout } from '../coordinator/layout.js';
import type { Layout } from '../coordinator/layout.js';
import { headTail, LIST_LIMIT } from '../launcher/format.js';
import { estimateMemory, gib, groupRanks, memoryOptionsOf } from '../coordinator/memory.js';
import { HF_ROUNDING, HF_ROUNDING_HELP, settingsEnv } from '../settings/index.js';
import { addLauncherOptions, planFromOptions, readLauncherOptions } from '../launcher/flags.js';
import type { LauncherOptions } from '../launcher/flags.js';
import { formatCoreList, planCoreBindings } from '../launcher/cores.js';
import type { CoreBinding } from '../launcher/cores.js';
import type { Placement } from '../launcher/plan.js';
import { intArg, portArg, secondsArg } from './args.js';
import { checkCheckpoint } from './checkpoint.js';
import { flushAndExit } from './exit.js';
import { loadBar } from './progress.js';
import { isLoopbackBind, readAuthToken, readPublicTls } from '../coordinator/public-auth.js';
import { DEFAULT_REQUEST_LIMITS, defaultPromptsLimit } from '../protocol/limits.js';
import { addQuantizeOptions } from './quantize-flags.js';
import type { KvCacheDtypeChoice } from '../model/precision.js';
import type { QuantizeChoice } from '../model/quantization.js';
import { MAX_LOGPROBS } from '../protocol/sampling.js';
import { applyHeapGrowth } from '../settings/heap.js';

export interface LaunchFlags {
  model?: string;
  config?: string;
  tp: number;
  pp: number;
  replicas: number | 'auto';
  device: 'auto' | 'cpu' | 'cuda';
  dtype: string;
  quantize: QuantizeChoice;
  kvCacheDtype: KvCacheDtypeChoice;
  port: number;
  bind: string;
  advertiseAddr?: string;
  kvBlocks: number;
  threads: number;
  maxBatchTokens?: number;
  maxSeqs: number;
  maxQueue: number;
  heartbeatInterval: number;
  heartbeatTimeout: number;
  requestTimeout: number;
  stepTimeout: number;
  joinTimeout: number;
  spares: number;
  metricsPort?: number;
  httpPort: number;
  allowTpAcrossHosts: boolean;
  /** Refused: a token on the command line is visible in ps (see authTokenFile). */
  authToken?: string;
  authTokenFile?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsClientCa?: string;
  controlPort: number;
  encryptDataPlane: boolean;
  maxRequestBytes: number;
  maxStopStrings: number;
  maxStopChars: number;
  maxN: number;
  maxLogprobs: number;
  maxPrompts?: number;
  quarantineAfter: number;
  hfRounding: boolean;
  progress: boolean;
}

/** Which flags were given on the command line (they replace a deployment file's keys); absent: none. */
export type GivenFlags = (flag: keyof LaunchFlags) => boolean;

/** Most CPU threads one worker may ask for (the engine starts that many). */
const MAX_THREADS = 4096;

function replicasArg(v: string): number | 'auto' {
  if (v === 'auto') return 'auto';
  return intArg('--replicas', 1)(v);
}

/** Defaults a command gives the serving flags (the demo's differ from launch's). */
export interface ServingDefaults {
  tp: number;
  device: 'auto' | 'cpu' | 'cuda';
  port: number;
  httpPort: number;
  bind: string;
}

const LAUNCH_DEFAULTS: ServingDefaults = { tp: 1, device: 'auto', port: 50051, httpPort: 8000, bind: '0.0.0.0' };

/** The serving flags (shared with the demo, which has its own defaults). Integers are checked against the wire's uint32. */
export function addServingOptions(cmd: Command, d: ServingDefaults = LAUNCH_DEFAULTS): Command {
  cmd
    .option('--tp <n>', 'tensor-parallel ranks per pipeline stage', intArg('--tp', 1), d.tp)
    .option('--pp <n>', 'pipeline stages per replica', intArg('--pp', 1), 1)
    .option('--replicas <n|auto>', 'data-parallel replicas (auto: as many as the slots hold)', replicasArg, 'auto' as const)
    .addOption(new Option('--device <device>', 'cpu, cuda or auto (cuda when this machine has a usable GPU)').choices(['auto', 'cpu', 'cuda']).default(d.device))
    .addOption(new Option('--dtype <dtype>', 'cpu: weight storage (compute is f32); cuda: compute dtype; auto: as stored')
      .choices(['auto', 'f32', 'bf16', 'f16']).default('auto'));
  addQuantizeOptions(cmd);
  return cmd
    .option('--port <port>', 'port of the gRPC API (0: any free port)', portArg('--port'), d.port)
    .option('--bind <addr>', 'address the gRPC server listens on', d.bind)
    .option('--advertise-addr <addr>', 'address workers dial to reach the coordinator (default: the route to the first remote host)')
    .option('--kv-blocks <n>', 'KV cache blocks per rank (0: the backend decides)', intArg('--kv-blocks', 0), 0)
    .option('--threads <n>', 'CPU threads per worker (0: the backend decides)', intArg('--threads', 0, MAX_THREADS), 0)
    .option('--max-batch-tokens <n>', 'most tokens per step; longer prefills are chunked (default: cpu 256, cuda 8192)', intArg('--max-batch-tokens', 1))
    .option('--max-seqs <n>', 'most sequences in one replica\'s batch (vLLM\'s max_num_seqs); a more urgent class preempts a less urgent one for a seat',
      intArg('--max-seqs', 1), 256)
    .option('--max-queue <n>', 'most requests in flight before RESOURCE_EXHAUSTED', intArg('--max-queue', 1), 1024)
    .option('--heartbeat-interval <s>', 'seconds between heartbeats', secondsArg('--heartbeat-interval'), 1)
    .option('--heartbeat-timeout <s>', 'seconds of silence before a worker is declared dead', secondsArg('--heartbeat-timeout'), 5)
    .option('--request-timeout <s>', 'seconds a request may wait for a replica to recover before it fails UNAVAILABLE',
      secondsArg('--request-timeout'), 60)
    .option('--join-timeout <s>', 'seconds a started worker may take to join the coordinator (at launch: the launch fails; when restarted: the re-form attempt fails)',
      secondsArg('--join-timeout'), 60)
    .option('--step-timeout <s>', 'seconds one forward step may run before its worker declares itself wedged (stops heartbeating)',
      secondsArg('--step-timeout'), 30)
    .option('--spares <n>', 'spare workers kept joined (no weights loaded) to take over a lost rank; they use the slots beyond ' +
      'replicas x pp x tp, or extra local processes when every worker is a local CPU worker', intArg('--spares', 0), 0)
    .option('--metrics-port <port>', 'serve Prometheus metrics at http(s)://<bind>:<port>/metrics (0: any free port, printed on the ready line); default: off',
      portArg('--metrics-port'))
    .option('--http-port <port>', 'serve the OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, /v1/models, /health; ' +
      '/metrics too when metrics are on) at http(s)://<bind>:<port> with the same TLS, token and request limits as the gRPC API ' +
      '(0: any free port; printed on the ready line as http=)',
      portArg('--http-port'), d.httpPort)
    .option('--allow-tp-across-hosts', 'let a TP group span hosts (every layer then all-reduces over the network)', false)
    .option('--auth-token-file <file>', 'require "authorization: Bearer <token>" on the API and /metrics, the token being the file\'s first line ' +
      '(or NODESPEED_AUTH_TOKEN in this process\'s environment); never passed to workers')
    .addOption(new Option('--auth-token <token>').hideHelp())
    .option('--tls-cert <file>', 'serve the API and /metrics over TLS with this certificate (PEM; with --tls-key)')
    .option('--tls-key <file>', 'the private key of --tls-cert (PEM)')
    .option('--tls-client-ca <file>', 'also require client certificates issued by this CA (mutual TLS)')
    .option('--control-port <port>', 'port of the workers\' control plane, on --advertise-addr (0: any free port)', portArg('--control-port'), 0)
    .option('--encrypt-data-plane', 'encrypt the replicas\' TCP data plane between hosts (AES-256-GCM; inside one host it stays clear)', false)
    .option('--max-request-bytes <n>', 'largest API request, in bytes', intArg('--max-request-bytes', 1024), DEFAULT_REQUEST_LIMITS.requestBytes)
    .option('--max-stop-strings <n>', 'most stop strings per request', intArg('--max-stop-strings', 0), DEFAULT_REQUEST_LIMITS.stopStrings)
    .option('--max-stop-chars <n>', 'most characters of stop strings per request, in total', intArg('--max-stop-chars', 0), DEFAULT_REQUEST_LIMITS.stopChars)
    .option('--max-n <n>', 'most completions per request (n)', intArg('--max-n', 1), DEFAULT_REQUEST_LIMITS.n)
    .option('--max-logprobs <n>', `most top log-probabilities per token (logprobs; at most ${MAX_LOGPROBS}, what the sampler computes)`,
      intArg('--max-logprobs', 0, MAX_LOGPROBS), DEFAULT_REQUEST_LIMITS.logprobs)
    .option('--max-prompts <n>', 'most prompts one completion request batches, and most sequences (prompts x n) one request starts; ' +
      `at most --max-queue (default: ${DEFAULT_REQUEST_LIMITS.prompts}, or --max-queue when that is smaller)`, intArg('--max-prompts', 1))
    .option('--quarantine-after <n>', 'fail a request instead of replaying it again once it was in flight through this many replica losses',
      intArg('--quarantine-after', 1), 2)
    .option('--hf-rounding', HF_ROUNDING_HELP, false)
    .option('--no-progress', 'no progress bar');
}

/**
 * auto: cuda when this machine has a usable GPU. An explicit cuda is checked here when every rank is
 * local (remote workers check their own host and report it).
 */
export function resolveDeviceFlag(d: LaunchFlags['device'], placement?: Placement): 'cpu' | 'cuda' {
  let cuda: { available: boolean; reason?: string };
  try {
    cuda = loadAddon().info().cuda;
  } catch (err) {
    cuda = { available: false, reason: (err as Error).message };
  }
  if (d === 'auto') return cuda.available ? 'cuda' : 'cpu';
  if (d === 'cuda' && !cuda.available && placement && placement.ranks.every((r) => r.isLocal)) {
    throw new Error(`--device cuda: this machine has no usable GPU (${cuda.reason ?? 'CUDA unavailable'}); use --device cpu`);
  }
  return d;
}

/** A port another process holds gives its own message, not gRPC's "No address added out of total 1 resolved". */
async function checkPortFree(flag: string, bind: string, port: number | undefined): Promise<void> {
  if (!port) return;
  await new Promise<void>((resolve, reject) => {
    const s = createServer();
    s.once('error', (err: NodeJS.ErrnoException) => reject(new Error(err.code === 'EADDRINUSE'
      ? `${flag} ${port}: ${bind}:${port} is already in use (another nodespeed launch?); pass another ${flag}, or ${flag} 0 for any free port`
      : err.code === 'EADDRNOTAVAIL' ? `--bind ${bind}: not an address of this machine` : `${flag} ${port} on ${bind}: ${err.message}`)));
    s.listen({ host: bind, port, exclusive: true }, () => s.close(() => resolve()));
  });
}

// A CPU step grows with its tokens. On a GPU the prefill GEMMs are at the matmul peak from ~2048
// tokens on, and larger steps admit more prompts at once, so they start (and finish) decoding
// together: fewer, fuller decode steps (TensorRT-LLM's max_num_tokens default is 8192 too).
function defaultMaxBatchTokens(device: 'cpu' | 'cuda'): number {
  return device === 'cuda' ? 8192 : 256;
}

/** The group flags and the file keys they replace. */
const GROUP_FLAGS = [['tp', 'tp'], ['pp', 'pp'], ['replicas', 'replicas'], ['device', 'device'], ['dtype', 'precision'], ['quantize', 'precision'],
  ['kvCacheDtype', 'kv_cache_dtype'], ['threads', 'threads'], ['kvBlocks', 'kv_blocks'], ['maxBatchTokens', 'max_batch_tokens'], ['maxSeqs', 'max_seqs']] as const;

const kebab = (flag: string) => `--${flag.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;

/** What a launch serves: its model, replica groups, classes and spares, from the flags and the deployment file. */
export interface ServingPlan {
  model: string;
  groups: GroupOptions[];
  classes?: ClassSpec[];
  spares: number;
  deployment?: Deployment;
  /** Groups whose device was named cuda (not resolved from auto): checked against this machine when every rank is local. */
  explicitCuda: number[];
}

/** The model, groups, classes and spares of this launch: the flags alone, or `--config` with the flags given replacing its keys. */
export function servingPlan(f: LaunchFlags, given: GivenFlags): ServingPlan {
  if (!f.config) {
    if (!f.model) throw new Error('--model DIR is required (or --config deploy.yaml naming a model)');
    const device = resolveDeviceFlag(f.device);
    return {
      model: f.model, spares: f.spares, explicitCuda: f.device === 'cuda' ? [0] : [],
      groups: [{ name: DEFAULT_GROUP, tp: f.tp, pp: f.pp, replicas: f.replicas, serving: { device, dtype: f.dtype, quantize: f.quantize,
        kvCacheDtype: f.kvCacheDtype, threads: f.threads, kvBlocks: f.kvBlocks, maxBatchTokens: f.maxBatchTokens ?? defaultMaxBatchTokens(device),
        maxSeqs: f.maxSeqs } }],
    };
  }
  const d = loadDeployment(f.config);
  const model = given('model') && f.model ? f.model : d.model;
  if (!model) throw new DeploymentError(d.file, 0, 'model', 'missing (or give --model DIR)');
  const flags = GROUP_FLAGS.filter(([flag]) => given(flag));
  if (flags.length && d.groups.length > 1)
    throw new Error(`${flags.map(([flag]) => kebab(flag)).join(', ')}: the flags describe one group, and ${d.file} has ${d.groups.length} ` +
      `(${d.groups.map((g) => g.name).join(', ')}); set ${flags.map(([, key]) => key).join(', ')} in the group instead`);
  const explicitCuda: number[] = [];
  const groups = d.groups.map((g, gi): GroupOptions => {
    const over = (flag: (typeof GROUP_FLAGS)[number][0]) => flags.some(([x]) => x === flag);
    const named = over('device') ? f.device : g.device;
    if (named === 'cuda') explicitCuda.push(gi);
    const device = resolveDeviceFlag(named);
    // The group's precision names its float dtype or its quantization; --dtype / --quantize replace
    // the one they name and keep the other.
    const weights = weightsOf(g.precision);
    return {
      name: g.name, tp: over('tp') ? f.tp : g.tp, pp: over('pp') ? f.pp : g.pp, replicas: over('replicas') ? f.replicas : g.replicas,
      serving: {
        device, dtype: over('dtype') ? f.dtype : weights.dtype, quantize: over('quantize') ? f.quantize : weights.quantize,
        kvCacheDtype: over('kvCacheDtype') ? f.kvCacheDtype : g.kvCacheDtype, threads: over('threads') ? f.threads : g.threads,
        kvBlocks: over('kvBlocks') ? f.kvBlocks : g.kvBlocks ?? f.kvBlocks,
        maxBatchTokens: over('maxBatchTokens') ? f.maxBatchTokens! : g.maxBatchTokens ?? f.maxBatchTokens ?? defaultMaxBatchTokens(device),
        maxSeqs: over('maxSeqs') ? f.maxSeqs : g.maxSeqs ?? f.maxSeqs,
      },
      ...(g.hosts ? { hosts: g.hosts } : {}), ...(g.slots ? { slots: g.slots } : {}), ...(g.cpus ? { cpus: g.cpus } : {}),
    };
  });
  return { model, groups, ...(d.classes ? { classes: d.classes } : {}), spares: given('spares') ? f.spares : d.spares ?? f.spares, deployment: d,
    explicitCuda };
}

/** A layout error about a deployment file's group, reported at the key's line. */
function withLine(err: unknown, plan: ServingPlan): never {
  const d = plan.deployment;
  if (err instanceof LayoutError && d && (err.group !== undefined || err.key === 'device')) {
    const gi = err.group ?? Math.max(0, plan.groups.findIndex((g) => g.serving.device === 'cuda'));
    const path = `groups[${gi}]${err.key ? `.${err.key}` : ''}`;
    throw new DeploymentError(d.file, d.lineOf(path), path, err.message.replace(/^group \S+: /, ''));
  }
  throw err;
}

/**
 * The launcher's placement: the hostfile (-H, else the file's `hostfile:`, else ./hostfile) or, for
 * a deployment without one, this machine with its GPUs and the CPU workers its cpu groups need.
 */
function placementOf(plan: ServingPlan, raw: Record<string, unknown>): Placement {
  const lo = readLauncherOptions(raw);
  if (!plan.deployment || lo.hostfile) return planFromOptions(lo);
  const hostfile = plan.deployment.hostfile ?? (existsSync('hostfile') ? 'hostfile' : undefined);
  if (hostfile) return planFromOptions({ ...lo, hostfile });
  try {
    const hosts = localDeploymentHosts(plan.groups, plan.spares, plan.groups.some((g) => g.serving.device === 'cuda') ? detectLocalGpus() : []);
    return planWorld(hosts, { masterAddr: lo.masterAddr, masterPort: lo.masterPort, sshPort: lo.sshPort, forceSsh: lo.forceSsh });
  } catch (err) {
    return withLine(err, plan);
  }
}

/**
 * What a group's workers would refuse, refused before any starts (fp8 on CPU, a --quantize that
 * contradicts a pre-quantized checkpoint); a deployment file's group is named by its key's line.
 */
function checkPrecisions(config: ModelConfig, plan: ServingPlan): void {
  plan.groups.forEach((g, gi) => {
    try {
      checkGroupPrecision(config, g);
    } catch (err) {
      const d = plan.deployment;
      if (!d) throw err;
      // The flag a single launch would name is the group's key here.
      const why = (err as Error).message.replace(/^group \S+: /, '');
      const key = why.startsWith('--kv-cache-dtype') ? 'kv_cache_dtype' : 'precision';
      const path = `groups[${gi}].${key}`;
      throw new DeploymentError(d.file, d.lineOf(path), path, why.replace(/^--(quantize|kv-cache-dtype) /, ''));
    }
  });
}

/**
 * The layout and the job's placement (layout ranks, then spares); errors of a deployment file's
 * groups name their line. A group that names cuda is checked against this machine when every rank
 * is local (remote workers check their own host and report it).
 */
export function planLaunch(config: ModelConfig, plan: ServingPlan, raw: Record<string, unknown>, allowTpAcrossHosts: boolean): PlannedLaunch {
  const placement = placementOf(plan, raw);
  for (const gi of plan.explicitCuda) {
    try {
      resolveDeviceFlag('cuda', placement);
    } catch (err) {
      const d = plan.deployment;
      if (!d) throw err;
      throw new DeploymentError(d.file, d.lineOf(`groups[${gi}].device`), `groups[${gi}].device`, (err as Error).message.replace(/^--device cuda: /, '').replace(/; use --device cpu$/, ''));
    }
  }
  let planned: { layout: Layout; placement: Placement };
  try {
    planned = planDeployment(config, placement, plan.groups, plan.spares, allowTpAcrossHosts);
  } catch (err) {
    return withLine(err, plan);
  }
  checkPrecisions(config, plan);
  return { ...planned, cores: coreBindings(planned, plan, readLauncherOptions(raw)) };
}

/** The layout, the job's placement, and each slot's core binding (undefined: not pinned). */
export interface PlannedLaunch {
  layout: Layout;
  placement: Placement;
  cores: Array<CoreBinding | undefined>;
}

/**
 * Each slot's cores: its group's `cpus`, else its share with --bind_cores_to_rank; a slot runs the
 * layout rank of its index at launch (the spares after). Errors of a group's cpus name their line.
 */
function coreBindings(planned: { layout: Layout; placement: Placement }, plan: ServingPlan, lo: LauncherOptions): Array<CoreBinding | undefined> {
  const { layout, placement } = planned;
  const d = plan.deployment;
  const slots = placement.ranks.map((r, i) => ({ host: r.host, isLocal: r.isLocal,
    ...(i < layout.world ? { group: layout.replicaGroup[layout.ranks[i]!.replica]! } : {}) }));
  const groups = plan.groups.map((g, gi) => ({ name: g.name, ...(g.cpus ? { cpus: g.cpus } : {}),
    ...(d ? { what: `${d.file}:${d.lineOf(`groups[${gi}].cpus`)}: groups[${gi}].cpus` } : {}) }));
  try {
    return planCoreBindings(slots, groups, lo);
  } catch (err) {
    return withLine(err, plan);
  }
}

/** `rank 1 @host [group]: cores 8-11` per pinned slot, for --dry-run. */
function describeCores(cores: Array<CoreBinding | undefined>, layout: Layout, placement: Placement): string[] {
  const lines = cores.flatMap((b, i) => {
    if (!b) return [];
    const group = i < layout.world ? layout.groups[layout.replicaGroup[layout.ranks[i]!.replica]!]!.name : 'spare';
    return [`  rank ${i} @${placement.ranks[i]!.host} [${group}]: ` +
      ('cores' in b ? `cores ${formatCoreList(b.cores)}` : `share ${b.share.index + 1} of ${b.share.size} of the host's physical cores`)];
  });
  return lines.length ? ['core binding (taskset -c, else numactl -C; a CPU worker\'s threads default to its cores):', ...headTail(lines, LIST_LIMIT, (n) => `  ... ${n} more`)] : [];
}

async function dryRun(f: LaunchFlags, raw: Record<string, unknown>, given: GivenFlags): Promise<number> {
  const plan = servingPlan(f, given);
  const config = loadModelConfig(plan.model);
  await checkCheckpoint(plan.model);
  const { layout, placement, cores } = planLaunch(config, plan, raw, f.allowTpAcrossHosts);
  const spareSlots = placement.ranks.slice(layout.world);
  const single = layout.groups.length === 1 && layout.groups[0]!.name === DEFAULT_GROUP;
  const out: string[] = [`model ${plan.model}: ${config.numLayers} layers, hidden ${config.hiddenSize}, vocab ${config.vocabSize}`,
    ...describeLayout(layout, (lines) => headTail(lines, LIST_LIMIT, (n) => `... ${n} more replica(s) laid out the same way on the following hosts`)),
    ...(spareSlots.length ? [`spares: ${headTail(spareSlots.map((r) => `slot ${r.rank} @${r.host}`), LIST_LIMIT, (n) => `... ${n} more`).join(', ')} (joined, no weights until one takes a lost rank)`] : []),
    ...describeCores(cores, layout, placement)];
  let gpuMemory: number | undefined;
  if (layout.groups.some((g) => g.serving.device === 'cuda')) gpuMemory = loadAddon().info().cuda.devices[0]?.totalMemory;
  const problems: string[] = [];
  // CPU ranks of every group share their host's RAM.
  const hostUsed = new Map<string, number>();
  for (const g of layout.groups) {
    const s = g.serving;
    const mem = estimateMemory(config, groupRanks(layout, g), { ...memoryOptionsOf(s), kvBlockSize: 16,
      stepTokens: s.maxBatchTokens, ...(gpuMemory ? { gpuMemory } : {}), ...(s.device === 'cpu' ? { hostUsedBytes: new Map(hostUsed) } : {}) });
    out.push(`${single ? '' : `group ${g.name} (${describeGroup(g)}), `}per-rank memory estimate (weights + KV cache + one step's scratch at ` +
      `${s.maxBatchTokens} tokens + 256 MiB reserve):`);
    const rankLine = (r: (typeof mem.ranks)[number]): string => {
      const p = layout.ranks[r.rank]!;
      return `  rank ${r.rank} @${r.host} replica ${p.replica} stage ${p.stage} tp ${p.tpRank} layers ${p.layerStart}-${p.layerEnd - 1}: ` +
        `weights ${gib(r.weightBytes)} GiB, kv ${gib(r.kvBytes)} GiB, step scratch ${gib(r.scratchBytes)} GiB, total ${gib(r.totalBytes)} GiB`;
    };
    if (mem.ranks.length <= LIST_LIMIT) out.push(...mem.ranks.map(rankLine));
    else {
      // Thousands of ranks: one line per distinct position and estimate (ranks of other replicas are alike).
      const alike = new Map<string, { first: (typeof mem.ranks)[number]; count: number }>();
      for (const r of mem.ranks) {
        const p = layout.ranks[r.rank]!;
        const key = [p.stage, p.tpRank, r.weightBytes, r.kvBytes, r.scratchBytes, r.totalBytes].join('/');
        const a = alike.get(key);
        if (a) a.count++;
        else alike.set(key, { first: r, count: 1 });
      }
      for (const a of alike.values()) out.push(`${rankLine(a.first)}${a.count > 1 ? ` (and ${a.count - 1} more rank(s) alike)` : ''}`);
    }
    if (s.device === 'cpu') for (const r of mem.ranks) hostUsed.set(r.host, (hostUsed.get(r.host) ?? 0) + r.totalBytes);
    problems.push(...mem.problems.map((m) => (single ? m : `group ${g.name}: ${m}`)));
  }
  if (plan.classes || !single)
    out.push(`classes: ${[...(plan.classes ?? [])].sort((a, b) => a.priority - b.priority).map((c) =>
      `${c.name} (priority ${c.priority}${c.ttftP99Ms ? `, TTFT p99 <= ${c.ttftP99Ms} ms` : ''}${c.streamIntervalMs ? `, a stream message per ${c.streamIntervalMs} ms` : ''}${c.exclusivePrefill ? ', exclusive prefill' : ''}) -> ${c.groups.join(', ')}`).join('; ') ||
      `realtime, standard, batch -> ${layout.groups.map((g) => g.name).join(', ')}`}`);
  process.stdout.write(out.join('\n') + '\n');
  if (problems.length) {
    process.stderr.write(`nodespeed launch: the layout does not fit:\n  ${problems.join('\n  ')}\n`);
    return 1;
  }
  return 0;
}

/** The bar of the launch in progress, so a Ctrl-C can restore the terminal before exiting. */
let activeBar: ReturnType<typeof loadBar>;

/**
 * Starts the cluster with these flags (and deployment file); shared by `launch` and `demo`. The
 * deployment, the checkpoint, the devices and the ports are checked before any worker starts.
 */
export async function startFromFlags(f: LaunchFlags, raw: Record<string, unknown>,
  log: (l: string) => void = (l) => void process.stderr.write(`${l}\n`), given: GivenFlags = () => false): Promise<Cluster> {
  const lo = readLauncherOptions(raw);
  const plan = servingPlan(f, given);
  if (f.authToken !== undefined)
    throw new Error('--auth-token puts the token on the command line, where ps shows it to every user of this host: ' +
      'write it to a file and pass --auth-token-file FILE, or set NODESPEED_AUTH_TOKEN');
  const authToken = readAuthToken(f.authTokenFile);
  const tls = readPublicTls(f.tlsCert, f.tlsKey, f.tlsClientCa);
  const config = loadModelConfig(plan.model);
  // Planned here so that a deployment file's mistakes name their line.
  const planned = planLaunch(config, plan, raw, f.allowTpAcrossHosts);
  await checkCheckpoint(plan.model);
  await checkPortFree('--port', f.bind, f.port);
  await checkPortFree('--metrics-port', f.bind, f.metricsPort);
  await checkPortFree('--http-port', f.bind, f.httpPort);
  const bar = f.progress ? loadBar() : undefined;
  activeBar = bar;
  try {
    // Imported here, when a cluster starts: the coordinator, the supervisor and the job PKI take
    // ~0.4 s to import, which --dry-run and a refused flag or file need not wait for.
    const { launchCluster } = await import('../launcher/cluster.js');
    return await launchCluster({
      model: plan.model, placement: planned.placement, planned, groups: plan.groups, cores: planned.cores, ...(plan.classes ? { classes: plan.classes } : {}),
      bind: f.bind, port: f.port, ...(f.advertiseAddr ? { advertise: f.advertiseAddr } : {}), maxQueue: f.maxQueue,
      heartbeatIntervalMs: f.heartbeatInterval * 1000, heartbeatTimeoutMs: f.heartbeatTimeout * 1000, requestTimeoutMs: f.requestTimeout * 1000,
      allowTpAcrossHosts: f.allowTpAcrossHosts, stepTimeoutMs: f.stepTimeout * 1000, joinTimeoutMs: f.joinTimeout * 1000, spares: plan.spares,
      ...(f.metricsPort !== undefined ? { metricsPort: f.metricsPort } : {}),
      httpPort: f.httpPort,
      ...(authToken ? { authToken } : {}), ...(tls ? { tls } : {}),
      controlPort: f.controlPort, encryptDataPlane: f.encryptDataPlane, quarantineAfter: f.quarantineAfter,
      limits: { requestBytes: f.maxRequestBytes, stopStrings: f.maxStopStrings, stopChars: f.maxStopChars, n: f.maxN, logprobs: f.maxLogprobs,
        prompts: f.maxPrompts ?? defaultPromptsLimit(f.maxQueue) },
      ...(f.hfRounding ? { workerEnv: settingsEnv({ cudaRound: HF_ROUNDING }) } : {}),
      ssh: lo.ssh, ...(lo.remoteWorkdir ? { remoteWorkdir: lo.remoteWorkdir } : {}), node: lo.node,
      ...(lo.logDir ? { logDir: lo.logDir } : {}),
      log,
      onWorkerLine: (l) => log(l),
      onProgress: (done, total) => bar?.update(done, total),
    });
  } catch (err) {
    const m = (err as Error).message;
    if (/No address added/.test(m)) throw new Error(`--port ${f.port}: ${f.bind}:${f.port} cannot be bound (in use?): ${m}`);
    throw err;
  } finally {
    bar?.stop();
    activeBar = undefined;
  }
}

/**
 * `gpu:cuda/bf16-bf16-bf16/tp2xpp1x1,cpu:cpu/int8-f32-f32/tp1xpp1x2` (precision: weights, matrix-product
 * inputs, KV cache) and `realtime:gpu,standard:gpu+cpu,...` for the ready line.
 */
export function readyFields(c: Cluster): string {
  const l = c.layout;
  const groups = l.groups.map((g) => {
    const p = g.precision;
    return `${g.name}:${g.serving.device}/${p.weights}-${p.activations}-${p.kvCache}/tp${g.tp}xpp${g.pp}x${g.replicas.length}`;
  }).join(',');
  const classes = c.coordinator.router.classes.list.map((k) => `${k.name}:${k.groups.join('+')}`).join(',');
  return `groups=${groups} classes=${classes}`;
}

export function register(program: Command): void {
  const cmd = program
    .command('launch')
    .description('Serve a Hugging Face model over gRPC: coordinator here, one worker per slot of the hostfile (TP x PP x replicas)')
    .option('--model <dir>', 'Hugging Face model folder (required unless the deployment file names one)')
    .option('--config <file>', 'deployment file (YAML): model, hostfile, replica groups, request classes, spares; flags given here replace its keys');
  addServingOptions(cmd);
  addLauncherOptions(cmd);
  cmd.action(async (o: LaunchFlags & Record<string, unknown>) => {
    const given: GivenFlags = (flag) => cmd.getOptionValueSource(flag) === 'cli';
    if (readLauncherOptions(o).dryRun) {
      process.exitCode = await dryRun(o, o, given);
      return;
    }
    // Ctrl-C while starting: exit now (the bar gives the terminal back first); the launcher's exit
    // guard kills the local ranks' process groups, remote ranks die with their SSH channels, and
    // every worker exits when its control stream to this process closes.
    const interrupted = (sig: string) => {
      activeBar?.stop();
      process.stderr.write(`\nnodespeed: ${sig} while starting, shutting down\n`);
      void flushAndExit(sig === 'SIGINT' ? 130 : 143);
    };
    const onInt = () => interrupted('SIGINT');
    const onTerm = () => interrupted('SIGTERM');
    process.once('SIGINT', onInt);
    process.once('SIGTERM', onTerm);
    applyHeapGrowth();  // this process runs the coordinator
    const cluster = await startFromFlags(o, o, undefined, given);
    // The serving handlers go on before the starting ones come off and before the ready line: a
    // signal in between (a script that stops the launch as soon as it reads the line) would
    // otherwise meet no handler and kill the process without a shutdown.
    const stopped = new Promise<void>((resolve) => {
      let stopping = false;
      const shutdown = (why: string, code: number) => {
        if (stopping) return;
        stopping = true;
        process.stderr.write(`nodespeed: ${why}, shutting down\n`);
        process.exitCode = code;
        void cluster.stop(why).then(resolve);
      };
      process.once('SIGINT', () => shutdown('SIGINT', 0));
      process.once('SIGTERM', () => shutdown('SIGTERM', 0));
      void cluster.job.done.then(() => shutdown('the job ended', 1));
      // Lost replicas are re-formed by failover; only when every replica is retired (it could not
      // be re-formed) is there nothing left to serve with.
      cluster.coordinator.failover.on('retired', () => {
        if (cluster.coordinator.members.replicas.every((r) => r.state === 'lost')) shutdown('every replica is lost and none could be re-formed', 1);
      });
    });
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
    const l = cluster.layout;
    // Reachable beyond this machine with no token: anyone who can reach the port can use the
    // cluster (and read ClusterStatus and /metrics). Said on stderr and on the ready line.
    const open = !cluster.coordinator.o.authToken && !isLoopbackBind(o.bind);
    if (open) process.stderr.write(`nodespeed: WARNING: the API listens on ${o.bind} without a token: anyone who can reach ${cluster.address} ` +
      'can use this cluster; set --auth-token-file (and --tls-cert/--tls-key), or --bind 127.0.0.1 (SECURITY.md)\n');
    // The first group's layout and precision (the only group's, without a deployment file), then every
    // group's (groups=) and the classes; auth= stays last.
    const first = l.groups[0]!;
    const p = first.precision;
    process.stdout.write(`nodespeed ready ${cluster.address} model=${cluster.coordinator.o.model.name} replicas=${l.replicas} pp=${first.pp} tp=${first.tp} world=${l.world}` +
      // http= before metrics=: the line's existing fields keep their places.
      ` weights=${p.weights} activations=${p.activations} kv-cache=${p.kvCache} ${readyFields(cluster)}${cluster.httpAddress ? ` http=${cluster.httpAddress}` : ''}${cluster.metricsAddress ? ` metrics=${cluster.metricsAddress}` : ''} ` +
      `tls=${cluster.coordinator.o.tls ? 'on' : 'off'} ` +
      `auth=${open ? 'none WARNING=api-open-beyond-loopback-without-token' : cluster.coordinator.o.authToken ? 'token' : 'none'}\n`);
    await stopped;
  });
}
