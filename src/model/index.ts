// The model loader (docs/ENGINE.md "Model loader"): HF config, safetensors, TP/PP slicing, tokenizer.
export * from './config.js';
export * from './safetensors.js';
export * from './weights.js';
export * from './tokenizer.js';
export * from './chat-template.js';
export { TokenTexts, TokenizerPool } from './tokenizer-pool.js';
export type { ReplayedText } from './tokenizer-pool.js';
export * from './info.js';
export * from './quantization.js';
export * from './precision.js';
export { initModel, MOE_PRESETS, PRESETS } from './init.js';
export { compressedTensorsConfig, quantizeModel } from './quantize.js';
export type { QuantizeModelOptions, QuantizeModelResult } from './quantize.js';
export type { InitOptions, InitResult, LlamaShape, MoeShape } from './init.js';
