// Kernel-level check of the mixture-of-experts kernels without a model (test/gpu/moe-kernels.cu, built
// here with nvcc against native/src/cuda/moe.cu), in moe_layer's order: the route kernel equals the
// CPU router (common/moe_route.h) bit for bit, the permutation is a permutation, and layers of
// Qwen1.5-MoE-A2.7B's and a Mixtral-like shape (bf16, tp 1 and a tp-2 rank, grouped GEMV and
// tensor-core tiles, the shared expert inside the GEMV, the combine alone and fused with the residual
// add + next RMSNorm) are within 3e-3 of max |output| of a double-precision mixture of experts. When
// the MoE families of test/gpu/families.test.ts fail, this says whether the kernels or the plumbing is off.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

import { findNvcc, gpuStatus, recordResult, root, titled } from './lib.mjs';

const nvcc = findNvcc();
const cuda = gpuStatus({ cuda: true });
const gpu = cuda.ok && !nvcc ? { ok: false, reason: 'nvcc not found (set NVCC or CUDA_HOME)' } : cuda;

describe.skipIf(!gpu.ok)(titled('mixture-of-experts kernels against the CPU router and a double-precision layer', gpu), { timeout: 900_000 }, () => {
  it('routing bit for bit, permutations, every layer case within 3e-3 of max |output|', () => {
    const tmp = mkdtempSync(join(tmpdir(), 'ns-moe-kernels-'));
    try {
      const exe = join(tmp, 'moe-kernels');
      const cc = spawnSync(nvcc!, ['-O3', '-std=c++17', '--expt-relaxed-constexpr', '-gencode=arch=compute_80,code=sm_80',
        '-gencode=arch=compute_90a,code=sm_90a', `-I${join(root, 'native', 'src')}`, join(root, 'test', 'gpu', 'moe-kernels.cu'),
        join(root, 'native', 'src', 'cuda', 'moe.cu'), '-o', exe], { encoding: 'utf8' });
      expect(cc.status, cc.stderr).toBe(0);
      const run = spawnSync(exe, [], { encoding: 'utf8', timeout: 600_000 });
      const res = JSON.parse(run.stdout.trim().split('\n').pop() || '{}') as { ok: boolean; firstFailure?: string; layers: { case: string; ok: boolean }[] };
      recordResult('gpu-moe-kernels.json', res);
      for (const l of res.layers ?? []) expect(l.ok, JSON.stringify(l)).toBe(true);
      expect(res.firstFailure ?? '', run.stderr).toBe('');
      expect(res.ok).toBe(true);
      expect(run.status).toBe(0);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});
