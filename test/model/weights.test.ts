import { afterAll, describe, expect, it } from 'vitest';

import { loadModelConfig, loadShard, openCheckpoint, planShard } from '../../src/model/index.js';
import { TINY_CONFIG, tensorsFor, writeModel, removeTmpDirs } from './helpers.js';

afterAll(removeTmpDirs);

type Loaded = Map<string, { dtype: string; shape: number[]; values: Float32Array }>;

async function load(dir: string, range: { tpRank: number; tpSize: number; layerStart: number; layerEnd: number }): Promise<Loaded> {
  const cfg = loadModelConfig(dir);
  const ck = await openCheckpoint(dir);
  const out: Loaded = new Map();
  try {
    await loadShard(ck, planShard(cfg, range), async (name, dtype, shape, data) => {
      out.set(name, { dtype, shape, values: new Float32Array(data.slice().buffer) });
    });
  } finally {
    await ck.close();
  }
  return out;
}

/** Reference slicing of a full row-major tensor. */
function rowsOf(full: Float32Array, cols: number, r0: number, r1: number): number[] {
  return [...full.subarray(r0 * cols, r1 * cols)];
}
function colsOf(full: Float32Array, rows: number, cols: number, c0: number, c1: number): number[] {
  const out: number[] = [];
  for (let r = 0; r < rows; r++) out.push(...full.subarray(r * cols + c0, r * cols + c1));
  return out;
}

describe('planShard / loadShard', () => {
  // qwen2: q/k/v carry biases, so their slicing is covered too.
  const cfg = { ...TINY_CONFIG, model_type: 'qwen2', architectures: ['Qwen2ForCausalLM'], attention_bias: true };
  const tensors = tensorsFor(cfg);
  const full = new Map(tensors.map((t) => [t.name, new Float32Array(t.data.slice().buffer)]));
  const dir = writeModel(cfg, tensors, 2);
  const F = (n: string) => full.get(n)!;
  const H = 16, D = 4, I = 24;

  it('tp=1 over all layers hands over every tensor whole and the full ShardConfig', async () => {
    const plan = planShard(loadModelConfig(dir), { tpRank: 0, tpSize: 1, layerStart: 0, layerEnd: 2 });
    expect(plan.shardConfig).toMatchObject({
      hidden: 16, intermediate: 24, nHeads: 4, nKvHeads: 2, headDim: 4, vocabSize: 10, vocabStart: 0, vocabEnd: 10,
      layerStart: 0, layerEnd: 2, maxPosition: 64, rmsEps: 1e-5, qkvBias: true, oBias: false, mlpBias: false, tiedEmbeddings: false,
      hasEmbedding: true, hasHead: true, tpRank: 0, tpSize: 1, slidingWindow: 0, slidingLayers: [0, 0], numExperts: 0,
      sparseLayers: [0, 0], activation: 'silu', embedScale: 1, attnSoftcap: 0, finalSoftcap: 0,
      rope: { type: 'default', theta: 10000, factor: 1, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPos: 64, rotaryDim: 4 },
      weights: 'native', headWeights: 'native', staticInputScales: false, fp8Activations: true, activationScaleUb: 0,
    });
    const got = await load(dir, { tpRank: 0, tpSize: 1, layerStart: 0, layerEnd: 2 });
    expect([...got.keys()].sort()).toEqual(tensors.map((t) => t.name).sort());
    for (const t of tensors) expect([...got.get(t.name)!.values]).toEqual([...F(t.name)]);
  });

  it('tp=2: each rank gets exactly its Megatron slice of the full tensors', async () => {
    for (const r of [0, 1]) {
      const got = await load(dir, { tpRank: r, tpSize: 2, layerStart: 0, layerEnd: 2 });
      const p = 'model.layers.1.';
      const q = got.get(p + 'self_attn.q_proj.weight')!;
      expect(q.shape).toEqual([8, H]);
      expect([...q.values]).toEqual(rowsOf(F(p + 'self_attn.q_proj.weight'), H, r * 8, r * 8 + 8));
      expect([...got.get(p + 'self_attn.k_proj.weight')!.values]).toEqual(rowsOf(F(p + 'self_attn.k_proj.weight'), H, r * D, r * D + D));
      expect([...got.get(p + 'self_attn.v_proj.bias')!.values]).toEqual(rowsOf(F(p + 'self_attn.v_proj.bias'), 1, r * D, r * D + D));
      expect([...got.get(p + 'self_attn.q_proj.bias')!.values]).toEqual(rowsOf(F(p + 'self_attn.q_proj.bias'), 1, r * 8, r * 8 + 8));
      const o = got.get(p + 'self_attn.o_proj.weight')!;
      expect(o.shape).toEqual([H, 8]);
      expect([...o.values]).toEqual(colsOf(F(p + 'self_attn.o_proj.weight'), H, 16, r * 8, r * 8 + 8));
      expect([...got.get(p + 'mlp.up_proj.weight')!.values]).toEqual(rowsOf(F(p + 'mlp.up_proj.weight'), H, r * 12, r * 12 + 12));
      expect([...got.get(p + 'mlp.down_proj.weight')!.values]).toEqual(colsOf(F(p + 'mlp.down_proj.weight'), H, I, r * 12, r * 12 + 12));
      expect([...got.get(p + 'input_layernorm.weight')!.values]).toEqual([...F(p + 'input_layernorm.weight')]);
      expect([...got.get('lm_head.weight')!.values]).toEqual(rowsOf(F('lm_head.weight'), H, r * 5, r * 5 + 5));
      expect([...got.get('model.embed_tokens.weight')!.values]).toEqual(rowsOf(F('model.embed_tokens.weight'), H, r * 5, r * 5 + 5));
    }
  });

  it('tp=4 with 2 KV heads replicates each KV head to the ranks whose q heads use it; vocab slots of ceil(V/tp)', () => {
    const c = loadModelConfig(dir);
    const layouts = [0, 1, 2, 3].map((r) => planShard(c, { tpRank: r, tpSize: 4, layerStart: 0, layerEnd: 2 }));
    expect(layouts.map((p) => p.shardConfig.nKvHeads)).toEqual([1, 1, 1, 1]);
    const k = (p: (typeof layouts)[0]) => p.tensors.find((t) => t.name === 'model.layers.0.self_attn.k_proj.weight')!.slice;
    expect(layouts.map(k)).toEqual([0, 0, 1, 1].map((h) => ({ kind: 'rows', start: h * D, end: h * D + D })));
    expect(layouts.map((p) => [p.shardConfig.vocabStart, p.shardConfig.vocabEnd])).toEqual([[0, 3], [3, 6], [6, 9], [9, 10]]);
    expect(() => planShard(c, { tpRank: 0, tpSize: 3, layerStart: 0, layerEnd: 2 })).toThrow(/tensor parallel 3: num_attention_heads 4 is not divisible by 3/);
    expect(() => planShard(c, { tpRank: 0, tpSize: 1, layerStart: 1, layerEnd: 3 })).toThrow(/layer range \[1, 3\)/);
  });

  it('pipeline stages: embedding only on the first, norm + head only on the last; tied head uses embed_tokens rows', async () => {
    const first = await load(dir, { tpRank: 0, tpSize: 1, layerStart: 0, layerEnd: 1 });
    expect([...first.keys()].filter((n) => !n.startsWith('model.layers.0.'))).toEqual(['model.embed_tokens.weight']);
    const tiedCfg = { ...TINY_CONFIG, tie_word_embeddings: true };
    const tiedDir = writeModel(tiedCfg, tensorsFor(tiedCfg));
    const plan = planShard(loadModelConfig(tiedDir), { tpRank: 1, tpSize: 2, layerStart: 1, layerEnd: 2 });
    expect(plan.shardConfig).toMatchObject({ hasEmbedding: false, hasHead: true, tiedEmbeddings: true, vocabStart: 5, vocabEnd: 10 });
    const last = await load(tiedDir, { tpRank: 1, tpSize: 2, layerStart: 1, layerEnd: 2 });
    expect([...last.keys()].filter((n) => !n.startsWith('model.layers.1.'))).toEqual(['model.embed_tokens.weight', 'model.norm.weight']);
    const emb = tensorsFor(tiedCfg)[0]!;
    expect([...last.get('model.embed_tokens.weight')!.values]).toEqual(rowsOf(new Float32Array(emb.data.slice().buffer), H, 5, 10));
  });

  it('mistral sliding window: every layer windowed, the whole context served', () => {
    const mdir = writeModel({ ...TINY_CONFIG, model_type: 'mistral', sliding_window: 32 }, []);
    expect(planShard(loadModelConfig(mdir), { tpRank: 0, tpSize: 1, layerStart: 0, layerEnd: 2 }).shardConfig)
      .toMatchObject({ maxPosition: 64, slidingWindow: 32, slidingLayers: [1, 1] });
  });
});
