// Original file: proto/inference.proto


/**
 * weights: bf16 | f16 | f32 | int8 | fp8; activations (the matrix products' inputs): the compute
 * dtype or fp8; kv_cache: bf16 | f16 | f32 | fp8.
 */
export interface PrecisionIn {
  'weights'?: (string);
  'activations'?: (string);
  'kvCache'?: (string);
}

/**
 * weights: bf16 | f16 | f32 | int8 | fp8; activations (the matrix products' inputs): the compute
 * dtype or fp8; kv_cache: bf16 | f16 | f32 | fp8.
 */
export interface Precision {
  'weights': (string);
  'activations': (string);
  'kvCache': (string);
}
