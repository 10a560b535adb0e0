export { Engine, resolveDevice } from './engine.js';
export type { EngineLoadOptions, DeviceChoice, DTypeChoice } from './engine.js';
export { BlockAllocator, KvCacheFullError } from './block-allocator.js';
export { StopChecker } from './stop-checker.js';
export type { FinishReason, StopOptions, StopUpdate } from './stop-checker.js';
export { validateSampling, DEFAULT_MAX_TOKENS } from './sampling.js';
export type { SamplingOptions, SamplingParams } from './sampling.js';
export { generate, generateAll } from './generate.js';
export type { GenerateEvent, GenerateRequest, GenerateResult, TokenizerLike } from './generate.js';
