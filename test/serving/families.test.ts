// Every model family through `nodespeed launch` on CPU workers: tp=2 x pp=2 (tensor slices and
// pipeline stages in one cluster; MoE also tp=4, one or two whole experts per rank) streams the
// reference's greedy tokens for every prompt (test/engine/families.ts: the transformers fixture
// when present, else torch_families.py's). One cluster per layout keeps the file to a few minutes.
import { describe, expect, it } from 'vitest';

import { FAMILIES, MIXED_WINDOWS, MOE, comparableTokens, familyReference, hasTorch } from '../engine/families.js';
import type { FamilyReference } from '../engine/families.js';
import { launch, stream, workerProcesses } from './helpers.js';

describe.skipIf(!hasTorch)('model families through launch', () => {
  for (const family of FAMILIES) {
    const layouts: [string, string[]][] = [['tp=2 x pp=2', ['--num_cpu_workers', '4', '--tp', '2', '--pp', '2']]];
    if (MOE.includes(family)) layouts.push(['tp=4', ['--num_cpu_workers', '4', '--tp', '4']]);
    let ref: FamilyReference | undefined;
    for (const [name, args] of layouts) {
      it(`${family} ${name}: the reference's greedy tokens for every prompt`, async () => {
        ref ??= familyReference(family);
        const cluster = await launch(ref.dir, [...args, '--kv-blocks', '32']);
        try {
          const got = await Promise.all(ref.cases.map((c) =>
            stream(cluster.client, { promptIds: c.ids, maxTokens: c.greedy_24.length, ignoreEos: true, temperature: 0 })));
          got.forEach((g, i) => {
            const c = ref!.cases[i]!, n = comparableTokens(ref!, c);
            expect(g.tokenIds.slice(0, n), `${family} prompt ${i}`).toEqual(c.greedy_24.slice(0, n));
          });
          // Windowed and global layers mixed: the windowed layers' own pool (every rank's, both
          // stages' tables through the data plane), reported beside the main one, all free again
          // (the driver's load comes with its heartbeat, a beat after the last token).
          let r = (await cluster.client.clusterStatus()).replicas[0]!;
          for (let i = 0; i < 50 && r.kvBlocksFree < 32; i++) {
            await new Promise((res) => setTimeout(res, 100));
            r = (await cluster.client.clusterStatus()).replicas[0]!;
          }
          if (MIXED_WINDOWS.includes(family)) expect(r.kvWindowBlocksTotal).toBeGreaterThan(0);
          else expect(r.kvWindowBlocksTotal).toBe(0);
          expect([r.kvBlocksTotal, r.kvBlocksFree, r.kvWindowBlocksFree]).toEqual([32, 32, r.kvWindowBlocksTotal]);
        } finally {
          expect(await cluster.stop()).toBe(0);
        }
        expect(workerProcesses()).toEqual([]);
      }, 120_000);
    }
  }
});
