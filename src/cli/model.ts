// `nodespeed model info DIR`, `nodespeed model init ... OUT` and `nodespeed model quantize --to int8|fp8 IN OUT`
// (src/model/info.ts, init.ts, quantize.ts).
import { Command, InvalidArgumentError, Option } from 'commander';

import type { DType } from '../model/index.js';
import { formatBytes, formatInfo, initModel, modelInfo, MOE_PRESETS, PRESETS, quantizeModel } from '../model/index.js';
import { loadAddon } from '../native/addon.js';
import { seedArg } from './args.js';
import { checkCheckpoint } from './checkpoint.js';

const DTYPE_FLAG: Record<string, DType> = { bf16: 'bf16', fp16: 'f16', f16: 'f16', f32: 'f32', fp32: 'f32' };

function shardArg(v: string): number {
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || n < 1 || n > 1e6) throw new InvalidArgumentError(`--max-shard-gb must be a number from 1 to 1000000 (got '${v}')`);
  return n * 1e9;
}

/** `writing X / Y` on stderr, at most 4 times a second, when it is a terminal; end() finishes the line. */
function writingProgress() {
  const tty = process.stderr.isTTY;
  let lastReport = 0;
  return {
    report: (done: number, total: number) => {
      const now = performance.now();
      if (!tty || (now - lastReport < 250 && done < total)) return;
      lastReport = now;
      process.stderr.write(`\rwriting ${formatBytes(done)} / ${formatBytes(total)}`);
    },
    end: () => { if (tty) process.stderr.write('\n'); },
  };
}

export function register(program: Command): void {
  const model = program.command('model').description('Inspect or create Hugging Face Llama-family checkpoints');

  model
    .command('info')
    .description('Architecture, parameter count, dtypes and memory needed per tensor-parallel degree')
    .argument('<dir>', 'Hugging Face model folder')
    .option('--json', 'print one JSON object instead of the table', false)
    .action(async (dir: string, o: { json: boolean }) => {
      const info = await modelInfo(dir);
      process.stdout.write((o.json ? JSON.stringify(info) : formatInfo(info)) + '\n');
      // The description above comes from the headers; whether the checkpoint loads is a separate answer.
      try {
        await checkCheckpoint(dir);
      } catch (err) {
        process.stderr.write(`${dir} cannot be loaded: ${(err as Error).message}\n`);
        process.exitCode = 1;
      }
    });

  model
    .command('init')
    .description('Write a random-weight Hugging Face checkpoint (config, sharded safetensors, tokenizer) for tests and benchmarks. ' +
      'Matrices N(0, 0.02), norms N(1, 0.02); o_proj and down_proj N(0, 0.02 / sqrt(2 x layers)), the scaled residual init of ' +
      'GPT-2 / Megatron-LM, so a deep random model stays well-conditioned (see src/model/README.md)')
    .argument('<out>', 'output folder (created; must be empty if it exists)')
    .addOption(new Option('--arch <arch>', 'architecture').choices(['llama', ...Object.keys(MOE_PRESETS)]).default('llama'))
    .addOption(new Option('--preset <preset>', `model size: llama ${Object.keys(PRESETS).join('|')}; ` +
      Object.entries(MOE_PRESETS).map(([a, p]) => `${a} ${Object.keys(p).join('|')}`).join('; ')).makeOptionMandatory())
    .addOption(new Option('--dtype <dtype>', 'storage dtype').choices(['bf16', 'fp16', 'f16', 'f32', 'fp32']).default('bf16'))
    // Defaults with their help text: commander prints a default with JSON.stringify, which throws on a BigInt.
    .addOption(new Option('--seed <s>', 'weights seed (same seed, same bytes)').argParser(seedArg).default(0n, '0'))
    .addOption(new Option('--max-shard-gb <gb>', 'largest safetensors file, in GB').argParser(shardArg).default(2e9, '2'))
    .action(async (out: string, o: { arch: string; preset: string; dtype: string; seed: bigint; maxShardGb: number }) => {
      const started = performance.now();
      const progress = writingProgress();
      const r = await initModel({
        arch: o.arch, preset: o.preset, dtype: DTYPE_FLAG[o.dtype]!, seed: o.seed, out, maxShardBytes: o.maxShardGb,
        onProgress: progress.report,
      });
      progress.end();
      const secs = (performance.now() - started) / 1000;
      process.stdout.write(`wrote ${out}: ${o.preset} ${o.arch}, ${formatBytes(r.bytes)} in ${r.files.length} safetensors file(s), ` +
        `tokenizer ${r.tokenizer}, ${secs.toFixed(1)} s\n`);
    });

  model
    .command('quantize')
    .description('Write a float checkpoint as a compressed-tensors folder: int8 (pack-quantized, per-channel weight-only: W8A16) or ' +
      'fp8 (float-quantized E4M3 per-channel weights, dynamic per-token activations: W8A8). The weights are the bytes ' +
      '`--quantize` makes at load; see docs/QUANTIZATION.md')
    .addOption(new Option('--to <format>', 'int8 or fp8').choices(['int8', 'fp8']).makeOptionMandatory())
    .argument('<in>', 'Hugging Face model folder with float (f32 / bf16 / f16) weights')
    .argument('<out>', 'output folder (created; must be empty if it exists)')
    .option('--max-shard-gb <gb>', 'largest safetensors file, in GB', shardArg, 5e9)
    .action(async (input: string, out: string, o: { to: 'int8' | 'fp8'; maxShardGb: number }) => {
      const started = performance.now();
      const progress = writingProgress();
      const addon = loadAddon();
      const r = await quantizeModel({
        input, out, to: o.to, maxShardBytes: o.maxShardGb,
        quantize: (data, dt, rows, cols, format, c0, c1, what) => addon.quantize(data, dt, rows, cols, format, c0, c1, what),
        onProgress: progress.report,
      });
      progress.end();
      process.stdout.write(`wrote ${out}: compressed-tensors ${o.to} (${r.format}), ${formatBytes(r.bytes)} in ${r.files.length} safetensors file(s), ` +
        `${((performance.now() - started) / 1000).toFixed(1)} s\n`);
    });
}
