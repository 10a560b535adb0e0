// `nodespeed model quantize --to int8|fp8 IN OUT`: a float checkpoint written out as a
// compressed-tensors folder that nodespeed (and vLLM, transformers) load as it is.
//
// The weights come out of the loader itself (planShard with `quantize`, loadShard with the native
// quantizer, tp 1 over all layers), so a folder written here loads to the very bytes that
// `--quantize` makes at load, under any TP layout (weights.ts: scales come from whole rows).
//   int8: format "pack-quantized" (the compressed-tensors layout of int8 weight-only checkpoints,
//         which vLLM serves as W8A16): X.weight_packed int32 [out, in / 4] (four int8 values + 128
//         a word, the first in the lowest byte), X.weight_scale f32 [out, 1], X.weight_shape int64
//         [2]; per-channel symmetric weights, no activation quantization; the LM head too
//         (a tied head is written untied: embed_tokens as stored, lm_head quantized).
//   fp8:  format "float-quantized": X.weight F8_E4M3 [out, in], X.weight_scale f32 [out, 1];
//         per-channel weights, dynamic per-token activations; lm_head left as stored (ignore).
// Scales are f32, so nothing is rounded a second time. Tensors stream one at a time: memory stays
// at about one tensor whatever the model size.
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { loadModelConfig } from './config.js';
import { groupShards } from './init.js';
import { openCheckpoint } from './safetensors.js';
import { SafetensorsStream, tensorBytes } from './safetensors-writer.js';
import type { TensorSpec } from './safetensors-writer.js';
import { loadShard, planShard } from './weights.js';
import type { Quantizer } from './weights.js';

export interface QuantizeModelOptions {
  input: string;
  out: string;
  to: 'int8' | 'fp8';
  quantize: Quantizer;
  /** Largest output file (bytes); default 5 GB. */
  maxShardBytes?: number;
  onProgress?: (done: number, total: number) => void;
}

export interface QuantizeModelResult {
  files: string[];
  bytes: number;
  /** The compressed-tensors format written. */
  format: string;
}

/**
 * config.json's quantization_config for what quantizeModel writes. The linears left as stored are
 * listed in `ignore`: an fp8 head, and an MoE's routers and shared-expert gates (as vLLM's FP8 MoE
 * checkpoints list them).
 */
export function compressedTensorsConfig(to: 'int8' | 'fp8', headQuantized: boolean, moe = false): Record<string, unknown> {
  const format = to === 'int8' ? 'pack-quantized' : 'float-quantized';
  return {
    quant_method: 'compressed-tensors',
    format,
    quantization_status: 'compressed',
    config_groups: {
      group_0: {
        targets: ['Linear'],
        weights: { num_bits: 8, type: to === 'int8' ? 'int' : 'float', symmetric: true, strategy: 'channel', dynamic: false,
          group_size: null, block_structure: null, actorder: null, observer: 'minmax' },
        input_activations: to === 'int8' ? null
          : { num_bits: 8, type: 'float', symmetric: true, strategy: 'token', dynamic: true, group_size: null, observer: null },
        output_activations: null,
        format,
      },
    },
    ignore: [...(headQuantized ? [] : ['lm_head']), ...(moe ? ['re:.*\\.gate$', 're:.*shared_expert_gate$'] : [])],
    kv_cache_scheme: null,
    sparsity_config: {},
  };
}

export async function quantizeModel(o: QuantizeModelOptions): Promise<QuantizeModelResult> {
  const cfg = loadModelConfig(o.input);
  if (cfg.quantization) throw new Error(`${o.input}: already quantized (${cfg.quantization.method} ${cfg.quantization.weights}); model quantize needs float weights`);
  if (existsSync(o.out) && readdirSync(o.out).length > 0) throw new Error(`${o.out}: exists and is not empty (refusing to overwrite)`);
  const plan = planShard(cfg, { tpRank: 0, tpSize: 1, layerStart: 0, layerEnd: cfg.numLayers }, { quantize: o.to });
  const headQuantized = plan.shardConfig.headWeights !== 'native';

  // Tensors keep the checkpoint's names (mixtral's block_sparse_moe.*), except a tied head, which
  // is written as its own lm_head. A fused checkpoint tensor (phi3's qkv_proj) feeds several of the
  // loader's tensors: not written (yet); quantizing such a model at load works.
  const fileName = new Map(plan.tensors.map((t) => [t.name, t.name === 'lm_head.weight' ? t.name : t.source ?? t.name]));
  const feeds = new Map<string, number>();
  for (const f of fileName.values()) feeds.set(f, (feeds.get(f) ?? 0) + 1);
  const fused = [...feeds].find(([, n]) => n > 1);
  if (fused) {
    throw new Error(`${o.input}: tensor ${fused[0]} is fused (it holds ${fused[1]} of the model's matrices), which model quantize does not ` +
      `write; serve the float checkpoint with --quantize ${o.to} instead (the same numbers, quantized at load)`);
  }
  const fileOf = (name: string) => (name.endsWith('_scale') ? `${fileName.get(name.slice(0, -'_scale'.length)) ?? name.slice(0, -'_scale'.length)}_scale`
    : fileName.get(name) ?? name);

  // What the files hold, in the order the loader hands tensors over.
  const specs: TensorSpec[] = [];
  for (const t of plan.tensors) {
    if (t.convert?.kind !== 'quantize') {
      specs.push({ name: fileOf(t.name), dtype: plan.dtype, shape: t.fullShape });
      continue;
    }
    const base = fileOf(t.name).slice(0, -'.weight'.length);
    const [rows, cols] = t.shape as [number, number];
    if (o.to === 'int8') {
      if (cols % 4 !== 0) throw new Error(`${o.input}: tensor ${t.source ?? t.name} has ${cols} columns; pack-quantized int8 needs a multiple of 4`);
      specs.push({ name: `${base}.weight_packed`, dtype: 'i32', shape: [rows, cols / 4] }, { name: `${base}.weight_scale`, dtype: 'f32', shape: [rows, 1] },
        { name: `${base}.weight_shape`, dtype: 'i64', shape: [2] });
    } else {
      specs.push({ name: `${base}.weight`, dtype: 'f8e4m3', shape: [rows, cols] }, { name: `${base}.weight_scale`, dtype: 'f32', shape: [rows, 1] });
    }
  }
  const groups = groupShards(specs, o.maxShardBytes ?? 5e9);
  const names = groups.length === 1 ? ['model.safetensors']
    : groups.map((_, i) => `model-${String(i + 1).padStart(5, '0')}-of-${String(groups.length).padStart(5, '0')}.safetensors`);
  const total = specs.reduce((s, t) => s + tensorBytes(t), 0);

  mkdirSync(o.out, { recursive: true });
  const streams = groups.map((g, i) => new SafetensorsStream(join(o.out, names[i]!), g));
  let file = 0, done = 0;
  const write = async (name: string, data: Uint8Array) => {
    while (streams[file]!.done) {
      await streams[file]!.close();
      file++;
    }
    await streams[file]!.write(name, data);
    done += data.byteLength;
    o.onProgress?.(done, total);
  };
  const shapes = new Map<string, [number, number]>();
  const ckpt = await openCheckpoint(o.input);
  try {
    for (const s of streams) await s.open();
    await loadShard(ckpt, plan, async (loaded, dtype, shape, data) => {
      const name = fileOf(loaded);
      if (dtype === 'i8') {  // int8 rows -> pack-quantized words: each byte + 128 (the sign bit flipped)
        const packed = new Uint8Array(data.byteLength);
        for (let i = 0; i < data.byteLength; i++) packed[i] = data[i]! ^ 0x80;
        shapes.set(name, shape as [number, number]);
        await write(`${name}_packed`, packed);
      } else if (name.endsWith('.weight_scale')) {
        await write(name, data);  // f32 [rows] is f32 [rows, 1]
        const weight = name.slice(0, -'_scale'.length);
        const shape2 = shapes.get(weight);
        if (shape2) await write(`${weight}_shape`, new Uint8Array(BigInt64Array.from(shape2.map(BigInt)).buffer));
      } else {
        await write(name, data);
      }
    }, undefined, o.quantize);
    for (; file < streams.length; file++) await streams[file]!.close();
  } finally {
    await ckpt.close();
  }

  const raw = JSON.parse(readFileSync(join(o.input, 'config.json'), 'utf8')) as Record<string, unknown>;
  raw.quantization_config = compressedTensorsConfig(o.to, headQuantized, cfg.moe !== null);
  if (cfg.tieWordEmbeddings && headQuantized) raw.tie_word_embeddings = false;  // lm_head is its own (quantized) tensor now
  writeFileSync(join(o.out, 'config.json'), JSON.stringify(raw, null, 2) + '\n');
  if (groups.length > 1) {
    const weightMap: Record<string, string> = {};
    groups.forEach((g, i) => g.forEach((t) => { weightMap[t.name] = names[i]!; }));
    writeFileSync(join(o.out, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2) + '\n');
  }
  // Tokenizer, generation config, chat template, README: every other file of the folder, as it is.
  for (const f of readdirSync(o.input)) {
    if (f === 'config.json' || f.endsWith('.safetensors') || f === 'model.safetensors.index.json') continue;
    const src = join(o.input, f);
    if (statSync(src).isFile()) copyFileSync(src, join(o.out, f));
  }
  loadModelConfig(o.out);  // what we wrote must read back
  return { files: names, bytes: total, format: o.to === 'int8' ? 'pack-quantized' : 'float-quantized' };
}
