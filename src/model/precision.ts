// What numbers a replica computes with: the storage of its weights, the precision its matrix
// products take their activations in, and its KV cache. Derived from the model and the launch
// flags alone, so the coordinator can state it (status, ready line, metrics) before any worker has
// loaded, and every replica of one launch states the same.
import type { ModelConfig } from './config.js';
import type { QuantizeChoice } from './quantization.js';

export type KvCacheDtypeChoice = 'auto' | 'fp8';

export interface Precision {
  /** bf16 | f16 | f32 | int8 | fp8 */
  weights: string;
  /** The matrix products' inputs: the compute dtype, or fp8 (W8A8). */
  activations: string;
  /** bf16 | f16 | f32 | fp8 */
  kvCache: string;
}

export interface PrecisionOptions {
  device: 'cpu' | 'cuda';
  /** --dtype: CPU weight storage, CUDA compute dtype; auto: as stored. */
  dtype: string;
  quantize?: QuantizeChoice;
  kvCacheDtype?: KvCacheDtypeChoice;
}

export function precisionOf(cfg: ModelConfig, o: PrecisionOptions): Precision {
  const floatDtype = o.dtype === 'auto' ? cfg.dtype : o.dtype;
  const compute = o.device === 'cpu' ? 'f32' : floatDtype === 'f16' ? 'f16' : 'bf16';
  const cq = cfg.quantization;
  const weights = cq ? cq.weights : o.quantize && o.quantize !== 'none' ? o.quantize : o.device === 'cpu' ? floatDtype : compute;
  const fp8Acts = weights === 'fp8' && (cq ? cq.activations !== 'none' : true);
  return { weights, activations: fp8Acts ? 'fp8' : compute, kvCache: o.kvCacheDtype === 'fp8' ? 'fp8' : compute };
}

/** "int8 weights, bf16 activations, bf16 KV cache" */
export function formatPrecision(p: Precision): string {
  return `${p.weights} weights, ${p.activations} activations, ${p.kvCache} KV cache`;
}

/** The short form for the ready line and metrics labels: "w=int8,a=bf16,kv=bf16". */
export function precisionTag(p: Precision): string {
  return `w=${p.weights},a=${p.activations},kv=${p.kvCache}`;
}

const FP8_GPUS = 'compute capability 8.9 or newer: L4, L40S, H100, H200, B200';

/**
 * Why fp8 cannot run here, or null: on CPU (any fp8: --quantize fp8, an fp8 checkpoint, the fp8 KV
 * cache), and on a GPU without FP8 tensor cores (W8A8 and the fp8 KV cache; an FP8 weight-only
 * checkpoint runs W8A16 on any GPU). `gpu` absent: the GPU is another host's, only the CPU case is
 * decided (as `nodespeed launch` does before starting workers). The CUDA backend checks again.
 */
export function fp8Refusal(cfg: ModelConfig, device: 'cpu' | 'cuda', quantize: QuantizeChoice, kv: KvCacheDtypeChoice,
  gpu?: { index: number; name: string; computeCapability: string }): string | null {
  const cq = cfg.quantization;
  const ckpt = cq?.weights === 'fp8' ? `${cfg.dir} holds fp8 weights (${cq.method})` : null;
  const flag = quantize === 'fp8' ? '--quantize fp8' : null;
  const kvFlag = kv === 'fp8' ? '--kv-cache-dtype fp8' : null;
  if (device === 'cpu') {
    const what = flag ?? ckpt ?? kvFlag;
    return what ? `${what}: needs a CUDA GPU with FP8 tensor cores (${FP8_GPUS}); the CPU backend runs ` +
      (what === kvFlag ? 'its KV cache in f32' : 'int8 weights (--quantize int8 from a float checkpoint)') : null;
  }
  const what = flag ?? (cq?.weights === 'fp8' && cq.activations !== 'none' ? ckpt : null) ?? kvFlag;
  if (!what || !gpu || Number(gpu.computeCapability) >= 8.9) return null;
  return `${what}: GPU ${gpu.index} (${gpu.name}) is compute capability ${gpu.computeCapability}; FP8 needs ${FP8_GPUS}`;
}
