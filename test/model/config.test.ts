import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import { loadModelConfig } from '../../src/model/index.js';
import { TINY_CONFIG, tmpDir, removeTmpDirs } from './helpers.js';

afterAll(removeTmpDirs);

const FIXTURES = join(import.meta.dirname, '..', 'fixtures', 'hf-reference');

function configDir(cfg: Record<string, unknown>, gen?: Record<string, unknown>): string {
  const dir = tmpDir('ns-config-');
  writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg));
  if (gen) writeFileSync(join(dir, 'generation_config.json'), JSON.stringify(gen));
  return dir;
}

describe('loadModelConfig', () => {
  it('reads the transformers-5 fixture (rope_parameters, GQA, explicit head_dim)', () => {
    const c = loadModelConfig(join(FIXTURES, 'tiny-llama-gqa-f32'));
    expect(c).toMatchObject({
      modelType: 'llama', hiddenSize: 64, intermediateSize: 176, numHeads: 4, numKvHeads: 2, headDim: 16,
      vocabSize: 512, numLayers: 4, rmsEps: 1e-5, maxPosition: 256, tieWordEmbeddings: false, qkvBias: false,
      dtype: 'f32', bosTokenId: 0, eosTokenIds: [1],
    });
    expect(c.rope).toEqual({ type: 'default', theta: 10000, factor: 1, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPos: 256, attentionFactor: 1, betaFast: 32, betaSlow: 1, truncate: true, shortFactor: [], longFactor: [], rotaryDim: 16 });
    expect(loadModelConfig(join(FIXTURES, 'tiny-llama-gqa-bf16')).dtype).toBe('bf16');
  });

  it('defaults num_key_value_heads to the head count and head_dim to hidden/heads', () => {
    const { num_key_value_heads: _k, head_dim: _d, ...rest } = TINY_CONFIG;
    const c = loadModelConfig(configDir(rest));
    expect(c.numKvHeads).toBe(4);
    expect(c.headDim).toBe(4);
  });

  it('llama3 rope_scaling with rope_theta (Llama 3.1 style)', () => {
    const c = loadModelConfig(configDir({ ...TINY_CONFIG, rope_theta: 500000,
      rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 } }));
    expect(c.rope).toMatchObject({ type: 'llama3', theta: 500000, factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPos: 8192 });
  });

  it('linear rope_scaling with the old `type` key, and rope_parameters llama3', () => {
    expect(loadModelConfig(configDir({ ...TINY_CONFIG, rope_scaling: { type: 'linear', factor: 2 } })).rope)
      .toMatchObject({ type: 'linear', factor: 2, theta: 10000 });
    const { rope_theta: _t, ...noTheta } = TINY_CONFIG;
    expect(loadModelConfig(configDir({ ...noTheta, rope_parameters: { rope_type: 'llama3', rope_theta: 500000, factor: 32,
      low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 } })).rope)
      .toMatchObject({ type: 'llama3', theta: 500000, factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPos: 8192 });
  });

  it('qwen2 always has q/k/v bias, tied embeddings, disabled sliding window; generation_config eos list', () => {
    const dir = configDir({ ...TINY_CONFIG, model_type: 'qwen2', tie_word_embeddings: true, torch_dtype: 'bfloat16', dtype: undefined,
      sliding_window: 32, use_sliding_window: false, eos_token_id: 5 }, { bos_token_id: 3, eos_token_id: [7, 8] });
    const c = loadModelConfig(dir);
    expect(c).toMatchObject({ modelType: 'qwen2', qkvBias: true, tieWordEmbeddings: true, dtype: 'bf16', torchDtype: 'bfloat16',
      slidingWindow: null, bosTokenId: 3, eosTokenIds: [7, 8] });
  });

  it('mistral windows every layer and serves its whole context; llama attention_bias means q/k/v and o biases', () => {
    const m = loadModelConfig(configDir({ ...TINY_CONFIG, model_type: 'mistral', sliding_window: 4096 }));
    expect(m).toMatchObject({ slidingWindow: 4096, slidingLayers: [true, true], maxPosition: TINY_CONFIG.max_position_embeddings });
    expect(loadModelConfig(configDir({ ...TINY_CONFIG, attention_bias: true }))).toMatchObject({ qkvBias: true, oBias: true });
    expect(loadModelConfig(configDir({ ...TINY_CONFIG, attention_bias: false }))).toMatchObject({ qkvBias: false, oBias: false });
  });

  it('errors name config.json and the field', () => {
    const bad = (cfg: Record<string, unknown>) => () => loadModelConfig(configDir(cfg));
    expect(bad({ ...TINY_CONFIG, model_type: 'gpt2' })).toThrow(/config\.json: field model_type is "gpt2"; supported: llama, mistral, qwen2, qwen3, gemma2/);
    expect(bad({ ...TINY_CONFIG, rope_scaling: { type: 'su', factor: 4 } })).toThrow(/config\.json: field rope_scaling\.type is "su"/);
    expect(bad({ ...TINY_CONFIG, rope_parameters: { rope_type: 'mrope', rope_theta: 1 } })).toThrow(/field rope_parameters\.rope_type is "mrope"/);
    expect(bad({ ...TINY_CONFIG, rope_parameters: { rope_type: 'dynamic', rope_theta: 1 } })).toThrow(/field rope_parameters\.factor is missing/);
    expect(bad({ ...TINY_CONFIG, rope_scaling: { rope_type: 'llama3', factor: 8 } })).toThrow(/field rope_scaling\.low_freq_factor is missing/);
    expect(bad({ ...TINY_CONFIG, hidden_size: '16' })).toThrow(/config\.json: field hidden_size must be an integer/);
    expect(bad({ ...TINY_CONFIG, num_key_value_heads: 3 })).toThrow(/field num_key_value_heads \(3\) must divide/);
    expect(bad({ ...TINY_CONFIG, dtype: 'int8' })).toThrow(/config\.json: field dtype: unsupported dtype "int8"/);
    const { vocab_size: _v, ...noVocab } = TINY_CONFIG;
    expect(bad(noVocab)).toThrow(/config\.json: field vocab_size is missing/);
    expect(() => loadModelConfig(tmpDir())).toThrow(/config\.json: cannot read \(ENOENT\)/);
    const dir = tmpDir();
    writeFileSync(join(dir, 'config.json'), '{"model_type": ');
    expect(() => loadModelConfig(dir)).toThrow(/config\.json: not valid JSON/);
  });
});
