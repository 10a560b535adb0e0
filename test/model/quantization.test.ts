// config.json's quantization_config (src/model/quantization.ts) and the plans of pre-quantized and
// quantize-at-load shards (src/model/weights.ts): which tensors a backend gets, read from where,
// sliced how, for compressed-tensors FP8 (static and dynamic), int8 pack-quantized and fbgemm_fp8.
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import { describeQuant, loadModelConfig, parseQuantizationConfig, planShard, precisionOf } from '../../src/model/index.js';
import { PY_TINY } from '../engine/helpers.js';

const tmp = mkdtempSync(join(tmpdir(), 'ns-qcfg-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const ct = (weights: object, input: object | null, extra: object = {}) => ({
  quant_method: 'compressed-tensors', format: 'float-quantized', quantization_status: 'compressed',
  config_groups: { group_0: { targets: ['Linear'], weights, input_activations: input } }, ignore: ['lm_head'], ...extra,
});
const FP8_CHANNEL = { num_bits: 8, type: 'float', symmetric: true, strategy: 'channel', dynamic: false };

/** py-tiny's config with a quantization_config (the weights file is not read by planShard). */
function withQuant(name: string, q: object, tie = true) {
  const dir = join(tmp, name);
  cpSync(PY_TINY, dir, { recursive: true, filter: (s) => !s.endsWith('.safetensors') });
  const cfg = JSON.parse(readFileSync(join(PY_TINY, 'config.json'), 'utf8'));
  writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...cfg, tie_word_embeddings: tie, quantization_config: q }));
  return loadModelConfig(dir);
}

describe('quantization_config', () => {
  it('normalizes compressed-tensors FP8 (dynamic, static, weight-only), int8 and fbgemm_fp8', () => {
    const f = 'config.json';
    expect(parseQuantizationConfig(ct(FP8_CHANNEL, { num_bits: 8, type: 'float', symmetric: true, strategy: 'token', dynamic: true }), f, 2))
      .toMatchObject({ weights: 'fp8', strategy: 'channel', activations: 'dynamic', headQuantized: false });
    expect(parseQuantizationConfig(ct({ ...FP8_CHANNEL, strategy: 'tensor' }, { num_bits: 8, type: 'float', symmetric: true, strategy: 'tensor', dynamic: false }), f, 2))
      .toMatchObject({ weights: 'fp8', strategy: 'tensor', activations: 'static' });
    expect(parseQuantizationConfig(ct(FP8_CHANNEL, null), f, 2)).toMatchObject({ activations: 'none' });
    expect(parseQuantizationConfig({ ...ct({ num_bits: 8, type: 'int', symmetric: true, strategy: 'channel' }, null), format: 'pack-quantized', ignore: [] }, f, 2))
      .toMatchObject({ weights: 'int8', format: 'pack-quantized', headQuantized: true });
    const fb = parseQuantizationConfig({ quant_method: 'fbgemm_fp8', activation_scale_ub: 1200, modules_to_not_convert: ['lm_head'] }, f, 2)!;
    expect(fb).toMatchObject({ method: 'fbgemm_fp8', weights: 'fp8', activations: 'dynamic', activationScaleUb: 1200, headQuantized: false });
    expect(describeQuant(fb)).toBe('fbgemm_fp8 fp8 (W8A8, fbgemm, per-channel weight scales, dynamic per-token activations (amax capped at 1200), LM head unquantized)');
    expect(parseQuantizationConfig(ct(FP8_CHANNEL, null, { kv_cache_scheme: { num_bits: 8, type: 'float', strategy: 'tensor', symmetric: true } }), f, 2))
      .toMatchObject({ kvCacheScales: true });
    expect(parseQuantizationConfig(undefined, f, 2)).toBeNull();
  });

  it('refuses what it cannot run, naming the field', () => {
    const f = '/m/config.json';
    const bad = (q: unknown) => () => parseQuantizationConfig(q, f, 2);
    expect(bad({ quant_method: 'awq' })).toThrow(/\/m\/config\.json: field quantization_config\.quant_method is "awq", which nodespeed does not load; supported: compressed-tensors/);
    expect(bad({ ...ct(FP8_CHANNEL, null), quantization_status: 'frozen' })).toThrow(/quantization_status is "frozen"/);
    expect(bad({ ...ct(FP8_CHANNEL, null), format: 'marlin-24' })).toThrow(/format is "marlin-24"; supported for float8 weights: float-quantized, naive-quantized/);
    expect(bad(ct({ num_bits: 8, type: 'int', symmetric: true, strategy: 'channel' }, { num_bits: 8, type: 'int', strategy: 'token', dynamic: true })))
      .toThrow(/int8 activation quantization \(W8A8 int8\) is not supported/);
    expect(bad({ ...ct(FP8_CHANNEL, null), config_groups: { g: { targets: ['re:.*mlp.*'], weights: FP8_CHANNEL } } })).toThrow(/targets is \["re:\.\*mlp\.\*"\]; supported: \["Linear"\]/);
    expect(bad({ ...ct(FP8_CHANNEL, null), sparsity_config: { format: 'sparse-bitmask' } })).toThrow(/sparse compressed-tensors checkpoints are not supported/);
    expect(bad({ quant_method: 'fbgemm_fp8', modules_to_not_convert: ['model.layers.1.mlp.down_proj'] }))
      .toThrow(/modules_to_not_convert leaves model\.layers\.1\.mlp\.down_proj unquantized/);
  });
});

describe('plans of quantized shards', () => {
  const range = (tpRank: number, tpSize: number) => ({ tpRank, tpSize, layerStart: 0, layerEnd: 6 });

  it('compressed-tensors FP8 with static input scales: E4M3 weights, per-row f32 scales, input scales; the LM head as stored', () => {
    const cfg = withQuant('fp8-static', ct({ ...FP8_CHANNEL, strategy: 'tensor' }, { num_bits: 8, type: 'float', symmetric: true, strategy: 'tensor', dynamic: false }));
    const p = planShard(cfg, range(1, 2));
    expect(p.shardConfig).toMatchObject({ weights: 'fp8', headWeights: 'native', staticInputScales: true, fp8Activations: true, tiedEmbeddings: true });
    const by = new Map(p.tensors.map((t) => [t.name, t]));
    expect(by.get('model.layers.0.self_attn.q_proj.weight')).toMatchObject({ source: 'model.layers.0.self_attn.q_proj.weight', dtypes: ['f8e4m3'],
      dtype: 'f8e4m3', slice: { kind: 'rows', start: 128, end: 256 }, shape: [128, 256] });
    // per-tensor: one value, read whole, repeated for this rank's rows
    expect(by.get('model.layers.0.self_attn.q_proj.weight_scale')).toMatchObject({ fullShape: [1], altShapes: [[]], slice: { kind: 'whole' },
      shape: [128], dtype: 'f32', convert: { kind: 'scale', rows: 128 } });
    expect(by.get('model.layers.0.mlp.down_proj.weight')).toMatchObject({ slice: { kind: 'cols', start: 344, end: 688 }, shape: [256, 344] });
    expect(by.get('model.layers.0.mlp.down_proj.input_scale')).toMatchObject({ source: 'model.layers.0.mlp.down_proj.input_scale', shape: [1] });
    expect(by.has('lm_head.weight')).toBe(false);
    expect(precisionOf(cfg, { device: 'cuda', dtype: 'auto' })).toEqual({ weights: 'fp8', activations: 'fp8', kvCache: 'bf16' });
  });

  it('compressed-tensors pack-quantized int8 at tp 2: words sliced by rows and by columns of words; per-channel scales by rows or whole', () => {
    const cfg = withQuant('int8-packed', { ...ct({ num_bits: 8, type: 'int', symmetric: true, strategy: 'channel' }, null), format: 'pack-quantized', ignore: [] }, false);
    const p = planShard(cfg, range(1, 2));
    const by = new Map(p.tensors.map((t) => [t.name, t]));
    expect(by.get('model.layers.2.mlp.gate_proj.weight')).toMatchObject({ source: 'model.layers.2.mlp.gate_proj.weight_packed', fullShape: [688, 64],
      dtypes: ['i32'], dtype: 'i8', slice: { kind: 'rows', start: 344, end: 688 }, shape: [344, 256], convert: { kind: 'unpack-int8' } });
    expect(by.get('model.layers.2.mlp.gate_proj.weight_scale')).toMatchObject({ fullShape: [688, 1], slice: { kind: 'rows', start: 344, end: 688 }, shape: [344] });
    expect(by.get('model.layers.2.mlp.down_proj.weight')).toMatchObject({ fullShape: [256, 172], slice: { kind: 'cols', start: 86, end: 172 }, shape: [256, 344] });
    expect(by.get('model.layers.2.mlp.down_proj.weight_scale')).toMatchObject({ slice: { kind: 'whole' }, shape: [256] });
    expect(by.get('lm_head.weight')).toMatchObject({ source: 'lm_head.weight_packed', dtype: 'i8' });
    expect(p.shardConfig).toMatchObject({ weights: 'int8', headWeights: 'int8', tiedEmbeddings: false });
    expect(() => planShard(cfg, range(0, 8))).toThrow(/not a multiple of 4, so pack-quantized int8 words cannot be split/);
  });

  it('fbgemm_fp8 and --quantize at load', () => {
    const fb = withQuant('fbgemm', { quant_method: 'fbgemm_fp8', activation_scale_ub: 1200, modules_to_not_convert: ['lm_head'] });
    expect(planShard(fb, range(0, 1)).shardConfig).toMatchObject({ weights: 'fp8', activationScaleUb: 1200, staticInputScales: false });
    const plain = loadModelConfig(PY_TINY);
    const int8 = planShard(plain, range(0, 2), { quantize: 'int8' });
    const by = new Map(int8.tensors.map((t) => [t.name, t]));
    // a tied head at load: its own quantized copy of the embedding rows; the embedding as stored
    expect(by.get('lm_head.weight')).toMatchObject({ source: 'model.embed_tokens.weight', dtype: 'i8', convert: { kind: 'quantize', format: 'int8' } });
    expect(by.get('model.embed_tokens.weight')).toMatchObject({ slice: { kind: 'rows', start: 0, end: 1024 } });
    expect(by.get('model.layers.0.self_attn.o_proj.weight')).toMatchObject({ slice: { kind: 'cols', start: 0, end: 128 }, convert: { kind: 'quantize' } });
    expect(int8.shardConfig).toMatchObject({ weights: 'int8', headWeights: 'int8', tiedEmbeddings: false });
    expect(planShard(plain, range(0, 1), { quantize: 'fp8' }).shardConfig).toMatchObject({ weights: 'fp8', headWeights: 'native', tiedEmbeddings: true });
  });
});
