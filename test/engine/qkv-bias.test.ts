// q/k/v biases (qwen2) have no Hugging Face fixture: the f32 fixture's weights plus random biases,
// saved as a qwen2 checkpoint, against bench/cpu/torch_llama.py's plain fp32 PyTorch forward.
// Needs Debian's python3-torch at /usr/bin/python3 (skipped, with a notice, where it is absent).
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';

import { BlockAllocator, Engine } from '../../src/engine/index.js';
import { F32, maxAbsDiff, reference, root } from './helpers.js';
import type { FixtureCase } from './helpers.js';

const hasTorch = spawnSync('/usr/bin/python3', ['-c', 'import torch'], { stdio: 'ignore' }).status === 0;
if (!hasTorch) console.warn('test/engine/qkv-bias: /usr/bin/python3 has no torch; qwen2 bias test skipped');

const dir = mkdtempSync(join(tmpdir(), 'nodespeed-qwen2-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

// Copies the fixture's tensors and adds q/k/v biases drawn from a fixed LCG.
function writeQwen2(): void {
  const src = readFileSync(join(F32, 'model.safetensors'));
  const hlen = Number(src.readBigUInt64LE(0));
  const header = JSON.parse(src.subarray(8, 8 + hlen).toString()) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const cfg = JSON.parse(readFileSync(join(F32, 'config.json'), 'utf8'));
  const tensors: [string, number[], Uint8Array][] = [];
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    tensors.push([name, t.shape, src.subarray(8 + hlen + t.data_offsets[0], 8 + hlen + t.data_offsets[1])]);
  }
  let seed = 12345;
  const rand = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648 - 0.5) * 0.5;
  for (let l = 0; l < cfg.num_hidden_layers; l++)
    for (const [p, n] of [['q', cfg.num_attention_heads], ['k', cfg.num_key_value_heads], ['v', cfg.num_key_value_heads]] as const) {
      const b = Float32Array.from({ length: n * cfg.head_dim }, rand);
      tensors.push([`model.layers.${l}.self_attn.${p}_proj.bias`, [b.length], new Uint8Array(b.buffer)]);
    }
  const meta: Record<string, unknown> = {};
  let off = 0;
  for (const [name, shape, data] of tensors) {
    meta[name] = { dtype: 'F32', shape, data_offsets: [off, off + data.byteLength] };
    off += data.byteLength;
  }
  const json = Buffer.from(JSON.stringify(meta));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(join(dir, 'model.safetensors'), Buffer.concat([len, json, ...tensors.map(([, , d]) => d)]));
  writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...cfg, model_type: 'qwen2', architectures: ['Qwen2ForCausalLM'] }));
  for (const f of ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json']) symlinkSync(join(F32, f), join(dir, f));
}

it.skipIf(!hasTorch)('qwen2 q/k/v biases: logits within 1e-4 of PyTorch', async () => {
  writeQwen2();
  const e = await Engine.load(dir, { device: 'cpu', kvBlocks: 8 });
  try {
    expect(e.shard.qkvBias).toBe(true);
    for (const c of reference<FixtureCase>(F32).cases.slice(0, 2)) {
      const alloc = new BlockAllocator(e.kvBlocks, e.kvBlockSize);
      const r = await e.step({ seqs: [{ tokens: Int32Array.from(c.ids), pos: 0, blockTable: alloc.allocate(0, c.ids.length) }], wantLogits: true });
      const torch = JSON.parse(execFileSync('/usr/bin/python3', [join(root, 'bench', 'cpu', 'torch_llama.py'), '--model', dir, '--logits', c.ids.join(',')],
        { encoding: 'utf8' })) as number[];
      expect(maxAbsDiff(r.logits!, torch)).toBeLessThan(1e-4);
      expect(maxAbsDiff(r.logits!, c.last_logits)).toBeGreaterThan(1e-2); // the biases matter
    }
  } finally {
    e.dispose();
  }
});
