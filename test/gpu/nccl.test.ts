// NCCL through the addon between two GPUs: two processes (test/gpu/nccl-rank.mjs), one GPU each.
// All-reduce sums (f32 and bf16), all-gather order, broadcast, send/recv, the one-shot P2P kernels
// around their size limits, asyncError, and abort() freeing an op that would wait forever; reports
// the 64 MB all-reduce bus bandwidth. NODESPEED_TEST_DEVICE=cpu runs the same over the TCP comm.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

import { addon, device, gpuStatus, recordResult, root, titled } from './lib.mjs';

const gpu = gpuStatus({ gpus: 2 });

function rank(r: number, dir: string): Promise<Record<string, unknown>> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [join(root, 'test', 'gpu', 'nccl-rank.mjs'), String(r), dir], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout.on('data', (d) => { out += d; });
    const timer = setTimeout(() => p.kill('SIGKILL'), 120_000);
    p.on('exit', (code, signal) => {
      clearTimeout(timer);
      const line = out.trim().split('\n').pop() ?? '';
      let res: Record<string, unknown>;
      try { res = JSON.parse(line); } catch { res = { rank: r, ok: false, error: `exit ${code ?? signal}: ${out.slice(-500)}` }; }
      resolve({ ...res, exit: code ?? signal });
    });
  });
}

describe.skipIf(!gpu.ok)(titled('NCCL communicator through the addon, 2 processes', gpu), { timeout: 300_000 }, () => {
  it('collectives are exact, P2P sizes and abort work on both ranks', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ns-nccl-'));
    try {
      const ranks = await Promise.all([0, 1].map((r) => rank(r, dir)));
      recordResult('gpu-nccl-allreduce.json', { kind: device === 'cpu' ? 'tcp' : 'nccl',
        devices: device === 'cpu' ? [] : addon.info().cuda.devices.map((d: { name: string }) => d.name), ranks });
      for (const r of ranks) expect(r, JSON.stringify(r)).toMatchObject({ ok: true, exit: 0 });
      expect(ranks[0]).toMatchObject({ abortRejected: true });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
