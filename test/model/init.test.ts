import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command } from 'commander';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';

import { register } from '../../src/cli/model.js';
import { initModel, loadModelConfig, loadShard, loadTokenizer, openCheckpoint, planShard } from '../../src/model/index.js';
import { byteLevelBpe } from '../../src/model/init-tokenizer.js';
import { bf16Bits, f16Bits } from '../../src/model/random.js';
import { tmpDir, removeTmpDirs } from './helpers.js';

afterAll(removeTmpDirs);

const FIXTURES = join(import.meta.dirname, '..', 'fixtures', 'hf-reference');

/** Runs `nodespeed model ...` through the real command definitions, capturing stdout. */
async function cli(...args: string[]): Promise<string> {
  const program = new Command().exitOverride();
  register(program);
  let out = '';
  const spy = vi.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => { out += String(s); return true; });
  try {
    await program.parseAsync(['node', 'nodespeed', 'model', ...args]);
  } finally {
    spy.mockRestore();
  }
  return out;
}

function bf16ToF32(bits: number): number {
  return new Float32Array(new Uint32Array([bits << 16]).buffer)[0]!;
}

afterEach(() => vi.restoreAllMocks());

describe('model init', () => {
  it('--preset tiny writes a checkpoint that round-trips through openCheckpoint/planShard/loadShard at tp 1 and 2', async () => {
    const out = join(tmpDir(), 'tiny');
    const msg = await cli('init', '--arch', 'llama', '--preset', 'tiny', '--dtype', 'bf16', '--seed', '5', out);
    expect(msg).toMatch(/wrote .*tiny: tiny llama/);
    expect(readdirSync(out).sort()).toEqual(['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']);
    const cfg = loadModelConfig(out);
    expect(cfg).toMatchObject({ hiddenSize: 64, numHeads: 4, numKvHeads: 2, headDim: 16, numLayers: 4, vocabSize: 512, dtype: 'bf16', eosTokenIds: [1], bosTokenId: 0 });
    const ck = await openCheckpoint(out);
    try {
      const full = new Map<string, Uint16Array>();
      await loadShard(ck, planShard(cfg, { tpRank: 0, tpSize: 1, layerStart: 0, layerEnd: 4 }), async (name, dtype, shape, data) => {
        expect(dtype).toBe('bf16');
        full.set(name, new Uint16Array(data.slice().buffer));
      });
      // Matrices ~N(0, 0.02), norms ~1.
      const q = [...full.get('model.layers.2.self_attn.q_proj.weight')!].map(bf16ToF32);
      const mean = q.reduce((a, b) => a + b, 0) / q.length;
      const std = Math.sqrt(q.reduce((a, b) => a + (b - mean) ** 2, 0) / q.length);
      expect(Math.abs(mean)).toBeLessThan(0.002);
      expect(std).toBeGreaterThan(0.018);
      expect(std).toBeLessThan(0.022);
      // The residual outputs (o_proj, down_proj) use the scaled init: std 0.02 / sqrt(2 × 4 layers) = 0.00707.
      for (const name of ['model.layers.0.self_attn.o_proj.weight', 'model.layers.3.mlp.down_proj.weight']) {
        const w = [...full.get(name)!].map(bf16ToF32);
        const m = w.reduce((a, b) => a + b, 0) / w.length;
        const sd = Math.sqrt(w.reduce((a, b) => a + (b - m) ** 2, 0) / w.length);
        expect(Math.abs(m), name).toBeLessThan(0.001);
        expect(sd, name).toBeGreaterThan(0.0064);
        expect(sd, name).toBeLessThan(0.0078);
      }
      // …and the other matrices keep 0.02 (gate_proj here; q_proj above).
      const gate = [...full.get('model.layers.1.mlp.gate_proj.weight')!].map(bf16ToF32);
      const gateSd = Math.sqrt(gate.reduce((a, b) => a + b * b, 0) / gate.length);
      expect(gateSd).toBeGreaterThan(0.018);
      expect(gateSd).toBeLessThan(0.022);
      const norm = [...full.get('model.norm.weight')!].map(bf16ToF32);
      for (const v of norm) expect(Math.abs(v - 1)).toBeLessThan(0.15);
      // tp=2 rank 1's down_proj is the right half of the columns of the full one.
      let down: Uint16Array | undefined;
      await loadShard(ck, planShard(cfg, { tpRank: 1, tpSize: 2, layerStart: 0, layerEnd: 4 }), async (name, _d, shape, data) => {
        if (name === 'model.layers.3.mlp.down_proj.weight') { expect(shape).toEqual([64, 88]); down = new Uint16Array(data.slice().buffer); }
      });
      const f = full.get('model.layers.3.mlp.down_proj.weight')!;
      const expected: number[] = [];
      for (let r = 0; r < 64; r++) expected.push(...f.subarray(r * 176 + 88, r * 176 + 176));
      expect([...down!]).toEqual(expected);
    } finally {
      await ck.close();
    }
    // The copied tok512 tokenizer.
    const tok = await loadTokenizer(out);
    const enc: Record<string, number[]> = JSON.parse(readFileSync(join(FIXTURES, 'tok512_encodings.json'), 'utf8'));
    expect(tok.encode('import os')).toEqual(enc['import os']);
  });

  it('same seed, same bytes; another seed, other bytes; refuses a non-empty folder', async () => {
    const a = join(tmpDir(), 'a'), b = join(tmpDir(), 'b'), c = join(tmpDir(), 'c');
    await initModel({ arch: 'llama', preset: 'tiny', dtype: 'f16', seed: 11n, out: a });
    await initModel({ arch: 'llama', preset: 'tiny', dtype: 'f16', seed: 11n, out: b });
    await initModel({ arch: 'llama', preset: 'tiny', dtype: 'f16', seed: 12n, out: c });
    const bytes = (d: string) => readFileSync(join(d, 'model.safetensors'));
    expect(bytes(a).equals(bytes(b))).toBe(true);
    expect(bytes(a).equals(bytes(c))).toBe(false);
    await expect(initModel({ arch: 'llama', preset: 'tiny', dtype: 'f16', seed: 1n, out: a })).rejects.toThrow(/exists and is not empty/);
    await expect(initModel({ arch: 'gpt2', preset: 'tiny', dtype: 'f16', seed: 1n, out: tmpDir() })).rejects.toThrow(/--arch gpt2: expected llama, mixtral, qwen3_moe, qwen2_moe/);
    await expect(initModel({ arch: 'llama', preset: '3b', dtype: 'f16', seed: 1n, out: tmpDir() })).rejects.toThrow(/--preset 3b: expected one of tiny, 100m/);
  });

  it('shards into several files with an index when over the size limit', async () => {
    const out = join(tmpDir(), 'sharded');
    const r = await initModel({ arch: 'llama', preset: 'tiny', dtype: 'f32', seed: 3n, out, maxShardBytes: 200_000 });
    expect(r.files.length).toBeGreaterThan(3);
    const idx = JSON.parse(readFileSync(join(out, 'model.safetensors.index.json'), 'utf8'));
    expect(new Set(Object.values(idx.weight_map))).toEqual(new Set(r.files));
    for (const f of r.files) expect(readFileSync(join(out, f)).length).toBeLessThanOrEqual(200_000 + 4096);
    const cfg = loadModelConfig(out);
    const ck = await openCheckpoint(out);
    let n = 0;
    await loadShard(ck, planShard(cfg, { tpRank: 0, tpSize: 1, layerStart: 0, layerEnd: 4 }), async () => { n++; });
    await ck.close();
    expect(n).toBe(39);
  });
});

describe('synthetic byte-level BPE tokenizer', () => {
  it('has exactly vocab_size ids, every id decodes, and any text round-trips', async () => {
    const dir = tmpDir();
    const t = byteLevelBpe(1000, 128);
    writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(t.tokenizerJson));
    writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(t.tokenizerConfig));
    const tok = await loadTokenizer(dir);
    expect(tok.vocabSize).toBe(1000);
    for (let id = 0; id < 1000; id++) expect(tok.idToToken(id), `id ${id}`).toBeDefined();
    for (const text of ['Hello world', 'def f(x):\n\treturn x**2  # ok', 'héllo wörld ✓ 日本 🎉', '']) {
      const ids = tok.encode(text);
      expect(ids[0]).toBe(1); // <s>
      expect(Math.max(...ids)).toBeLessThan(1000);
      expect(tok.decode(ids, { skipSpecialTokens: true })).toBe(text);
    }
    expect(tok.encode('the').length).toBeLessThan(4); // merges apply
    expect(tok.eosTokenIds).toEqual([2]);
  });
});

describe('dtype encoders', () => {
  it('round to nearest even', () => {
    expect(bf16Bits(1)).toBe(0x3f80);
    expect(bf16Bits(-2)).toBe(0xc000);
    expect(bf16Bits(1 + 2 ** -8)).toBe(0x3f80); // tie → even
    expect(bf16Bits(1 + 3 * 2 ** -8)).toBe(0x3f82);
    expect(f16Bits(1)).toBe(0x3c00);
    expect(f16Bits(-0.5)).toBe(0xb800);
    expect(f16Bits(65504)).toBe(0x7bff);
    expect(f16Bits(1e6)).toBe(0x7c00);
    expect(f16Bits(2 ** -24)).toBe(0x0001); // smallest subnormal
    expect(f16Bits(0.02)).toBe(0x251f);
  });
});

describe('model info', () => {
  it('prints architecture, exact parameter count, dtypes, and memory/KV per TP degree', async () => {
    const out = join(tmpDir(), 'info');
    await initModel({ arch: 'llama', preset: 'tiny', dtype: 'bf16', seed: 1n, out });
    // tiny: embed + lm_head 2*512*64, per layer q 64*64, k/v 2*32*64, o 64*64, mlp 3*176*64, norms 2*64; final norm 64.
    const params = 2 * 512 * 64 + 4 * (64 * 64 + 2 * 32 * 64 + 64 * 64 + 3 * 176 * 64 + 2 * 64) + 64;
    const text = await cli('info', out);
    expect(text).toContain('architecture  LlamaForCausalLM (model_type llama)');
    expect(text).toContain('4 heads, 2 KV heads (GQA), head_dim 16');
    expect(text).toContain(`(${params})`);
    expect(text).toContain('tensors bf16');
    expect(text).toMatch(/\n {2}1 {3}489 KiB +512 B +1\.00 KiB/); // KV/token: 2 (K,V) x 4 layers x 2 heads x 16 x 2 bytes
    expect(text).toMatch(/\n {2}8 {3}n\/a: .*num_attention_heads 4 is not divisible by 8/);
    const json = JSON.parse(await cli('info', '--json', out));
    expect(json.parameters).toBe(params);
    expect(json.checkpoint.parameters).toBe(params);
    expect(json.memory.map((m: { tp: number; kvBytesPerToken16: number }) => [m.tp, m.kvBytesPerToken16])).toEqual([[1, 512], [2, 256], [4, 256], [8, 0]]);
    expect(json.memory[0].weightBytesPerRank).toBe(params * 2);
  });

  it('names the file on a broken checkpoint', async () => {
    const out = join(tmpDir(), 'broken');
    await initModel({ arch: 'llama', preset: 'tiny', dtype: 'bf16', seed: 1n, out });
    writeFileSync(join(out, 'model.safetensors'), Buffer.alloc(4));
    await expect(cli('info', out)).rejects.toThrow(/model\.safetensors: 4 bytes is too short/);
  });
});
