// The model loader (docs/ENGINE.md "Model loader"): HF config, safetensors, TP/PP slicing, tokenizer.
export * from './config.js';
export * from './safetensors.js';
export * from './weights.js';
export * from './tokenizer.js';
