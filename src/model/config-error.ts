// The error of a bad config.json / generation_config.json field (its own module: config.ts and
// quantization.ts, which config.ts calls, both throw it).
export class ConfigError extends Error {}
