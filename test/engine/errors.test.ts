// Bad input to the native engine is a rejected promise (or a thrown TypeError) that names the
// field or tensor; nothing crashes.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { BlockAllocator, Engine, KvCacheFullError, StopChecker, validateSampling } from '../../src/engine/index.js';
import { loadAddon } from '../../src/native/addon.js';
import type { ShardConfigJS } from '../../src/native/addon.js';
import { F32 } from './helpers.js';

const tiny: ShardConfigJS = {
  device: 'cpu', hidden: 8, intermediate: 16, nHeads: 2, nKvHeads: 1, headDim: 4, vocabSize: 10, vocabStart: 0, vocabEnd: 10,
  layerStart: 0, layerEnd: 1, maxPosition: 32, rmsEps: 1e-5, qkvBias: false, tiedEmbeddings: true, hasEmbedding: true,
  hasHead: true, tpRank: 0, tpSize: 1, rope: { type: 'default', theta: 10000 }, kvBlocks: 4,
};

describe('native engine input checks', () => {
  let engine: Engine;
  beforeAll(async () => {
    engine = await Engine.load(F32, { device: 'cpu', kvBlocks: 8 });
  });
  afterAll(() => engine?.dispose());

  it('rejects bad steps naming the sequence and field', async () => {
    const table = Int32Array.of(0, 1);
    await expect(engine.step({ seqs: [{ tokens: Int32Array.of(0, 999), pos: 0, blockTable: table }] })).rejects.toThrow(/seqs\[0\]: token id 999/);
    await expect(engine.step({ seqs: [{ tokens: Int32Array.of(1), pos: 40, blockTable: table }] })).rejects.toThrow(/blockTable has 2 blocks/);
    await expect(engine.step({ seqs: [{ tokens: Int32Array.of(1), pos: 0, blockTable: Int32Array.of(8) }] })).rejects.toThrow(/blockTable\[0\] = 8/);
    await expect(engine.step({ seqs: [{ tokens: Int32Array.of(1), pos: 300, blockTable: table }] })).rejects.toThrow(/maxPosition/);
    await expect(engine.step({ seqs: [{ tokens: [1] as unknown as Int32Array, pos: 0, blockTable: table }] })).rejects.toThrow(/seqs\[0\].tokens must be an Int32Array/);
    // Still works afterwards.
    const ok = await engine.step({ seqs: [{ tokens: Int32Array.of(0, 5), pos: 0, blockTable: table }] });
    expect(ok.sampled.length).toBe(1);
  });

  it('dispose frees the engine; later calls reject', async () => {
    const e = await Engine.load(F32, { device: 'cpu', kvBlocks: 8 });
    e.dispose();
    await expect(e.step({ seqs: [] })).rejects.toThrow(/disposed/);
  });
});

describe('native engine loading checks', () => {
  const addon = loadAddon();
  const f32 = (n: number) => new Uint8Array(new Float32Array(n).buffer);

  it('names a tensor with the wrong shape, an unexpected tensor, and the first missing one', async () => {
    const e = new addon.Engine(tiny);
    await expect(e.loadTensor('model.embed_tokens.weight', 'f32', [10, 9], f32(90))).rejects.toThrow(/model.embed_tokens.weight: shape \[10, 9\], expected \[10, 8\]/);
    await expect(e.loadTensor('model.layers.1.mlp.up_proj.weight', 'f32', [16, 8], f32(128))).rejects.toThrow(/model.layers.1.mlp.up_proj.weight: not part of this shard/);
    await expect(e.loadTensor('model.norm.weight', 'f32', [8], f32(7))).rejects.toThrow(/model.norm.weight: 28 bytes/);
    await e.loadTensor('model.embed_tokens.weight', 'f32', [10, 8], f32(80));
    await expect(e.finalize()).rejects.toThrow(/tensor model.layers.0.input_layernorm.weight: missing/);
    e.dispose();
  });

  it('rejects a bad config naming the field', () => {
    expect(() => new addon.Engine({ ...tiny, nKvHeads: 3 })).toThrow(/nHeads must be a multiple of nKvHeads/);
    expect(() => new addon.Engine({ ...tiny, rope: { type: 'ntk' as 'default', theta: 1 } })).toThrow(/rope.type/);
    expect(() => new addon.Engine({ ...tiny, rope: { type: 'longrope', theta: 1, shortFactor: [1], longFactor: [1] } })).toThrow(/rotaryDim \/ 2 = /);
    expect(() => new addon.Engine({ ...tiny, slidingLayers: [1, 1, 1] })).toThrow(/slidingLayers must have one entry per layer/);
    expect(() => new addon.Engine({ ...tiny, hidden: 1.5 })).toThrow(/hidden must be an integer/);
    expect(() => new addon.Engine({ ...tiny, tpSize: 2, vocabEnd: 10 })).toThrow(/vocab shard/);
    expect(() => new addon.Engine({ ...tiny, maxStepTokens: -1 })).toThrow(/maxStepTokens must be >= 0/);
    expect(() => new addon.Engine({ ...tiny, maxStepTokens: 8192 })).not.toThrow();
  });

  it('a TP shard refuses to step without a communicator', async () => {
    const cfg = { ...tiny, tpSize: 2, tpRank: 1, vocabStart: 5, vocabEnd: 10, nHeads: 1, intermediate: 8 };
    const e = new addon.Engine(cfg);
    const H = cfg.hidden, D = cfg.headDim, I = cfg.intermediate;
    const p = 'model.layers.0.';
    const tensors: [string, number[]][] = [['model.embed_tokens.weight', [5, H]], ['model.norm.weight', [H]],
      [p + 'input_layernorm.weight', [H]], [p + 'post_attention_layernorm.weight', [H]],
      [p + 'self_attn.q_proj.weight', [D, H]], [p + 'self_attn.k_proj.weight', [D, H]], [p + 'self_attn.v_proj.weight', [D, H]],
      [p + 'self_attn.o_proj.weight', [H, D]], [p + 'mlp.gate_proj.weight', [I, H]], [p + 'mlp.up_proj.weight', [I, H]],
      [p + 'mlp.down_proj.weight', [H, I]]];
    for (const [name, shape] of tensors) await e.loadTensor(name, 'f32', shape, f32(shape.reduce((a, b) => a * b)));
    expect(await e.finalize()).toEqual({ kvBlocks: 4, kvWindowBlocks: 0, kvBlockSize: 16 });
    await expect(e.step({ seqs: [{ tokens: Int32Array.of(1), pos: 0, blockTable: Int32Array.of(0) }] }))
      .rejects.toThrow(/tpSize is 2 but no TP communicator was set/);
    e.dispose();
  });
});

describe('engine bookkeeping', () => {
  it('BlockAllocator hands out, grows and frees tables', () => {
    const a = new BlockAllocator(4, 16);
    expect(Array.from(a.allocate('a', 17))).toEqual([0, 1]);
    expect(Array.from(a.allocate('b', 16))).toEqual([2]);
    expect(Array.from(a.allocate('a', 33))).toEqual([0, 1, 3]);
    expect(a.canAllocate('c', 1)).toBe(false);
    expect(() => a.allocate('c', 1)).toThrow(KvCacheFullError);
    a.free('a');
    expect(a.freeBlocks).toBe(3);
    expect(Array.from(a.allocate('c', 40)).sort()).toEqual([0, 1, 3]);
  });

  it('StopChecker holds back a possible stop-string prefix and cuts at the stop string', () => {
    const pieces = ['Hel', 'lo wo', 'rld', '!'];
    const s = new StopChecker({ eosTokenIds: [99], stop: ['world'], maxTokens: 10, decode: (ids) => ids.map((i) => pieces[i]).join('') });
    expect(s.push(0).delta).toBe('Hel');
    expect(s.push(1).delta).toBe('lo ');  // 'wo' may start 'world'
    const end = s.push(2);
    expect(end).toEqual({ delta: '', done: true, finishReason: 'FINISH_REASON_STOP' });
    expect(s.text).toBe('Hello ');
    const m = new StopChecker({ eosTokenIds: [99], stop: [], maxTokens: 2, decode: (ids) => ids.map((i) => pieces[i]).join('') });
    m.push(0);
    expect(m.push(1)).toEqual({ delta: 'lo wo', done: true, finishReason: 'FINISH_REASON_LENGTH' });
  });

  it('validateSampling fills defaults', () => {
    const p = validateSampling({ seed: 5 });
    // No max_tokens: as many as the context leaves (withinContext() makes that a number).
    expect(p).toMatchObject({ temperature: 0, topK: 0, topP: 1, seed: 5n, maxTokens: Number.MAX_SAFE_INTEGER, stop: [] });
  });
});
