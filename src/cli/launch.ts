// `nodespeed launch --model DIR [launcher flags] [--tp N] [--pp N] [--replicas N|auto] ...`: the
// coordinator in this process, one worker per rank through the launcher, one progress bar for the
// whole load, and exactly one line `nodespeed ready <addr:port> ...` on stdout once every replica
// serves. Ctrl-C (or SIGTERM) tears everything down. --dry-run prints the layout and the per-rank
// memory estimate, and fails when the layout does not fit.
import { createServer } from 'node:net';
import { Command, Option } from 'commander';

import { loadAddon } from '../native/addon.js';
import { loadModelConfig } from '../model/config.js';
import { launchCluster } from '../launcher/cluster.js';
import type { Cluster } from '../launcher/cluster.js';
import { planWithSpares } from '../launcher/cluster.js';
import { describeLayout } from '../coordinator/layout.js';
import { headTail, LIST_LIMIT } from '../launcher/format.js';
import { estimateMemory, gib } from '../coordinator/memory.js';
import { HF_ROUNDING, HF_ROUNDING_HELP, settingsEnv } from '../settings/index.js';
import { addLauncherOptions, planFromOptions, readLauncherOptions } from '../launcher/flags.js';
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

export interface LaunchFlags {
  model: string;
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
function maxBatchTokens(f: LaunchFlags, device: 'cpu' | 'cuda'): number {
  return f.maxBatchTokens ?? (device === 'cuda' ? 8192 : 256);
}

async function dryRun(f: LaunchFlags, raw: Record<string, unknown>): Promise<number> {
  const lo = readLauncherOptions(raw);
  const config = loadModelConfig(f.model);
  await checkCheckpoint(f.model);
  const placement = planFromOptions(lo);
  const device = resolveDeviceFlag(f.device, placement);
  const planned = planWithSpares(config, placement, { tp: f.tp, pp: f.pp, replicas: f.replicas, allowTpAcrossHosts: f.allowTpAcrossHosts }, f.spares, device);
  const { layout } = planned;
  const spareSlots = planned.placement.ranks.slice(layout.world);
  let gpuMemory: number | undefined;
  if (device === 'cuda') gpuMemory = loadAddon().info().cuda.devices[0]?.totalMemory;
  const mem = estimateMemory(config, layout, { device, dtype: f.dtype, quantize: f.quantize, kvCacheDtype: f.kvCacheDtype, kvBlocks: f.kvBlocks, kvBlockSize: 16,
    stepTokens: maxBatchTokens(f, device), ...(gpuMemory ? { gpuMemory } : {}) });
  const layoutLines = describeLayout(layout);
  const out: string[] = [`model ${f.model}: ${config.numLayers} layers, hidden ${config.hiddenSize}, vocab ${config.vocabSize}`,
    layoutLines[0]!, ...headTail(layoutLines.slice(1), LIST_LIMIT, (n) => `... ${n} more replica(s) laid out the same way on the following hosts`),
    ...(spareSlots.length ? [`spares: ${headTail(spareSlots.map((r) => `slot ${r.rank} @${r.host}`), LIST_LIMIT, (n) => `... ${n} more`).join(', ')} (joined, no weights until one takes a lost rank)`] : []),
    `per-rank memory estimate (weights + KV cache + one step's scratch at ${maxBatchTokens(f, device)} tokens + 256 MiB reserve):`];
  const rankLine = (r: (typeof mem.ranks)[number]): string => {
    const p = layout.ranks[r.rank]!;
    return `  rank ${r.rank} @${r.host} replica ${p.replica} stage ${p.stage} tp ${p.tpRank} layers ${p.layerStart}-${p.layerEnd - 1}: ` +
      `weights ${gib(r.weightBytes)} GiB, kv ${gib(r.kvBytes)} GiB, step scratch ${gib(r.scratchBytes)} GiB, total ${gib(r.totalBytes)} GiB`;
  };
  if (mem.ranks.length <= LIST_LIMIT) out.push(...mem.ranks.map(rankLine));
  else {
    // Thousands of ranks: one line per distinct position and estimate (ranks of other replicas are alike).
    const groups = new Map<string, { first: (typeof mem.ranks)[number]; count: number }>();
    for (const r of mem.ranks) {
      const p = layout.ranks[r.rank]!;
      const key = [p.stage, p.tpRank, r.weightBytes, r.kvBytes, r.scratchBytes, r.totalBytes].join('/');
      const g = groups.get(key);
      if (g) g.count++;
      else groups.set(key, { first: r, count: 1 });
    }
    for (const g of groups.values()) out.push(`${rankLine(g.first)}${g.count > 1 ? ` (and ${g.count - 1} more rank(s) alike)` : ''}`);
  }
  process.stdout.write(out.join('\n') + '\n');
  if (mem.problems.length) {
    process.stderr.write(`nodespeed launch: the layout does not fit:\n  ${mem.problems.join('\n  ')}\n`);
    return 1;
  }
  return 0;
}

/** The bar of the launch in progress, so a Ctrl-C can restore the terminal before exiting. */
let activeBar: ReturnType<typeof loadBar>;

/**
 * Starts the cluster with these flags; shared by `launch` and `demo`. The checkpoint, the device and
 * the port are checked before any worker starts.
 */
export async function startFromFlags(f: LaunchFlags, raw: Record<string, unknown>,
  log: (l: string) => void = (l) => void process.stderr.write(`${l}\n`)): Promise<Cluster> {
  const lo = readLauncherOptions(raw);
  const placement = planFromOptions(lo);
  const device = resolveDeviceFlag(f.device, placement);
  if (f.authToken !== undefined)
    throw new Error('--auth-token puts the token on the command line, where ps shows it to every user of this host: ' +
      'write it to a file and pass --auth-token-file FILE, or set NODESPEED_AUTH_TOKEN');
  const authToken = readAuthToken(f.authTokenFile);
  const tls = readPublicTls(f.tlsCert, f.tlsKey, f.tlsClientCa);
  await checkCheckpoint(f.model);
  await checkPortFree('--port', f.bind, f.port);
  await checkPortFree('--metrics-port', f.bind, f.metricsPort);
  await checkPortFree('--http-port', f.bind, f.httpPort);
  const bar = f.progress ? loadBar() : undefined;
  activeBar = bar;
  try {
    return await launchCluster({
      model: f.model, placement, tp: f.tp, pp: f.pp, replicas: f.replicas, device, dtype: f.dtype, quantize: f.quantize,
      kvCacheDtype: f.kvCacheDtype, bind: f.bind, port: f.port,
      ...(f.advertiseAddr ? { advertise: f.advertiseAddr } : {}), kvBlocks: f.kvBlocks, threads: f.threads,
      maxBatchTokens: maxBatchTokens(f, device), maxQueue: f.maxQueue, heartbeatIntervalMs: f.heartbeatInterval * 1000,
      heartbeatTimeoutMs: f.heartbeatTimeout * 1000, requestTimeoutMs: f.requestTimeout * 1000, allowTpAcrossHosts: f.allowTpAcrossHosts,
      stepTimeoutMs: f.stepTimeout * 1000, joinTimeoutMs: f.joinTimeout * 1000, spares: f.spares,
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

export function register(program: Command): void {
  const cmd = program
    .command('launch')
    .description('Serve a Hugging Face model over gRPC: coordinator here, one worker per slot of the hostfile (TP x PP x replicas)')
    .requiredOption('--model <dir>', 'Hugging Face model folder');
  addServingOptions(cmd);
  addLauncherOptions(cmd);
  cmd.action(async (o: LaunchFlags & Record<string, unknown>) => {
    if (readLauncherOptions(o).dryRun) {
      process.exitCode = await dryRun(o, o);
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
    const cluster = await startFromFlags(o, o);
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
    const p = cluster.precision;
    process.stdout.write(`nodespeed ready ${cluster.address} model=${cluster.coordinator.o.model.name} replicas=${l.replicas} pp=${l.pp} tp=${l.tp} world=${l.world}` +
      // http= before metrics=: the line's existing fields keep their places.
      ` weights=${p.weights} activations=${p.activations} kv-cache=${p.kvCache}${cluster.httpAddress ? ` http=${cluster.httpAddress}` : ''}${cluster.metricsAddress ? ` metrics=${cluster.metricsAddress}` : ''} ` +
      `tls=${cluster.coordinator.o.tls ? 'on' : 'off'} ` +
      `auth=${open ? 'none WARNING=api-open-beyond-loopback-without-token' : cluster.coordinator.o.authToken ? 'token' : 'none'}\n`);
    await stopped;
  });
}
