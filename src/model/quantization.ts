// The `quantization_config` of a Hugging Face config.json, normalized: which of nodespeed's weight
// formats the checkpoint's linear layers are stored in, and how their scales and activations work.
// Supported (docs/QUANTIZATION.md):
//   compressed-tensors  format float-quantized / naive-quantized: FP8 E4M3 weights, per-channel
//                       ([out, 1]) or per-tensor weight_scale, activations dynamic per token or with a
//                       static per-tensor input_scale (or none: weight-only)
//                       format pack-quantized / int-quantized / naive-quantized: int8 weights
//                       (symmetric, per channel or tensor), no activation quantization (W8A16)
//   fbgemm_fp8          FP8 E4M3 weights with per-channel weight_scale, dynamic per-token
//                       activations bounded by activation_scale_ub
// Anything else (gptq, awq, bitsandbytes, group-wise or asymmetric schemes, 4-bit, ...) is refused
// with the method named and the supported ones listed.
import { ConfigError } from './config-error.js';

export type WeightFormat = 'native' | 'int8' | 'fp8';
export type QuantizeChoice = 'none' | 'int8' | 'fp8';

export interface CheckpointQuant {
  method: 'compressed-tensors' | 'fbgemm_fp8';
  /** The storage of the quantized linear layers. */
  weights: 'int8' | 'fp8';
  /** compressed-tensors' format ('pack-quantized' stores int8 four to an int32 word, offset by 128); fbgemm: 'fbgemm'. */
  format: string;
  /** One weight_scale per output row ([out, 1]) or one per tensor ([1] or []). */
  strategy: 'channel' | 'tensor';
  /** fp8 activations: quantized per token at run time, with the checkpoint's per-tensor input_scale, or not at all (weight-only). */
  activations: 'dynamic' | 'static' | 'none';
  /** fbgemm_fp8: the per-token absolute maximum is capped at this (activation_scale_ub); 0: no cap. */
  activationScaleUb: number;
  /** Whether lm_head is quantized (not in the ignore list). */
  headQuantized: boolean;
  /** compressed-tensors kv_cache_scheme: per-layer k/v scales in k_proj/v_proj.output_scale. */
  kvCacheScales: boolean;
}

export const SUPPORTED_METHODS = 'compressed-tensors (FP8 W8A8 / FP8 weight-only / int8 weight-only) and fbgemm_fp8';

type Json = Record<string, unknown>;

function isObj(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Every linear module of a decoder layer (the ignore list may not name any of them). */
export const LAYER_LINEARS = ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.o_proj', 'mlp.gate_proj',
  'mlp.up_proj', 'mlp.down_proj'];

/** compressed-tensors' ignore/target matching: an exact module name, or "re:<regex>" matched from the start. */
function matches(pattern: string, module: string): boolean {
  if (pattern.startsWith('re:')) {
    try {
      return new RegExp(`^(?:${pattern.slice(3)})`).test(module);
    } catch {
      return false;
    }
  }
  return pattern === module || module.endsWith(`.${pattern}`);
}

function strings(v: unknown, where: string, file: string): string[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) throw new ConfigError(`${file}: field ${where} must be a list of strings`);
  return v as string[];
}

/** Refuses an ignore list that leaves some decoder layer's linear unquantized (one format for all layers). */
function checkIgnore(ignore: string[], numLayers: number, field: string, file: string): boolean {
  for (let l = 0; l < numLayers; l++) {
    for (const lin of LAYER_LINEARS) {
      const module = `model.layers.${l}.${lin}`;
      const hit = ignore.find((p) => matches(p, module));
      if (hit) throw new ConfigError(`${file}: field ${field} leaves ${module} unquantized (${JSON.stringify(hit)}); nodespeed needs one weight format for every decoder layer`);
    }
  }
  return !ignore.some((p) => matches(p, 'lm_head'));
}

/**
 * `raw` is config.json's quantization_config (null when absent → null). Errors name the file and
 * the field.
 */
export function parseQuantizationConfig(raw: unknown, file: string, numLayers: number): CheckpointQuant | null {
  if (raw === undefined || raw === null) return null;
  if (!isObj(raw)) throw new ConfigError(`${file}: field quantization_config must be an object`);
  const method = raw.quant_method;
  if (method === 'fbgemm_fp8') {
    const ub = raw.activation_scale_ub;
    if (ub !== undefined && ub !== null && (typeof ub !== 'number' || !(ub > 0)))
      throw new ConfigError(`${file}: field quantization_config.activation_scale_ub must be a positive number`);
    const ignore = strings(raw.modules_to_not_convert, 'quantization_config.modules_to_not_convert', file);
    return { method, weights: 'fp8', format: 'fbgemm', strategy: 'channel', activations: 'dynamic', activationScaleUb: typeof ub === 'number' ? ub : 0,
      headQuantized: checkIgnore(ignore, numLayers, 'quantization_config.modules_to_not_convert', file), kvCacheScales: false };
  }
  if (method !== 'compressed-tensors') {
    throw new ConfigError(`${file}: field quantization_config.quant_method is ${JSON.stringify(method)}, which nodespeed does not load; supported: ${SUPPORTED_METHODS}`);
  }
  const q = 'quantization_config';
  const status = raw.quantization_status;
  if (status !== undefined && status !== 'compressed')
    throw new ConfigError(`${file}: field ${q}.quantization_status is ${JSON.stringify(status)}; only "compressed" checkpoints (quantized weights on disk) load`);
  const sparsity = raw.sparsity_config;
  if (isObj(sparsity) && Object.keys(sparsity).length > 0 && sparsity.format !== 'dense')
    throw new ConfigError(`${file}: field ${q}.sparsity_config: sparse compressed-tensors checkpoints are not supported`);
  const groups = raw.config_groups;
  if (!isObj(groups) || Object.keys(groups).length === 0) throw new ConfigError(`${file}: field ${q}.config_groups must be a non-empty object`);
  let scheme: CheckpointQuant | null = null;
  for (const [name, g] of Object.entries(groups)) {
    const where = `${q}.config_groups.${name}`;
    if (!isObj(g)) throw new ConfigError(`${file}: field ${where} must be an object`);
    const targets = strings(g.targets, `${where}.targets`, file);
    if (!targets.includes('Linear'))
      throw new ConfigError(`${file}: field ${where}.targets is ${JSON.stringify(targets)}; supported: ["Linear"] (every linear layer in one scheme)`);
    const format = (typeof g.format === 'string' ? g.format : raw.format) as unknown;
    const w = g.weights;
    if (!isObj(w)) throw new ConfigError(`${file}: field ${where}.weights must be an object (weight-quantized checkpoints only)`);
    const bits = w.num_bits, type = w.type, strategy = w.strategy;
    if (bits !== 8 || (type !== 'int' && type !== 'float')) {
      throw new ConfigError(`${file}: field ${where}.weights is ${type}${bits} (num_bits ${JSON.stringify(bits)}, type ${JSON.stringify(type)}); supported: 8-bit int (W8A16) and 8-bit float (FP8)`);
    }
    if (w.symmetric === false) throw new ConfigError(`${file}: field ${where}.weights.symmetric is false; only symmetric weights are supported`);
    if (w.dynamic === true) throw new ConfigError(`${file}: field ${where}.weights.dynamic is true; weight scales must be stored`);
    if (strategy !== 'channel' && strategy !== 'tensor')
      throw new ConfigError(`${file}: field ${where}.weights.strategy is ${JSON.stringify(strategy)}; supported: "channel" and "tensor" (not group or block)`);
    const a = g.input_activations;
    let activations: CheckpointQuant['activations'] = 'none';
    if (isObj(a)) {
      if (type === 'int') {
        throw new ConfigError(`${file}: field ${where}.input_activations: int8 activation quantization (W8A8 int8) is not supported; supported: int8 weight-only (W8A16) and FP8 W8A8`);
      }
      if (a.num_bits !== 8 || a.type !== 'float')
        throw new ConfigError(`${file}: field ${where}.input_activations must be 8-bit float (got ${JSON.stringify(a.type)}${JSON.stringify(a.num_bits)})`);
      if (a.symmetric === false) throw new ConfigError(`${file}: field ${where}.input_activations.symmetric is false; only symmetric activations are supported`);
      if (a.dynamic === true || a.dynamic === 'local') activations = 'dynamic';
      else if (a.strategy === 'tensor') activations = 'static';
      else throw new ConfigError(`${file}: field ${where}.input_activations: static scales need strategy "tensor" (got ${JSON.stringify(a.strategy)})`);
    } else if (a !== undefined && a !== null) {
      throw new ConfigError(`${file}: field ${where}.input_activations must be an object or null`);
    }
    const formats = type === 'int' ? ['pack-quantized', 'int-quantized', 'naive-quantized'] : ['float-quantized', 'naive-quantized'];
    if (typeof format !== 'string' || !formats.includes(format))
      throw new ConfigError(`${file}: field ${q}.format is ${JSON.stringify(format)}; supported for ${type}8 weights: ${formats.join(', ')}`);
    const s: CheckpointQuant = { method: 'compressed-tensors', weights: type === 'int' ? 'int8' : 'fp8', format, strategy, activations,
      activationScaleUb: 0, headQuantized: false, kvCacheScales: false };
    if (scheme && JSON.stringify(scheme) !== JSON.stringify(s))
      throw new ConfigError(`${file}: field ${q}.config_groups holds different schemes; nodespeed needs one scheme for every linear layer`);
    scheme = s;
  }
  const ignore = strings(raw.ignore, `${q}.ignore`, file);
  scheme!.headQuantized = checkIgnore(ignore, numLayers, `${q}.ignore`, file);
  const kv = raw.kv_cache_scheme;
  if (isObj(kv)) {
    if (kv.num_bits !== 8 || kv.type !== 'float' || kv.strategy !== 'tensor')
      throw new ConfigError(`${file}: field ${q}.kv_cache_scheme must be 8-bit float per tensor (the fp8 KV cache's scales)`);
    scheme!.kvCacheScales = true;
  }
  return scheme;
}

/** One line for `model info`, the engine and the status: "compressed-tensors fp8 (W8A8, per-channel weights, dynamic per-token activations)". */
export function describeQuant(q: CheckpointQuant): string {
  const kind = q.weights === 'int8' ? 'W8A16' : q.activations === 'none' ? 'W8A16' : 'W8A8';
  const act = q.weights === 'int8' || q.activations === 'none' ? 'activations unquantized'
    : q.activations === 'dynamic' ? `dynamic per-token activations${q.activationScaleUb ? ` (amax capped at ${q.activationScaleUb})` : ''}`
      : 'static per-tensor activation scales';
  return `${q.method} ${q.weights} (${kind}, ${q.format}, per-${q.strategy} weight scales, ${act}, LM head ${q.headQuantized ? 'quantized' : 'unquantized'}` +
    `${q.kvCacheScales ? ', KV cache scales' : ''})`;
}
