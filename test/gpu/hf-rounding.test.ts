// `--hf-rounding` (NODESPEED_CUDA_ROUND=31: round where HF's bf16 forward rounds) on the CUDA engine,
// as a user runs it: `nodespeed generate --hf-rounding` in one process gives the tokens of the same
// run with NODESPEED_CUDA_ROUND=31, whose logits differ from the default f32-intermediate numerics,
// and `nodespeed launch --hf-rounding` hands the setting to its workers (their engines say so when
// ready, and the served tokens equal the local --hf-rounding run's). That the flag reaches the addon
// in `generate` is checked on the CPU too (test/settings/registry.test.ts). Every run has cuBLASLt off: its algorithms are
// picked by timing at load, so two processes could round a prefill GEMM differently.
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

import { gpuStatus, root, titled } from './lib.mjs';
import { BIN, F32, launch, reference } from '../serving/helpers.js';
import type { FixtureCase } from '../serving/helpers.js';

const run = promisify(execFile);
const gpu = gpuStatus({ cuda: true });
const cases = reference<FixtureCase>(F32).cases;
const prompts = cases.map((c) => c.text);
const NO_LT = { NODESPEED_CUDA_LT: '0' };

/** The prompt's last-position logits through one CUDA engine in a fresh process (the mask is read once per process). */
async function lastLogits(prompt: number[], env: NodeJS.ProcessEnv): Promise<string> {
  const script = `import { blockTables, openCudaEngine } from ${JSON.stringify(join(root, 'test', 'gpu', 'lib.mjs'))};
    const { engine, blockSize, kvBlocks } = await openCudaEngine(${JSON.stringify(F32)}, { dtype: 'bf16', kvBlocks: 8 });
    const [bt] = blockTables(1, 64, blockSize, kvBlocks);
    const r = await engine.step({ seqs: [{ tokens: Int32Array.from(${JSON.stringify(prompt)}), pos: 0, blockTable: bt }], wantLogits: true });
    process.stdout.write(Buffer.from(r.logits.buffer, r.logits.byteOffset, r.logits.byteLength).toString('base64'));
    engine.dispose();`;
  const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script], { cwd: root, env: { ...process.env, ...NO_LT, ...env } });
  return stdout;
}

async function generate(prompt: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<number[]> {
  const { stdout } = await run(process.execPath, [BIN, 'generate', ...args, '--max-tokens', '24', '--json', prompt],
    { cwd: root, env: { ...process.env, ...NO_LT, ...env } });
  return (JSON.parse(stdout) as { token_ids: number[] }).token_ids;
}

describe.skipIf(!gpu.ok)(titled('--hf-rounding', gpu), { timeout: 600_000 }, () => {
  it('generate --hf-rounding is NODESPEED_CUDA_ROUND=31, which changes the logits, and launch hands it to the workers', async () => {
    expect(await lastLogits(cases[0]!.ids, { NODESPEED_CUDA_ROUND: '31' })).not.toBe(await lastLogits(cases[0]!.ids, {}));
    const local = ['--model', F32, '--device', 'cuda', '--dtype', 'bf16'];
    const flag: number[][] = [], env31: number[][] = [];
    for (const p of prompts) {
      flag.push(await generate(p, [...local, '--hf-rounding']));
      env31.push(await generate(p, local, { NODESPEED_CUDA_ROUND: '31' }));
    }
    expect(flag).toEqual(env31);
    const cluster = await launch(F32, ['--device', 'cuda', '--dtype', 'bf16', '--num_gpus', '1', '--hf-rounding'], { env: NO_LT, timeoutMs: 300_000 });
    try {
      const served = [];
      for (const p of prompts) served.push(await generate(p, ['--server', cluster.address]));
      expect(served).toEqual(flag);
      expect(cluster.stderr()).toMatch(/rank 0 ready \(cuda:0 .*HF rounding mask 31/);
    } finally {
      await cluster.stop();
    }
  });
});
