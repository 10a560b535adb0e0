// The layouts of 4- and 8-GPU hosts, planned here without GPUs: Llama-2-13B at TP=4 and
// TP=2 x PP=2, 70B at TP=8 and TP=4 x PP=2, and 2 replicas x TP=2. The layout code must keep each
// TP group on its host, balance stages by parameters (embedding and LM head included), give every
// parameter to exactly one rank of a replica (norms replicated per TP rank), and the memory check
// must fit these on H200s (150,109,880,320 bytes each, as the addon reports) and refuse 70B on one.
import { describe, expect, it } from 'vitest';

import { estimateMemory } from '../../src/coordinator/memory.js';
import { embeddingParams, layerParams, planLayout } from '../../src/coordinator/layout.js';
import { rankWeightParams } from '../../src/coordinator/memory.js';
import { parseModelConfig } from '../../src/model/config.js';
import { PRESETS, llamaConfigJson } from '../../src/model/init.js';

const H200 = 150_109_880_320;
// Published Llama 2 parameter counts (model init's presets reproduce them).
const PARAMS: Record<string, number> = { '13b': 13_015_864_320, '70b': 68_976_648_192 };

function config(preset: string) {
  return parseModelConfig(llamaConfigJson(PRESETS[preset]!, 'bf16', 1, 2) as never, `${preset}/config.json`, preset);
}

const CASES = [
  { preset: '13b', gpus: 4, tp: 4, pp: 1, replicas: 1 },
  { preset: '13b', gpus: 4, tp: 2, pp: 2, replicas: 1 },
  { preset: '13b', gpus: 4, tp: 2, pp: 1, replicas: 2 },
  { preset: '70b', gpus: 8, tp: 8, pp: 1, replicas: 1 },
  { preset: '70b', gpus: 8, tp: 4, pp: 2, replicas: 1 },
];

describe('4- and 8-GPU layouts, planned on the CPU', () => {
  for (const k of CASES) {
    it(`${k.preset} on ${k.gpus} GPUs: tp ${k.tp} x pp ${k.pp} x ${k.replicas} replica(s)`, () => {
      const c = config(k.preset);
      const layout = planLayout(c, [{ host: 'gpu-host', slots: k.gpus }], { tp: k.tp, pp: k.pp, replicas: k.replicas });
      expect(layout.world).toBe(k.gpus);
      expect(layout.ranks.every((r) => r.host === 'gpu-host')).toBe(true);
      // TP groups are runs of consecutive ranks (one host, consecutive local ranks = GPUs).
      for (const r of layout.ranks) expect(r.rank).toBe(((r.replica * k.pp) + r.stage) * k.tp + r.tpRank);
      // Stages: contiguous, cover every layer, and no stage is heavier than the lightest by more than a layer.
      expect(layout.stages[0]!.layerStart).toBe(0);
      expect(layout.stages.at(-1)!.layerEnd).toBe(c.numLayers);
      const params = layout.stages.map((s) => s.params);
      expect(Math.max(...params) - Math.min(...params)).toBeLessThanOrEqual(layerParams(c));
      if (k.pp === 2) {
        // The embedding on stage 0 and the LM head on stage 1 weigh the same here: an even split.
        expect(embeddingParams(c)).toBe(c.vocabSize * c.hiddenSize);
        expect(layout.stages[0]!.layerEnd).toBe(c.numLayers / 2);
      }
      // Every parameter on exactly one rank of each replica; the 2h norms per layer and the final
      // norm are replicated on each TP rank; 32000 rows split evenly at tp 2/4/8.
      for (let rep = 0; rep < k.replicas; rep++) {
        const held = layout.ranks.filter((r) => r.replica === rep).reduce((n, r) => n + rankWeightParams(c, r, k.tp, k.pp), 0);
        expect(held).toBe(PARAMS[k.preset]! + (k.tp - 1) * c.hiddenSize * (2 * c.numLayers + 1));
      }
      const mem = estimateMemory(c, layout, { device: 'cuda', dtype: 'bf16', kvBlocks: 4096, kvBlockSize: 16, gpuMemory: H200 });
      expect(mem.problems).toEqual([]);
      const perRank = (2 * PARAMS[k.preset]!) / (k.tp * k.pp);
      for (const r of mem.ranks) expect(Math.abs(r.weightBytes - perRank) / perRank).toBeLessThan(0.02);
    });
  }

  it('refuses 70B on one H200 and names the rank and the sizes', () => {
    const c = config('70b');
    const layout = planLayout(c, [{ host: 'gpu-host', slots: 1 }], { tp: 1, pp: 1, replicas: 1 });
    const mem = estimateMemory(c, layout, { device: 'cuda', dtype: 'bf16', kvBlocks: 1024, kvBlockSize: 16, gpuMemory: H200 });
    expect(mem.problems).toHaveLength(1);
    expect(mem.problems[0]).toMatch(/^rank 0 on gpu-host needs ~13\d\.\d GiB, a GPU offers 125\.8 GiB$/);
  });
});
