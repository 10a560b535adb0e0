import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import { loadModelConfig, loadShard, openCheckpoint, planShard } from '../../src/model/index.js';
import { buildSafetensors, iota, TINY_CONFIG, tensorsFor, tmpDir, writeModel, removeTmpDirs } from './helpers.js';

afterAll(removeTmpDirs);

function fileWith(buf: Buffer): string {
  const dir = tmpDir('ns-st-');
  writeFileSync(join(dir, 'model.safetensors'), buf);
  return dir;
}

const A = { name: 'a', shape: [2, 3], data: iota(6) };
const B = { name: 'b', shape: [4], data: iota(4, 100) };

describe('safetensors reader', () => {
  it('reads a valid file: header, dtypes, rows, columns', async () => {
    const ck = await openCheckpoint(fileWith(buildSafetensors([A, B])));
    try {
      const a = ck.get('a')!;
      expect(a).toMatchObject({ dtype: 'f32', shape: [2, 3], bytes: 24 });
      expect([...new Float32Array((await ck.readRows(a, 1, 2)).slice().buffer)]).toEqual([3, 4, 5]);
      expect([...new Float32Array((await ck.readColumns(a, 1, 3)).slice().buffer)]).toEqual([1, 2, 4, 5]);
      expect([...new Float32Array((await ck.readRows(ck.get('b')!, 0, 4)).slice().buffer)]).toEqual([100, 101, 102, 103]);
    } finally {
      await ck.close();
    }
  });

  it('header length past the end of the file', async () => {
    const buf = buildSafetensors([A]);
    buf.writeBigUInt64LE(BigInt(buf.length));
    await expect(openCheckpoint(fileWith(buf))).rejects.toThrow(/model\.safetensors: header length \d+ runs past the end of the file/);
    await expect(openCheckpoint(fileWith(Buffer.from([1, 2, 3])))).rejects.toThrow(/model\.safetensors: 3 bytes is too short/);
  });

  it('header that is not JSON', async () => {
    const buf = buildSafetensors([A]);
    buf[8] = 0x7a; // '{' → 'z'
    await expect(openCheckpoint(fileWith(buf))).rejects.toThrow(/model\.safetensors: header is not valid JSON/);
  });

  it('overlapping offsets name both tensors', async () => {
    const buf = buildSafetensors([A, { name: 'c', shape: [6], data: iota(6) }], (h) => { h.c.data_offsets = [8, 32]; });
    await expect(openCheckpoint(fileWith(buf))).rejects.toThrow(/model\.safetensors: tensor c: data_offsets \[8, 32\] overlap tensor a \[0, 24\]/);
  });

  it('out-of-range offsets', async () => {
    const buf = buildSafetensors([A, B], (h) => { h.b.data_offsets = [24, 48]; h.b.shape = [6]; });
    await expect(openCheckpoint(fileWith(buf))).rejects.toThrow(/model\.safetensors: tensor b: data_offsets \[24, 48\] run past the end of the file \(40 data bytes\)/);
  });

  it('offsets that do not match shape x dtype', async () => {
    const buf = buildSafetensors([A], (h) => { h.a.shape = [2, 2]; });
    await expect(openCheckpoint(fileWith(buf))).rejects.toThrow(/model\.safetensors: tensor a: data_offsets \[0, 24\] hold 24 bytes but shape \[2, 2\] F32 needs 16/);
  });

  it('unknown dtype', async () => {
    const buf = buildSafetensors([A], (h) => { h.a.dtype = 'Q4'; });
    await expect(openCheckpoint(fileWith(buf))).rejects.toThrow(/model\.safetensors: tensor a: unknown or unsupported dtype "Q4"/);
  });

  it('no weights at all', async () => {
    await expect(openCheckpoint(tmpDir())).rejects.toThrow(/no model\.safetensors or model\.safetensors\.index\.json/);
  });
});

describe('checkpoint vs config.json', () => {
  const cfg = TINY_CONFIG;

  it('a tensor whose shape does not match config.json', async () => {
    const ts = tensorsFor(cfg).map((t) => t.name === 'model.layers.1.mlp.up_proj.weight' ? { ...t, shape: [12, 32] } : t);
    const dir = writeModel(cfg, ts);
    const ck = await openCheckpoint(dir);
    await expect(loadShard(ck, planShard(loadModelConfig(dir), { tpRank: 0, tpSize: 1, layerStart: 0, layerEnd: 2 }), async () => {}))
      .rejects.toThrow(/model\.safetensors: tensor model\.layers\.1\.mlp\.up_proj\.weight: shape \[12, 32\] does not match config\.json, which implies \[24, 16\]/);
    await ck.close();
  });

  it('a dtype that does not match config.json', async () => {
    const dir = writeModel({ ...cfg, dtype: 'bfloat16' }, tensorsFor(cfg));
    const ck = await openCheckpoint(dir);
    await expect(loadShard(ck, planShard(loadModelConfig(dir), { tpRank: 0, tpSize: 1, layerStart: 0, layerEnd: 2 }), async () => {}))
      .rejects.toThrow(/model\.safetensors: tensor model\.embed_tokens\.weight: dtype f32 does not match config\.json's dtype bf16/);
    await ck.close();
  });

  it('a missing tensor, before any byte reaches the sink', async () => {
    const dir = writeModel(cfg, tensorsFor(cfg).filter((t) => t.name !== 'model.layers.1.self_attn.v_proj.weight'));
    const ck = await openCheckpoint(dir);
    const got: string[] = [];
    await expect(loadShard(ck, planShard(loadModelConfig(dir), { tpRank: 0, tpSize: 1, layerStart: 0, layerEnd: 2 }), async (n) => { got.push(n); }))
      .rejects.toThrow(/tensor model\.layers\.1\.self_attn\.v_proj\.weight is missing from the checkpoint/);
    expect(got).toEqual([]);
    await ck.close();
  });

  it('sharded index: loads across files; a missing shard file or misplaced tensor is named', async () => {
    const dir = writeModel(cfg, tensorsFor(cfg), 3);
    const ck = await openCheckpoint(dir);
    expect(ck.files).toHaveLength(3);
    let n = 0;
    await loadShard(ck, planShard(loadModelConfig(dir), { tpRank: 0, tpSize: 1, layerStart: 0, layerEnd: 2 }), async () => { n++; });
    expect(n).toBe(tensorsFor(cfg).length);
    await ck.close();

    const idx = join(dir, 'model.safetensors.index.json');
    writeFileSync(idx, JSON.stringify({ weight_map: { 'model.norm.weight': 'model-00009-of-00009.safetensors' } }));
    await expect(openCheckpoint(dir)).rejects.toThrow(/model\.safetensors\.index\.json: tensor model\.norm\.weight: file model-00009-of-00009\.safetensors does not exist/);
    writeFileSync(idx, JSON.stringify({ weight_map: { 'model.norm.weight': 'model-00001-of-00003.safetensors' } }));
    await expect(openCheckpoint(dir)).rejects.toThrow(/tensor model\.norm\.weight \(listed in model\.safetensors\.index\.json\) is not in the file/);
    writeFileSync(idx, '{"weight_map": 3}');
    await expect(openCheckpoint(dir)).rejects.toThrow(/index\.json: field weight_map is missing or not an object/);
  });
});

describe('config.json without a dtype', () => {
  it('takes the dtype from the first weights header and requires the rest to match', async () => {
    const { dtype: _d, ...noDtype } = TINY_CONFIG;
    const toBf16 = (t: ReturnType<typeof tensorsFor>[0]) => ({ ...t, dtype: 'BF16', data: t.data.subarray(0, t.data.byteLength / 2) });
    const ts = tensorsFor(TINY_CONFIG).map(toBf16);
    const dir = writeModel(noDtype, ts, 2);
    const cfg = loadModelConfig(dir);
    expect([cfg.dtype, cfg.dtypeSource]).toEqual(['bf16', 'weights']);
    const ck = await openCheckpoint(dir);
    let n = 0;
    await loadShard(ck, planShard(cfg, { tpRank: 0, tpSize: 1, layerStart: 0, layerEnd: 2 }), async (_n, dt) => { expect(dt).toBe('bf16'); n++; });
    await ck.close();
    expect(n).toBe(ts.length);

    const mixed = writeModel(noDtype, tensorsFor(TINY_CONFIG).map((t, i) => (i === 0 ? toBf16(t) : t)));
    const ck2 = await openCheckpoint(mixed);
    await expect(loadShard(ck2, planShard(loadModelConfig(mixed), { tpRank: 0, tpSize: 1, layerStart: 0, layerEnd: 2 }), async () => {}))
      .rejects.toThrow(/tensor model\.layers\.0\.input_layernorm\.weight: dtype f32 does not match bf16, the first tensor's dtype \(config\.json declares none\)/);
    await ck2.close();
    expect(loadModelConfig(writeModel(noDtype, [])).dtypeSource).toBe('default');
  });
});
