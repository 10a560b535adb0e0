// Every model family through `nodespeed launch` on CPU workers: tp=2 and pp=2 (MoE also tp=4,
// one or two whole experts per rank) stream the reference's greedy tokens for every prompt
// (test/engine/families.ts: the transformers fixture when present, else torch_families.py's).
import { rmSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';

import { FAMILIES, MOE, familyReference, hasTorch } from '../engine/families.js';
import type { FamilyReference } from '../engine/families.js';
import { launch, stream, workerProcesses } from './helpers.js';

const made: string[] = [];
afterAll(() => made.forEach((d) => rmSync(d, { recursive: true, force: true })));

describe.skipIf(!hasTorch)('model families through launch', () => {
  for (const family of FAMILIES) {
    const layouts: [string, string[]][] = [['tp=2', ['--num_cpu_workers', '2', '--tp', '2']], ['pp=2', ['--num_cpu_workers', '2', '--pp', '2']]];
    if (MOE.includes(family)) layouts.push(['tp=4', ['--num_cpu_workers', '4', '--tp', '4']]);
    let ref: FamilyReference | undefined;
    for (const [name, args] of layouts) {
      it(`${family} ${name}: the reference's greedy tokens for every prompt`, async () => {
        if (!ref) {
          ref = familyReference(family);
          if (ref.source === 'torch') made.push(ref.dir);
        }
        const cluster = await launch(ref.dir, [...args, '--kv-blocks', '32']);
        try {
          const got = await Promise.all(ref.cases.map((c) =>
            stream(cluster.client, { promptIds: c.ids, maxTokens: c.greedy_24.length, ignoreEos: true, temperature: 0 })));
          got.forEach((g, i) => expect(g.tokenIds, `${family} prompt ${i}`).toEqual(ref!.cases[i]!.greedy_24));
        } finally {
          expect(await cluster.stop()).toBe(0);
        }
        expect(workerProcesses()).toEqual([]);
      }, 120_000);
    }
  }
});
