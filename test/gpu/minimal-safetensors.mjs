// Fallback loader for the GPU scripts when dist/model is not built: the same four functions as
// src/model (docs/ENGINE.md "Model loader") restricted to one shard holding everything (tp 1),
// single-file or index-sharded safetensors. Reads one tensor at a time with positional reads.
import { closeSync, existsSync, openSync, readFileSync, readSync } from 'node:fs';
import { join } from 'node:path';

const DTYPES = { F32: ['f32', 4], BF16: ['bf16', 2], F16: ['f16', 2] };

export function loadModelConfig(dir) {
  const c = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  const rp = c.rope_parameters ?? { rope_theta: c.rope_theta ?? 10000, ...(c.rope_scaling ?? {}) };
  const type = rp.rope_type ?? rp.type ?? 'default';
  return {
    hiddenSize: c.hidden_size, intermediateSize: c.intermediate_size, numHeads: c.num_attention_heads,
    numKvHeads: c.num_key_value_heads ?? c.num_attention_heads, headDim: c.head_dim ?? c.hidden_size / c.num_attention_heads,
    vocabSize: c.vocab_size, numLayers: c.num_hidden_layers, maxPosition: c.max_position_embeddings,
    rmsEps: c.rms_norm_eps ?? 1e-6, qkvBias: !!(c.attention_bias || c.model_type === 'qwen2'),
    tieWordEmbeddings: !!c.tie_word_embeddings,
    rope: { type, theta: rp.rope_theta ?? 10000, factor: rp.factor ?? 1, lowFreqFactor: rp.low_freq_factor ?? 1,
      highFreqFactor: rp.high_freq_factor ?? 4, originalMaxPos: rp.original_max_position_embeddings ?? 8192 },
  };
}

export async function openCheckpoint(dir) {
  const index = join(dir, 'model.safetensors.index.json');
  const files = existsSync(index)
    ? [...new Set(Object.values(JSON.parse(readFileSync(index, 'utf8')).weight_map))]
    : ['model.safetensors'];
  const tensors = new Map();
  const fds = [];
  for (const f of files) {
    const fd = openSync(join(dir, f), 'r');
    fds.push(fd);
    const len = Buffer.alloc(8);
    readSync(fd, len, 0, 8, 0);
    const n = Number(len.readBigUInt64LE());
    const hb = Buffer.alloc(n);
    readSync(fd, hb, 0, n, 8);
    for (const [name, t] of Object.entries(JSON.parse(hb.toString('utf8')))) {
      if (name === '__metadata__') continue;
      if (!DTYPES[t.dtype]) throw new Error(`${f}: tensor ${name} has unsupported dtype ${t.dtype}`);
      tensors.set(name, { fd, shape: t.shape, dtype: t.dtype, start: 8 + n + t.data_offsets[0], bytes: t.data_offsets[1] - t.data_offsets[0] });
    }
  }
  return { tensors, close: async () => fds.forEach((fd) => closeSync(fd)) };
}

export function planShard(cfg, { layerStart, layerEnd }) {
  const names = ['model.embed_tokens.weight', 'model.norm.weight'];
  if (!cfg.tieWordEmbeddings) names.push('lm_head.weight');
  for (let l = layerStart; l < layerEnd; l++) {
    for (const n of ['input_layernorm.weight', 'post_attention_layernorm.weight', 'self_attn.q_proj.weight', 'self_attn.k_proj.weight',
      'self_attn.v_proj.weight', 'self_attn.o_proj.weight', 'mlp.gate_proj.weight', 'mlp.up_proj.weight', 'mlp.down_proj.weight'])
      names.push(`model.layers.${l}.${n}`);
    if (cfg.qkvBias) for (const p of ['q', 'k', 'v']) names.push(`model.layers.${l}.self_attn.${p}_proj.bias`);
  }
  return {
    tensors: names,
    shardConfig: {
      hidden: cfg.hiddenSize, intermediate: cfg.intermediateSize, nHeads: cfg.numHeads, nKvHeads: cfg.numKvHeads, headDim: cfg.headDim,
      vocabSize: cfg.vocabSize, vocabStart: 0, vocabEnd: cfg.vocabSize, layerStart, layerEnd, maxPosition: cfg.maxPosition,
      rmsEps: cfg.rmsEps, qkvBias: cfg.qkvBias, tiedEmbeddings: cfg.tieWordEmbeddings, hasEmbedding: true, hasHead: true,
      tpRank: 0, tpSize: 1, rope: cfg.rope,
    },
  };
}

export async function loadShard(ckpt, plan, sink) {
  for (const name of plan.tensors) {
    const t = ckpt.tensors.get(name);
    if (!t) throw new Error(`checkpoint has no tensor ${name}`);
    const buf = Buffer.allocUnsafe(t.bytes);
    for (let off = 0; off < t.bytes;) off += readSync(t.fd, buf, off, Math.min(t.bytes - off, 1 << 30), t.start + off);
    await sink(name, DTYPES[t.dtype][0], t.shape, new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength));
  }
}
