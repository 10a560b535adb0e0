// Typed loader for the native addon (build/Release/nodespeed.node, built by
// scripts/build-native.mjs). The shapes here are docs/ENGINE.md "Addon JS API". On load the addon
// gets this process's engine settings (src/settings/index.ts) as one struct, before anything else runs.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import type { RopeConfig } from '../model/config.js';
import type { ShardModelConfig } from '../model/weights.js';
import { nativeSettings, settings } from '../settings/index.js';
import type { NativeSettings } from '../settings/index.js';
import { packStep } from './step-pack.js';

export type DTypeName = 'f32' | 'bf16' | 'f16';
/** What loadTensor takes: the float dtypes and the storage of quantized matrices. */
export type StorageDTypeName = DTypeName | 'i8' | 'f8e4m3';
export type DeviceName = 'cpu' | 'cuda';

/** camelCase of ns::RopeConfig; omitted fields take the defaults of engine.h. */
export type RopeConfigJS = Pick<RopeConfig, 'type' | 'theta'> & Partial<RopeConfig>;

/** The model switches a plain Llama leaves at their defaults (engine.h), so they may be omitted. */
type FamilySwitches = 'oBias' | 'mlpBias' | 'qkNorm' | 'normPlusOne' | 'sandwichNorms' | 'activation' | 'embedScale' |
  'attnScale' | 'attnSoftcap' | 'finalSoftcap' | 'slidingWindow' | 'slidingLayers' | 'kvWindowGroup' | 'numExperts' | 'expertStart' |
  'expertEnd' | 'topK' | 'moeIntermediate' | 'normTopK' | 'sharedIntermediate' | 'sparseLayers';

/**
 * camelCase of ns::ShardConfig (native/src/engine.h): the model's part, as planShard makes it, plus
 * the device and the runtime knobs.
 */
export interface ShardConfigJS extends Omit<ShardModelConfig, 'rope' | 'ropeLocal' | FamilySwitches>, Partial<Pick<ShardModelConfig, FamilySwitches>> {
  device?: DeviceName;
  rope: RopeConfigJS;
  ropeLocal?: RopeConfigJS;
  compute?: DTypeName;
  kvBlockSize?: number;
  kvBlocks?: number;
  gpuMemoryFraction?: number;
  /** Most tokens one step will carry (CUDA keeps their scratch free beside the KV cache); 0: 2048. */
  maxStepTokens?: number;
  deviceIndex?: number;
  threads?: number;
  /** CUDA: the paged KV cache in E4M3 (half the bytes of bf16 per block). */
  kvCacheDtype?: 'auto' | 'fp8';
}

export interface AddonInfo {
  cpu: { simd: 'avx2' | 'generic'; threads: number };
  cuda: { available: boolean; reason: string;
    /** computeCapability: "9.0"; 8.9 and up have FP8 tensor cores. */
    devices: { name: string; totalMemory: number; freeMemory: number; computeCapability: string }[] };
}

/**
 * The less common sampling controls of a sequence (ns::SamplingParams beyond temperature, top-k,
 * top-p and seed), left out when none is set: the addon reads them from the sequence object (src/native/step-pack.ts).
 */
export interface SamplingExtrasJS {
  minP?: number;
  repetitionPenalty?: number;
  presencePenalty?: number;
  frequencyPenalty?: number;
  /** Positions below this hold the prompt (penalties tell prompt and output tokens apart). */
  promptLen?: number;
  /** Distinct token ids and the bias added to each one's logit. */
  logitBiasIds?: Int32Array;
  logitBiasValues?: Float32Array;
  /** -1 none; 0..20: the sampled token's logprob and this many most likely ones. */
  logprobs?: number;
}

export interface StepSeq {
  tokens: Int32Array;
  pos: number;
  blockTable: Int32Array;
  /** The windowed layers' table into their own pool, when the model keeps one (ShardConfigJS.kvWindowGroup). */
  windowBlockTable?: Int32Array;
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number | bigint;
  sampling?: SamplingExtrasJS;
  sample?: boolean;
  allLogits?: boolean;
}

/** Per sampled sequence (in order): its token's logprob (NaN when it asked for none) and 20 (id, logprob) slots, best first, id -1 unused. */
export interface StepLogprobs {
  sampled: Float32Array;
  topIds: Int32Array;
  top: Float32Array;
}

export const MAX_LOGPROBS = 20;

export interface StepRequest {
  seqs: StepSeq[];
  hiddenIn?: Uint8Array;
  wantLogits?: boolean;
  /**
   * Makes the request a step chained to the one submitted before it on this engine: per sequence,
   * -1, or the index in that step's sampled tokens of its first input token, which the addon fills
   * in right before the step runs (the placeholder in `tokens` is ignored). A chained step fails
   * when the step before it failed, or an index is outside its sampled tokens.
   */
  tokenFrom?: Int32Array;
}

export interface StepResult {
  /** Empty when skipped. */
  sampled: Int32Array;
  /** Withdrawn before it started: it ran nothing, and the next chained step reads the tokens of the step before it. */
  skipped?: boolean;
  /** Present when a sampled sequence asked for logprobs. */
  logprobs?: StepLogprobs;
  logits?: Float32Array;
  hiddenOut?: Uint8Array;
  timing: StepTiming;
}

/** Where one step's wall time went, in ms (the step trace records it). */
export interface StepTiming {
  /** From the call to a worker thread starting it: the libuv queue and the engine's calls before it. */
  queueMs: number;
  /** The backend's step: kernel launches, device work and the copy of the sampled tokens back. */
  runMs: number;
  /** From the step's end on the worker thread to the JS thread taking its result. */
  returnMs: number;
  /**
   * From the end of the engine's previous step to this one's start, on the worker thread: how long
   * the backend (the device) sat idle between the two, whatever the JS thread did meanwhile. -1
   * for the engine's first step.
   */
  gapMs: number;
}

/** A step submitted to the engine: its result, and a way to take it back while it has not started. */
export interface SubmittedStep {
  result: Promise<StepResult>;
  /** True when the step had not started: it runs nothing and `result` resolves skipped. False: it runs (or ran) as submitted. */
  withdraw(): boolean;
}

/** A communicator made by the addon (native/src/comm); opaque to the engine. */
export interface NativeComm {
  allReduce(buf: Float32Array): Promise<void>;
  allGather(input: Uint8Array, output: Uint8Array): Promise<void>;
  broadcast(buf: Uint8Array, root: number): Promise<void>;
  send(buf: Uint8Array, peer: number): Promise<void>;
  recv(buf: Uint8Array, peer: number): Promise<void>;
  asyncError(): string | null;
  abort(): void;
  /** Connections refused while forming the group (TCP), one line per address. */
  refused(): string[];
  readonly encryptedLinks: number;
  /** Which OpenSSL the TCP comm uses: "libcrypto.so.3", "libcrypto.so" or "node". */
  readonly cryptoProvider: string;
  /** NCCL: "p2p collectives up to N bytes" or why they are off (set by init()); null for TCP. */
  readonly p2p?: string | null;
  listen?(host: string): Promise<number>;
  connect?(addresses: string[]): Promise<void>;
  init?(): Promise<void>;
}

export interface NativeEngine {
  loadTensor(name: string, dtype: StorageDTypeName, shape: number[], data: Uint8Array): Promise<void>;
  /** kvWindowBlocks: the windowed layers' pool (kvWindowGroup), else 0. */
  finalize(): Promise<{ kvBlocks: number; kvWindowBlocks: number; kvBlockSize: number }>;
  setTpComm(comm: NativeComm): void;
  step(req: StepRequest): Promise<StepResult>;
  /** Queues the step behind the engine's calls so far (in call order) and returns at once. */
  submit(req: StepRequest): SubmittedStep;
  describe(): string;
  dispose(): void;
}

export interface SampleCheckRow {
  logits: Float32Array;
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number | bigint;
  sampling?: SamplingExtrasJS;
  promptIds?: Int32Array;
  outputIds?: Int32Array;
  position?: number;
}

export interface SampleCheckResult {
  penalized: Float32Array;
  sampled: number;
  sampledLogprob: number;
  topIds: Int32Array;
  topLogprobs: Float32Array;
  /** CPU only: the final distribution (ids and probabilities), most likely first. */
  kept?: { ids: Int32Array; probs: Float64Array };
}

export interface Addon {
  /** Hands the addon its settings (ns::Settings); the engines, kernels and comms made afterwards use them. */
  configure(settings: NativeSettings): void;
  /** The settings the addon holds now. */
  settings(): NativeSettings;
  info(): AddonInfo;
  /** Rows x cols of float `data` to int8 / E4M3, one scale per row from the whole row, columns [c0, c1) kept (native/src/common/quant.h). */
  quantize(data: Uint8Array, dtype: DTypeName, rows: number, cols: number, format: 'int8' | 'fp8', c0?: number, c1?: number,
    what?: string): Promise<{ data: Uint8Array; scales: Float32Array }>;
  /** The sampler alone on given logits (tests and the GPU check). */
  sampleCheck(device: DeviceName, vocab: number, rows: SampleCheckRow[]): SampleCheckResult[];
  Engine: new (cfg: ShardConfigJS) => NativeEngine;
  Comm?: new (opts: Record<string, unknown>) => NativeComm;
  ncclUniqueId?(): Uint8Array;
}

/** The addon's own engine: its step takes the request as packStep packs it (src/native/step-pack.ts). */
interface PackedStepEngine extends Omit<NativeEngine, 'step' | 'submit'> {
  stepPacked(ints: Int32Array, floats: Float32Array, seqs: StepSeq[], hiddenIn: Uint8Array | undefined, wantLogits: boolean):
    { result: Promise<StepResult>; ticket: number };
  withdrawStep(ticket: number): boolean;
}

/** The addon's Engine class with step(request) and submit(request): every caller's request is packed here, on its way in. */
function withStepRequests(Native: new (cfg: ShardConfigJS) => PackedStepEngine): new (cfg: ShardConfigJS) => NativeEngine {
  return class Engine extends Native {
    submit(req: StepRequest): SubmittedStep {
      const { ints, floats } = packStep(req);
      const { result, ticket } = this.stepPacked(ints, floats, req.seqs, req.hiddenIn, req.wantLogits === true);
      let withdrawn = false;  // once withdrawn, the addon may forget the ticket (passed over): the answer stays
      return { result, withdraw: () => (withdrawn ||= this.withdrawStep(ticket)) };
    }

    step(req: StepRequest): Promise<StepResult> {
      return this.submit(req).result;
    }
  };
}

// dist/native/addon.js and src/native/addon.ts both sit two levels below the package root.
const packageRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
let cached: Addon | undefined;

/** Loads the addon once and configures it; throws a clear error when it has not been built. */
export function loadAddon(): Addon {
  if (cached) return cached;
  const path = settings().addon ?? join(packageRoot, 'build', 'Release', 'nodespeed.node');
  if (!existsSync(path)) {
    throw new Error(`nodespeed: native addon not built (${path} is missing); run \`npm run build:native\``);
  }
  let addon: Addon;
  try {
    addon = createRequire(import.meta.url)(path) as Addon;
  } catch (err) {
    throw new Error(`nodespeed: cannot load the native addon ${path}: ${(err as Error).message}; ` +
      'rebuild it with `npm run build:native`');
  }
  if (typeof addon.configure !== 'function') throw new Error(`nodespeed: the native addon ${path} is out of date; rebuild it with \`npm run build:native\``);
  addon.configure(nativeSettings());
  addon.Engine = withStepRequests(addon.Engine as unknown as new (cfg: ShardConfigJS) => PackedStepEngine);
  return (cached = addon);
}
