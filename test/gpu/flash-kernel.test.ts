// Kernel-level check of the attention launcher without a model (test/gpu/flash-kernel.cu, built here
// with nvcc against native/src/cuda/attention*.cu): random q and paged K/V, steps mixing prefill tiles,
// short chunks and decode tokens, MHA and GQA, head_dim 64/128 (and 256/96 through the SIMT kernels
// only), bf16 and fp16, block sizes 16 and 5, each split like the engine does and SIMT-only, against a
// double-precision causal attention (error relative to max |v| < 1.5e-2); then times one prefill and
// one decode layer. When test/gpu/attention-flash.test.ts fails, this says whether the kernel or the
// step plumbing is off.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

import { findNvcc, gpuStatus, recordResult, root, titled } from './lib.mjs';

const nvcc = findNvcc();
const cuda = gpuStatus({ cuda: true });
const gpu = cuda.ok && !nvcc ? { ok: false, reason: 'nvcc not found (set NVCC or CUDA_HOME)' } : cuda;

describe.skipIf(!gpu.ok)(titled('attention kernels against a double-precision reference', gpu), { timeout: 900_000 }, () => {
  it('every case within 1.5e-2 of max |v|, flash+SIMT split and SIMT only', () => {
    const tmp = mkdtempSync(join(tmpdir(), 'ns-flash-kernel-'));
    try {
      const exe = join(tmp, 'flash-kernel');
      const src = (f: string) => join(root, 'native', 'src', 'cuda', f);
      const cc = spawnSync(nvcc!, ['-O3', '-std=c++17', '-gencode=arch=compute_80,code=sm_80', '-gencode=arch=compute_90a,code=sm_90a',
        `-I${join(root, 'native', 'src')}`, join(root, 'test', 'gpu', 'flash-kernel.cu'), src('attention.cu'), src('attention_prefill.cu'), '-o', exe],
      { encoding: 'utf8' });
      expect(cc.status, cc.stderr).toBe(0);
      const run = spawnSync(exe, [], { encoding: 'utf8', timeout: 600_000 });
      const res = JSON.parse(run.stdout.trim().split('\n').pop() ?? '{}') as { ok: boolean; cases: { name: string; pass: boolean }[] };
      recordResult('gpu-flash-kernel.json', res);
      for (const c of res.cases) expect(c.pass, JSON.stringify(c)).toBe(true);
      expect(res.ok).toBe(true);
      expect(run.status).toBe(0);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});
