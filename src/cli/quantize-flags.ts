// --quantize and --kv-cache-dtype, shared by launch, demo and generate (docs/QUANTIZATION.md).
import { Option } from 'commander';
import type { Command } from 'commander';

export function addQuantizeOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option('--quantize <format>', 'quantize a float checkpoint\'s linear layers as they load: int8 (weights only, W8A16; ' +
      'cpu and cuda) or fp8 (E4M3 weights and activations, W8A8; cuda, compute capability 8.9+). Pre-quantized checkpoints ' +
      '(compressed-tensors, fbgemm_fp8) load as they are').choices(['none', 'int8', 'fp8']).default('none'))
    .addOption(new Option('--kv-cache-dtype <dtype>', 'cuda: keep the paged KV cache in fp8 (E4M3, twice the blocks of bf16); auto: the compute dtype')
      .choices(['auto', 'fp8']).default('auto'));
}
