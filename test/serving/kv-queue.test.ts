// A request that waits in a replica's queue for KV blocks starts as soon as the sequence holding
// them ends, in every shape of the replica loop (tp 1 and tp 2 plan one step ahead; pp 2 keeps
// micro-batches in flight): 16 blocks of 16 tokens hold one 4 + 190-token request (13 blocks), not
// two. Planning ahead must settle the finished sequence (which frees its blocks) before it waits for
// the next submit: otherwise the second request would never start.
import { describe, expect, it } from 'vitest';

import { PY_TINY, launch, workerProcesses } from './helpers.js';

describe('KV-bound queue', () => {
  const layouts = [['tp 1', ['--num_cpu_workers', '1']], ['tp 2', ['--num_cpu_workers', '2', '--tp', '2']],
    ['pp 2', ['--num_cpu_workers', '2', '--pp', '2']]] as const;
  for (const [name, args] of layouts) {
    it(`${name}: the queued request runs when the first one ends, with the same greedy tokens`, async () => {
      const cluster = await launch(PY_TINY, [...args, '--kv-blocks', '16']);
      try {
        const req = { prompt: 'import os\n\n', maxTokens: 190, ignoreEos: true };
        const [a, b] = await Promise.all([cluster.client.complete(req), cluster.client.complete(req)]);
        expect(a.tokenIds).toHaveLength(190);
        expect(b.tokenIds).toEqual(a.tokenIds);
      } finally {
        expect(await cluster.stop()).toBe(0);
      }
      expect(workerProcesses()).toEqual([]);
    }, 30_000);
  }
});
