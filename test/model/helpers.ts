// Builders for small HF folders and (possibly corrupt) safetensors files.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface RawTensor {
  name: string;
  dtype?: string;
  shape: number[];
  data: Uint8Array;
}

const made: string[] = [];

/** A fresh temporary folder, removed by removeTmpDirs (each test file calls it in afterAll). */
export function tmpDir(prefix = 'ns-model-'): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  made.push(d);
  return d;
}

export function removeTmpDirs(): void {
  for (const d of made.splice(0)) rmSync(d, { recursive: true, force: true });
}

/** A safetensors file; `edit` may rewrite the header object before it is serialized. */
export function buildSafetensors(tensors: RawTensor[], edit?: (h: Record<string, any>) => void): Buffer {
  const header: Record<string, any> = { __metadata__: { format: 'pt' } };
  let off = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype ?? 'F32', shape: t.shape, data_offsets: [off, off + t.data.byteLength] };
    off += t.data.byteLength;
  }
  edit?.(header);
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json, ...tensors.map((t) => Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength))]);
}

/** f32 values 0, 1, 2, ... offset by `base`, so every slice is recognisable. */
export function iota(n: number, base = 0): Uint8Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = base + i;
  return new Uint8Array(a.buffer);
}

export const TINY_CONFIG = {
  architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: 16, intermediate_size: 24,
  num_attention_heads: 4, num_key_value_heads: 2, head_dim: 4, vocab_size: 10, num_hidden_layers: 2,
  rms_norm_eps: 1e-5, max_position_embeddings: 64, tie_word_embeddings: false, dtype: 'float32',
  rope_theta: 10000,
};

/** Every tensor a config implies, in HF names, filled with iota so slices can be checked. */
export function tensorsFor(cfg: typeof TINY_CONFIG & { attention_bias?: boolean }): RawTensor[] {
  const H = cfg.hidden_size, D = cfg.head_dim, I = cfg.intermediate_size, V = cfg.vocab_size;
  const q = cfg.num_attention_heads * D, kv = cfg.num_key_value_heads * D;
  const out: RawTensor[] = [];
  let base = 0;
  const add = (name: string, shape: number[]) => {
    const n = shape.reduce((a, b) => a * b, 1);
    out.push({ name, shape, data: iota(n, base) });
    base += n;
  };
  add('model.embed_tokens.weight', [V, H]);
  for (let l = 0; l < cfg.num_hidden_layers; l++) {
    const p = `model.layers.${l}.`;
    add(p + 'input_layernorm.weight', [H]);
    add(p + 'self_attn.q_proj.weight', [q, H]);
    add(p + 'self_attn.k_proj.weight', [kv, H]);
    add(p + 'self_attn.v_proj.weight', [kv, H]);
    if (cfg.attention_bias) {
      add(p + 'self_attn.q_proj.bias', [q]);
      add(p + 'self_attn.k_proj.bias', [kv]);
      add(p + 'self_attn.v_proj.bias', [kv]);
    }
    add(p + 'self_attn.o_proj.weight', [H, q]);
    add(p + 'post_attention_layernorm.weight', [H]);
    add(p + 'mlp.gate_proj.weight', [I, H]);
    add(p + 'mlp.up_proj.weight', [I, H]);
    add(p + 'mlp.down_proj.weight', [H, I]);
  }
  add('model.norm.weight', [H]);
  if (!cfg.tie_word_embeddings) add('lm_head.weight', [V, H]);
  return out;
}

/** A model folder: config.json plus model.safetensors (or `files` shards with an index). */
export function writeModel(cfg: Record<string, unknown>, tensors: RawTensor[], shards = 1): string {
  const dir = tmpDir();
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg));
  if (shards === 1) {
    writeFileSync(join(dir, 'model.safetensors'), buildSafetensors(tensors));
    return dir;
  }
  const weightMap: Record<string, string> = {};
  const per = Math.ceil(tensors.length / shards);
  for (let s = 0; s < shards; s++) {
    const file = `model-${String(s + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`;
    const part = tensors.slice(s * per, (s + 1) * per);
    for (const t of part) weightMap[t.name] = file;
    writeFileSync(join(dir, file), buildSafetensors(part));
  }
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
  return dir;
}
