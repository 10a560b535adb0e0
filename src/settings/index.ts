// The settings registry: every NODESPEED_* environment variable, with its type, default, one line
// of doc and its scope. In TypeScript this is the only module that reads them: `settings()` parses
// process.env once per process and rejects a bad value with a message naming the variable. The
// engine's part goes to the native addon as one struct (`nativeSettings`, handed over by
// src/native/addon.ts when it loads the addon); the launcher forwards exactly the user-facing
// worker entries to every rank (`forwardedEnv`); `nodespeed env` lists the table. It imports
// nothing, so every part of src/ may import it.
//
// Scopes:
//   worker    set by a user, read by worker processes (engine, communicators); forwarded to every rank
//   process   set by a user for the one process (or host) that reads it; never forwarded
//   internal  set by nodespeed itself for the processes it starts
//   test      read by the test and benchmark scripts under test/ and bench/
//   build     read by scripts/ while `npm run build:native` builds the addon (listed for reference)
// `debug` marks tuning and A/B switches: the defaults are the measured choices (docs/ENGINE.md),
// a switch exists to re-measure or to check one path against the other.

export type SettingScope = 'worker' | 'process' | 'internal' | 'test' | 'build';
export type SettingType = 'bool' | 'int' | 'number' | 'string' | 'path' | 'flag';

export interface Setting<T> {
  readonly name: string;
  readonly type: SettingType;
  readonly default: T;
  /** Shown by `nodespeed env` when the default is not a plain value ("cores in the affinity mask"). */
  readonly defaultText?: string;
  readonly doc: string;
  readonly scope: SettingScope;
  readonly debug?: boolean;
  /** Never printed, never forwarded. */
  readonly secret?: boolean;
  readonly min?: number;
  readonly max?: number;
  /** A number that must be above `min`, not equal to it. */
  readonly aboveMin?: boolean;
  readonly parse: (raw: string) => T;
}

export class SettingsError extends Error {
  override name = 'SettingsError';
}

type Opts = Pick<Setting<unknown>, 'scope' | 'debug' | 'secret' | 'defaultText'>;

const TRUE = ['1', 'true', 'yes', 'on'];
const FALSE = ['0', 'false', 'no', 'off'];

function bool(name: string, dflt: boolean, doc: string, o: Opts): Setting<boolean> {
  return { name, type: 'bool', default: dflt, doc, ...o, parse: (raw) => {
    const v = raw.trim().toLowerCase();
    if (TRUE.includes(v)) return true;
    if (FALSE.includes(v)) return false;
    throw new SettingsError(`${name}=${raw}: expected 1 or 0 (or true/false, yes/no, on/off)`);
  } };
}

function integer<D extends number | undefined>(name: string, dflt: D, doc: string, o: Opts & { min: number; max?: number }): Setting<number | D> {
  const range = o.max === undefined ? `>= ${o.min}` : `${o.min}..${o.max}`;
  return { name, type: 'int', default: dflt, doc, ...o, parse: (raw) => {
    const v = raw.trim();
    const n = Number(v);
    if (!/^-?\d+$/.test(v) || n < o.min || (o.max !== undefined && n > o.max)) throw new SettingsError(`${name}=${raw}: expected an integer ${range}`);
    return n;
  } };
}

/** A finite number > 0 (>= 0 with `orZero`). */
function positive(name: string, dflt: number, doc: string, o: Opts & { orZero?: boolean }): Setting<number> {
  return { name, type: 'number', default: dflt, doc, scope: o.scope, ...(o.debug ? { debug: true } : {}), min: 0, aboveMin: !o.orZero, parse: (raw) => {
    const n = Number(raw.trim());
    if (raw.trim() === '' || !Number.isFinite(n) || n < 0 || (n === 0 && !o.orZero))
      throw new SettingsError(`${name}=${raw}: expected a number ${o.orZero ? '>=' : '>'} 0`);
    return n;
  } };
}

function text(name: string, type: 'string' | 'path', doc: string, o: Opts): Setting<string | undefined> {
  return { name, type, default: undefined, doc, ...o, parse: (raw) => raw };
}

/** Build scripts test these for being set at all (any non-empty value). */
function flag(name: string, doc: string): Setting<boolean> {
  return { name, type: 'flag', default: false, doc, scope: 'build', parse: () => true };
}

const worker = { scope: 'worker' } as const;
const workerDebug = { scope: 'worker', debug: true } as const;

/** The registry. Keys are what `settings()` returns; `nativeSettings` picks the engine's part. */
export const REGISTRY = {
  // Worker settings: the engine, the communicators, the replica loop.
  threads: integer('NODESPEED_THREADS', 0, 'CPU backend threads when --threads is not given (0: the cores this process may run on)',
    { ...worker, min: 0 }),
  ncclPath: text('NODESPEED_NCCL', 'path', 'libnccl.so file to load instead of searching LD_LIBRARY_PATH, CUDA_HOME and Python wheels', worker),
  cublasPath: text('NODESPEED_CUBLAS', 'path', 'libcublas.so file to load instead of searching', worker),
  cublasLtPath: text('NODESPEED_CUBLASLT', 'path', 'libcublasLt.so file to load instead of searching', worker),
  heapGrowingPercent: integer('NODESPEED_HEAP_GROWING_PERCENT', 0, 'V8 heap growth of the coordinator\'s and every worker\'s process: after a full collection the old generation may grow to (1 + N/100) x its live size before the next one (0: V8\'s own factor, 1.1-4x; 1000: rarer full collections for a p99 target, larger heaps: docs/LAUNCHER.md)',
    { ...worker, min: 0, max: 10_000 }),
  computeNice: integer('NODESPEED_COMPUTE_NICE', 2, 'nice increment of the CPU backend\'s compute threads, so the event loop keeps a core (0: none)',
    { ...workerDebug, min: 0, max: 19 }),
  noAvx2: bool('NODESPEED_NO_AVX2', false, 'use the portable CPU kernels even where AVX2+FMA+F16C exist', workerDebug),
  p2p: bool('NODESPEED_P2P', true, 'one-shot P2P collectives for tensor parallelism on one host (0: NCCL carries every collective)', workerDebug),
  p2pNorm: bool('NODESPEED_P2P_NORM', true, 'fuse the next RMSNorm into the P2P all-reduce of the row-parallel layers', workerDebug),
  p2pTimeoutS: positive('NODESPEED_P2P_TIMEOUT_S', 60, 'seconds a P2P collective waits for a peer before the step fails', workerDebug),
  cudaRound: integer('NODESPEED_CUDA_ROUND', 0, 'CUDA rounding sites as HF\'s bf16/fp16 forward: mask of 1 residual, 2 RMSNorm, 4 RoPE, 8 SwiGLU, 16 P (--hf-rounding: 31)',
    { ...workerDebug, min: 0, max: 31 }),
  cudaGemv: bool('NODESPEED_CUDA_GEMV', true, 'decode steps of <= 4 sequences on our GEMV kernels (0: cuBLAS)', workerDebug),
  cudaGraphs: bool('NODESPEED_CUDA_GRAPHS', true, 'run decode steps as CUDA graphs', workerDebug),
  cudaGraphMax: integer('NODESPEED_CUDA_GRAPH_MAX', 256, 'largest decode batch run as a CUDA graph', { ...workerDebug, min: 1, max: 256 }),
  cudaFlash: bool('NODESPEED_CUDA_FLASH', true, 'tensor-core flash attention for prefill chunks (0: the SIMT kernel for every token)', workerDebug),
  cudaFlashDecodeMin: integer('NODESPEED_CUDA_FLASH_DECODE_MIN', undefined, 'send a step\'s short sequences through flash tiles when they make >= N (sequence, head) pairs',
    { ...workerDebug, min: 1, defaultText: 'never' }),
  cudaAttnSplitsMax: integer('NODESPEED_CUDA_ATTN_SPLITS_MAX', 16, 'cap on the SIMT attention kernel\'s flash-decoding splits (1: no split)',
    { ...workerDebug, min: 1, max: 16 }),
  cudaWarmup: bool('NODESPEED_CUDA_WARMUP', true, 'run every decode GEMM shape, and the prefill ones up to 1024 rows, once at load (cuBLAS loads its kernels lazily)', workerDebug),
  cudaLt: bool('NODESPEED_CUDA_LT', true, 'decode GEMMs through cuBLASLt with algorithms measured at load (0: cublasGemmEx)', workerDebug),
  cudaProfileStep: integer('NODESPEED_CUDA_PROFILE_STEP', undefined, 'bracket the N-th CUDA step (0-based) with cudaProfilerStart/Stop for `ncu --profile-from-start off`',
    { ...workerDebug, min: 0, defaultText: 'off' }),
  stepTrace: text('NODESPEED_STEP_TRACE', 'path', 'the replica driver appends one JSON line per step to this file (bench/serve reads it)', workerDebug),
  requestTrace: text('NODESPEED_REQUEST_TRACE', 'path', 'the coordinator and each replica driver append requests\' timelines (arrival to first token sent) and their event-loop delay to this file (bench/hetero reads it)', workerDebug),

  // Settings of one process or host.
  authToken: text('NODESPEED_AUTH_TOKEN', 'string', 'bearer token of the API: launch requires it, status and generate --server send it (or --auth-token-file); never passed to workers',
    { scope: 'process', secret: true }),
  sshDir: text('NODESPEED_SSH_DIR', 'path', 'directory used instead of ~/.ssh by the launcher (or --ssh_dir)', { scope: 'process', defaultText: '~/.ssh' }),
  advertiseAddr: text('NODESPEED_ADVERTISE_ADDR', 'string', 'address this host\'s workers give their peers (default: the host name of the hostfile)', { scope: 'process' }),
  host: text('NODESPEED_HOST', 'string', 'host name this host\'s workers report to the coordinator', { scope: 'process', defaultText: 'os.hostname()' }),
  addon: text('NODESPEED_ADDON', 'path', 'native addon file to load instead of build/Release/nodespeed.node', { scope: 'process', debug: true }),
  demoVerbose: bool('NODESPEED_DEMO_VERBOSE', false, '`nodespeed demo` prints the workers\' log lines', { scope: 'process', debug: true }),

  // Set by the launcher for the workers it starts.
  jobToken: text('NODESPEED_JOB_TOKEN', 'string', 'per-job secret a worker presents to the coordinator (random per job)', { scope: 'internal', secret: true }),
  jobSecrets: text('NODESPEED_JOB_SECRETS', 'string', 'a worker\'s control-plane certificate and key, the job CA and the data-plane key (base64 JSON); the worker removes it once read',
    { scope: 'internal', secret: true }),
  coordinator: text('NODESPEED_COORDINATOR', 'string', 'host:port of the coordinator a worker joins', { scope: 'internal' }),
  heartbeatMs: positive('NODESPEED_HEARTBEAT_MS', 1000, 'milliseconds between a worker\'s heartbeats (launch --heartbeat-interval)', { scope: 'internal' }),
  stepTimeoutMs: positive('NODESPEED_STEP_TIMEOUT_MS', 30_000, 'milliseconds one step may run before its worker declares itself wedged (launch --step-timeout; 0: no watchdog)',
    { scope: 'internal', orZero: true }),
  boundCores: integer('NODESPEED_BOUND_CORES', 0, 'how many cores the launcher pinned this rank to (--bind_cores_to_rank, a deployment group\'s cpus); a worker\'s CPU threads default to that (0: not pinned)',
    { scope: 'internal', min: 0 }),

  // Test and benchmark scripts.
  testDevice: text('NODESPEED_TEST_DEVICE', 'string', 'cpu: the GPU checks run on the CPU backend (a dry run of the checks themselves)', { scope: 'test', defaultText: 'cuda' }),
  testModel7b: text('NODESPEED_TEST_MODEL_7B', 'path', 'Llama-2-7B-shape checkpoint of the GPU checks (made with `nodespeed model init --preset 7b` when missing)',
    { scope: 'test', defaultText: '/tmp/llama-7b-shape' }),
  testModel1b: text('NODESPEED_TEST_MODEL_1B', 'path', 'Llama-3.2-1B-shape checkpoint of bench/gpu-visit.sh hetero (made with `nodespeed model init --preset 1b` when missing)',
    { scope: 'test', defaultText: '/tmp/llama-1b' }),
  commit: text('NODESPEED_COMMIT', 'string', 'commit recorded in bench/results when the checkout has no .git to ask', { scope: 'test', defaultText: 'git rev-parse HEAD' }),

} as const;

/**
 * Read by scripts/build-native.mjs and scripts/build-cuda.mjs themselves (they run before dist/ exists);
 * listed here so `nodespeed env` shows them, never parsed at run time.
 */
export const BUILD_SETTINGS: readonly Setting<unknown>[] = [
  flag('NODESPEED_NO_CUDA', 'build the CPU backend only, even where nvcc is found'),
  flag('NODESPEED_BUILD_VERBOSE', 'print the full node-gyp log'),
  flag('NODESPEED_CUDA_VERBOSE', 'print nvcc\'s output and ptxas register use (-Xptxas -v)'),
  integer('NODESPEED_JOBS', 0, 'parallel nvcc jobs (0: one per core)', { scope: 'build', min: 0 }),
  text('NODESPEED_NODEDIR', 'path', 'Node headers for node-gyp', { scope: 'build', defaultText: 'this Node\'s, else /usr' }),
];

export type SettingKey = keyof typeof REGISTRY;
export type Settings = { readonly [K in SettingKey]: ReturnType<(typeof REGISTRY)[K]['parse']> | (typeof REGISTRY)[K]['default'] };

const RUNTIME: readonly Setting<unknown>[] = Object.values(REGISTRY);
const ALL: readonly Setting<unknown>[] = [...RUNTIME, ...BUILD_SETTINGS];
const BY_NAME = new Map(ALL.map((s) => [s.name, s]));

/** The registry entry of a variable name, or undefined. */
export function settingNamed(name: string): Setting<unknown> | undefined {
  return BY_NAME.get(name);
}

/** Every entry, build-time ones last. */
export function allSettings(): readonly Setting<unknown>[] {
  return ALL;
}

/** User-facing entries: the ones a person sets (worker and process scope). */
export function isUserFacing(s: Setting<unknown>): boolean {
  return s.scope === 'worker' || s.scope === 'process';
}

/** Entries the launcher forwards to every rank: user-facing, read by workers, never a secret. */
export function isForwarded(s: Setting<unknown>): boolean {
  return s.scope === 'worker' && !s.secret;
}

/** NODESPEED_CUDA_ROUND's mask of every site where HF's bf16/fp16 forward rounds: `--hf-rounding`. */
export const HF_ROUNDING = '31';
export const HF_ROUNDING_HELP = 'CUDA: round intermediates where Hugging Face\'s bf16/fp16 forward rounds, for logits closest to ' +
  'HF\'s own (default: keep them in f32, closest to the exact function; NODESPEED_CUDA_ROUND=mask sets single sites)';

type Env = Record<string, string | undefined>;

/** Parses one entry from `env`; unset or empty means the default. Throws SettingsError. */
function valueOf<T>(s: Setting<T>, env: Env): T {
  const raw = env[s.name];
  return raw === undefined || raw === '' ? s.default : s.parse(raw);
}

/** Parses every entry of `env` (all errors in one message, one line each). */
export function parseSettings(env: Env): Settings {
  const out: Record<string, unknown> = {};
  const errors: string[] = [];
  for (const [key, s] of Object.entries(REGISTRY) as [SettingKey, Setting<unknown>][]) {
    try {
      out[key] = valueOf(s, env);
    } catch (err) {
      errors.push((err as Error).message);
    }
  }
  if (errors.length) throw new SettingsError(errors.join('\n'));
  return Object.freeze(out) as Settings;
}

let cached: Settings | undefined;

/**
 * This process's settings, parsed from process.env on the first call (later changes to process.env
 * are not seen). With `env`, parses that environment instead (nothing cached).
 */
export function settings(env?: Env): Settings {
  if (env) return parseSettings(env);
  return (cached ??= parseSettings(process.env));
}

/**
 * Replaces some of this process's settings (a command-line flag that stands for a registry entry,
 * e.g. `generate --hf-rounding`). Values are checked like the environment's. Call it before the
 * native addon is loaded: the addon gets its struct once, when it loads.
 */
export function overrideSettings(values: Partial<Record<SettingKey, string>>): Settings {
  const base = settings();
  const out: Record<string, unknown> = { ...base };
  for (const [key, raw] of Object.entries(values) as [SettingKey, string][]) out[key] = valueOf(REGISTRY[key] as Setting<unknown>, { [REGISTRY[key].name]: raw });
  cached = Object.freeze(out) as Settings;
  return cached;
}

/**
 * The environment that sets these registry entries (checked like the environment's values), for
 * flags that stand for an entry of the workers a launcher starts, e.g. `launch --hf-rounding`.
 */
export function settingsEnv(values: Partial<Record<SettingKey, string>>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, raw] of Object.entries(values) as [SettingKey, string][]) {
    const s = REGISTRY[key] as Setting<unknown>;
    s.parse(raw);
    out[s.name] = raw;
  }
  return out;
}

/** NODESPEED_* names in `env` that are not in the registry (typos, removed switches). */
export function unknownSettings(env: Env = process.env): string[] {
  return Object.keys(env).filter((k) => k.startsWith('NODESPEED_') && !BY_NAME.has(k)).sort();
}

/** The forwarded entries that are set in `env`, as they are set (the launcher adds them to every rank). */
export function forwardedEnv(env: Env = process.env): Record<string, string> {
  const out: Record<string, string> = {};
  for (const s of RUNTIME) {
    const v = env[s.name];
    if (isForwarded(s) && v !== undefined) out[s.name] = v;
  }
  return out;
}

/**
 * The struct the native addon reads (ns::Settings, native/src/common/settings.h): camelCase of its
 * fields. Unset optional values travel as their native "none": '' for a path, 0 for a count, -1 for a step.
 */
export interface NativeSettings {
  threads: number;
  computeNice: number;
  noAvx2: boolean;
  ncclPath: string;
  cublasPath: string;
  cublasLtPath: string;
  p2p: boolean;
  p2pNorm: boolean;
  p2pTimeoutS: number;
  cudaRound: number;
  cudaGemv: boolean;
  cudaGraphs: boolean;
  cudaGraphMax: number;
  cudaFlash: boolean;
  cudaFlashDecodeMin: number;
  cudaAttnSplitsMax: number;
  cudaWarmup: boolean;
  cudaLt: boolean;
  cudaProfileStep: number;
}

export function nativeSettings(s: Settings = settings()): NativeSettings {
  return {
    threads: s.threads, computeNice: s.computeNice, noAvx2: s.noAvx2,
    ncclPath: s.ncclPath ?? '', cublasPath: s.cublasPath ?? '', cublasLtPath: s.cublasLtPath ?? '',
    p2p: s.p2p, p2pNorm: s.p2pNorm, p2pTimeoutS: s.p2pTimeoutS,
    cudaRound: s.cudaRound, cudaGemv: s.cudaGemv, cudaGraphs: s.cudaGraphs, cudaGraphMax: s.cudaGraphMax, cudaFlash: s.cudaFlash,
    cudaFlashDecodeMin: s.cudaFlashDecodeMin ?? 0, cudaAttnSplitsMax: s.cudaAttnSplitsMax, cudaWarmup: s.cudaWarmup, cudaLt: s.cudaLt,
    cudaProfileStep: s.cudaProfileStep ?? -1,
  };
}

/** How `nodespeed env` shows an entry's type. */
export function typeText(s: Setting<unknown>): string {
  if (s.type === 'number') return `number ${s.aboveMin ? '>' : '>='} ${s.min}`;
  if (s.type === 'flag') return 'set/unset';
  if (s.type !== 'int') return s.type;
  return s.max === undefined ? `int >= ${s.min}` : `int ${s.min}..${s.max}`;
}

/** How `nodespeed env` shows an entry's default. */
export function defaultText(s: Setting<unknown>): string {
  if (s.defaultText) return s.defaultText;
  if (s.default === undefined) return '-';
  if (s.type === 'flag') return 'unset';
  if (typeof s.default === 'boolean') return s.default ? '1' : '0';
  return String(s.default);
}
