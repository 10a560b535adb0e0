// One shard of a model on one device: the model loader (src/model) feeding the native backend
// (src/native/addon.ts). Used by `nodespeed generate` in-process and by serving workers.
import { kvWindowLayout, loadModelConfig, openCheckpoint, planShard, loadShard } from '../model/index.js';
import type { ModelConfig, QuantizeChoice } from '../model/index.js';
import { loadAddon } from '../native/addon.js';
import type {
  AddonInfo, DeviceName, DTypeName, NativeComm, NativeEngine, ShardConfigJS, StepRequest, StepResult, StorageDTypeName, SubmittedStep,
} from '../native/addon.js';
import { convertTensor } from '../model/convert.js';
import { KvGroups } from './block-allocator.js';
import type { KvGroupsOptions } from './block-allocator.js';
import { fp8Refusal, precisionOf } from '../model/precision.js';
import type { KvCacheDtypeChoice, Precision } from '../model/precision.js';

export type DeviceChoice = DeviceName | 'auto';
export type DTypeChoice = DTypeName | 'auto';

export interface EngineLoadOptions {
  device?: DeviceChoice;
  /** CPU: storage dtype of the weights (compute is f32); CUDA: compute dtype. auto: as stored. */
  dtype?: DTypeChoice;
  tpRank?: number;
  tpSize?: number;
  layerStart?: number;
  layerEnd?: number;
  kvBlocks?: number;
  kvBlockSize?: number;
  threads?: number;
  deviceIndex?: number;
  gpuMemoryFraction?: number;
  /** Most tokens one step will carry (a server's --max-batch-tokens): CUDA sizes the KV cache around their scratch. */
  maxStepTokens?: number;
  /** Quantize a float checkpoint's linear layers as they load: int8 (W8A16), fp8 (W8A8; CUDA, compute capability 8.9+). */
  quantize?: QuantizeChoice;
  /** CUDA: 'fp8' keeps the paged KV cache in E4M3 (compute capability 8.9+). */
  kvCacheDtype?: KvCacheDtypeChoice;
  onProgress?: (done: number, total: number) => void;
}

const DEVICES = ['cpu', 'cuda', 'auto'];
const DTYPES = ['auto', 'f32', 'bf16', 'f16'];
const QUANTIZE = ['none', 'int8', 'fp8'];
const KV_DTYPES = ['auto', 'fp8'];
/** auto = cuda when the addon can use a GPU, else cpu; an explicit cuda that cannot work is an error. */
export function resolveDevice(device: DeviceChoice, info: AddonInfo): DeviceName {
  if (!DEVICES.includes(device)) throw new RangeError(`--device must be cpu, cuda or auto (got ${String(device)})`);
  if (device === 'auto') return info.cuda.available ? 'cuda' : 'cpu';
  if (device === 'cuda' && !info.cuda.available) throw new Error(`--device cuda: CUDA unavailable (${info.cuda.reason})`);
  return device;
}

/** fp8Refusal (model/precision.ts) for this process's GPU, thrown. */
export function checkFp8Support(cfg: ModelConfig, device: DeviceName, info: AddonInfo, deviceIndex: number, quantize: QuantizeChoice,
  kv: KvCacheDtypeChoice): void {
  const gpu = info.cuda.devices[deviceIndex];
  const why = fp8Refusal(cfg, device, quantize, kv, gpu ? { index: deviceIndex, name: gpu.name, computeCapability: gpu.computeCapability } : undefined);
  if (why) throw new Error(why);
}

export class Engine {
  private disposed = false;

  private constructor(
    readonly dir: string,
    readonly device: DeviceName,
    readonly config: ModelConfig,
    readonly shard: ShardConfigJS,
    readonly native: NativeEngine,
    readonly kvBlocks: number,
    readonly kvBlockSize: number,
    /** The windowed layers' own pool (models that mix windowed and global layers), else 0. */
    readonly kvWindowBlocks: number,
    readonly precision: Precision,
  ) {}

  static async load(dir: string, opts: EngineLoadOptions = {}): Promise<Engine> {
    const addon = loadAddon();
    const device = resolveDevice(opts.device ?? 'auto', addon.info());
    const dtype = opts.dtype ?? 'auto';
    if (!DTYPES.includes(dtype)) throw new RangeError(`--dtype must be auto, f32, bf16 or f16 (got ${String(dtype)})`);
    const quantize = opts.quantize ?? 'none';
    if (!QUANTIZE.includes(quantize)) throw new RangeError(`--quantize must be none, int8 or fp8 (got ${String(quantize)})`);
    const kvCacheDtype = opts.kvCacheDtype ?? 'auto';
    if (!KV_DTYPES.includes(kvCacheDtype)) throw new RangeError(`--kv-cache-dtype must be auto or fp8 (got ${String(kvCacheDtype)})`);
    const config = loadModelConfig(dir);
    checkFp8Support(config, device, addon.info(), opts.deviceIndex ?? 0, quantize, kvCacheDtype);
    const tpSize = opts.tpSize ?? 1;
    const plan = planShard(config, {
      tpRank: opts.tpRank ?? 0,
      tpSize,
      layerStart: opts.layerStart ?? 0,
      layerEnd: opts.layerEnd ?? config.numLayers,
    }, { quantize, kvCacheFp8: kvCacheDtype === 'fp8' });
    let compute: DTypeName = 'f32';
    let storage: DTypeName | undefined; // CPU: convert weights to this dtype on load
    if (device === 'cuda') {
      if (dtype === 'f32') throw new RangeError('--dtype f32: the CUDA backend computes in bf16 or f16');
      compute = dtype === 'auto' ? (config.dtype === 'f16' ? 'f16' : 'bf16') : dtype;
    } else if (dtype !== 'auto') {
      storage = dtype;
    }
    const shard: ShardConfigJS = {
      ...plan.shardConfig,
      device,
      compute,
      ...(opts.kvBlocks !== undefined ? { kvBlocks: opts.kvBlocks } : {}),
      ...(opts.kvBlockSize !== undefined ? { kvBlockSize: opts.kvBlockSize } : {}),
      ...(opts.threads !== undefined ? { threads: opts.threads } : {}),
      ...(opts.deviceIndex !== undefined ? { deviceIndex: opts.deviceIndex } : {}),
      ...(opts.gpuMemoryFraction !== undefined ? { gpuMemoryFraction: opts.gpuMemoryFraction } : {}),
      ...(opts.maxStepTokens !== undefined ? { maxStepTokens: opts.maxStepTokens } : {}),
      ...(kvCacheDtype !== 'auto' ? { kvCacheDtype } : {}),
    };
    const native = new addon.Engine(shard);
    try {
      const ckpt = await openCheckpoint(dir);
      try {
        await loadShard(ckpt, plan, async (name: string, dt: StorageDTypeName, shape: number[], data: Uint8Array) => {
          // Vectors (norms, biases) are widened to f32 by the backend anyway; convert float matrices only.
          const float = dt === 'f32' || dt === 'bf16' || dt === 'f16';
          const target = storage && float && shape.length === 2 ? storage : dt;
          await native.loadTensor(name, target, shape, float ? convertTensor(data, dt, target as DTypeName) : data);
        }, opts.onProgress, (data, dt, rows, cols, format, c0, c1, what) => addon.quantize(data, dt, rows, cols, format, c0, c1, what));
      } finally {
        await ckpt.close();
      }
      const { kvBlocks, kvBlockSize, kvWindowBlocks } = await native.finalize();
      const precision = precisionOf(config, { device, dtype: device === 'cuda' ? compute : storage ?? 'auto', quantize, kvCacheDtype });
      return new Engine(dir, device, config, shard, native, kvBlocks, kvBlockSize, kvWindowBlocks, precision);
    } catch (err) {
      native.dispose();
      throw err;
    }
  }

  get maxPosition(): number {
    return this.shard.maxPosition;
  }

  /** The sliding window whose blocks the KV cache reuses (kvWindowLayout), 0 with full attention. */
  get kvWindow(): number {
    return kvWindowLayout(this.config).window;
  }

  /**
   * How a scheduler's KvGroups follow this model's windows: every layer's window, or the windowed
   * layers' own pool of `windowBlocks` (a replica's smallest) when windowed and global layers mix.
   */
  kvWindowOptions(windowBlocks = this.kvWindowBlocks): Pick<KvGroupsOptions, 'window' | 'windowBlocks'> {
    const { kind, window } = kvWindowLayout(this.config);
    if (kind !== 'group') return { window };
    if (!(windowBlocks > 0)) throw new Error(`${this.dir}: the windowed layers keep KV blocks of their own, and none were given`);
    return { window, windowBlocks };
  }

  /** The KV groups of this engine's own cache (in-process generation). */
  kvGroups(): KvGroups {
    return new KvGroups({ blocks: this.kvBlocks, blockSize: this.kvBlockSize, ...this.kvWindowOptions() });
  }

  setTpComm(comm: NativeComm): void {
    this.native.setTpComm(comm);
  }

  /** One forward step (docs/ENGINE.md); argument errors reject too, like compute errors. */
  async step(req: StepRequest): Promise<StepResult> {
    if (this.disposed) throw new Error('step: the engine was disposed');
    return this.native.step(req);
  }

  /**
   * Queues a step behind the ones submitted before it and returns at once (a chained request's
   * tokenFrom reads the sampled tokens of the step just before it). Argument errors throw here;
   * compute errors reject `result`.
   */
  submit(req: StepRequest): SubmittedStep {
    if (this.disposed) throw new Error('step: the engine was disposed');
    return this.native.submit(req);
  }

  describe(): string {
    return this.native.describe();
  }

  /** Frees weights and KV cache now. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.native.dispose();
  }
}
