export { Engine, resolveDevice } from './engine.js';
export type { EngineLoadOptions, DeviceChoice, DTypeChoice } from './engine.js';
export { BlockAllocator, KvCacheFullError } from './block-allocator.js';
export { StopChecker } from './stop-checker.js';
export type { StopOptions, StopUpdate } from './stop-checker.js';
export { validateSampling, DEFAULT_MAX_TOKENS } from '../protocol/sampling.js';
export type { SamplingInput, SamplingParams } from '../protocol/sampling.js';
export { generate, generateAll } from './generate.js';
export type { GenerateEvent, GenerateRequest, GenerateResult, TokenizerLike } from './generate.js';
