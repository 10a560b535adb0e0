// What numbers a replica computes with: the storage of its weights, the precision its matrix
// products take their activations in, and its KV cache. Derived from the model and the launch
// flags alone, so the coordinator can state it (status, ready line, metrics) before any worker has
// loaded, and every replica of one launch states the same.
import type { ModelConfig } from '../model/config.js';
import type { QuantizeChoice } from '../model/quantization.js';

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
