// Tensor parallelism on two GPUs through NCCL: py-tiny split over ranks 0 and 1 (Megatron slices from
// the loader, all-reduce after o_proj/down_proj and the embedding, all-gather of vocab-parallel
// logits) gives the tp-1 engine's logits (cosine >= 0.9999 on the prompt's last position) and HF's
// greedy tokens (first 16 of greedy_48), with both ranks sampling the same ids, greedy and seeded,
// one sequence and a 10-sequence batch (a CUDA-graph bucket with the P2P collectives on). Both ranks
// run in this one process, one engine per GPU. NODESPEED_TEST_DEVICE=cpu: over TCP on the CPU backend.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

import { blockTables, cosine, gpuStatus, greedy, openCudaEngine, recordResult, root, titled, tpComms } from './lib.mjs';

interface PyTinyCase { text: string; ids: number[]; greedy_48: number[] }
type StepReq = Parameters<Awaited<ReturnType<typeof openCudaEngine>>['engine']['step']>[0];

const gpu = gpuStatus({ gpus: 2 });

describe.skipIf(!gpu.ok)(titled('tensor parallelism over 2 GPUs', gpu), { timeout: 600_000 }, () => {
  it('tp 2 equals tp 1 and HF; both ranks sample the same tokens', async () => {
    const dir = join(root, 'models', 'py-tiny');
    const ref = JSON.parse(readFileSync(join(dir, 'reference.json'), 'utf8')) as { cases: PyTinyCase[] };

    const single = await openCudaEngine(dir, { kvBlocks: 64 });
    const [bt] = blockTables(1, 512, single.blockSize, single.kvBlocks);
    const tp1 = [];
    for (const c of ref.cases) tp1.push(await greedy(single.engine, c.ids, 16, bt));
    single.engine.dispose();

    const comms = await tpComms(2);
    const ranks = await Promise.all([0, 1].map((r) => openCudaEngine(dir, { kvBlocks: 64, tpRank: r, tpSize: 2, deviceIndex: r, comm: comms[r] })));
    // One step on both ranks at once (each blocks in NCCL until the other joins).
    const both = (req: StepReq) => Promise.all(ranks.map((r) => r.engine.step(req)));
    const cases = [];
    try {
      for (const [i, c] of ref.cases.entries()) {
        const [a, b] = await both({ seqs: [{ tokens: Int32Array.from(c.ids), pos: 0, blockTable: bt }], wantLogits: true });
        const tokens = [a!.sampled[0]!];
        let ranksAgree = a!.sampled[0] === b!.sampled[0];
        for (let k = 1; k < 16; k++) {
          const [x, y] = await both({ seqs: [{ tokens: Int32Array.of(tokens[k - 1]!), pos: c.ids.length + k - 1, blockTable: bt }] });
          ranksAgree &&= x!.sampled[0] === y!.sampled[0];
          tokens.push(x!.sampled[0]!);
        }
        // Seeded sampling must agree across ranks too: a pp-1 replica's followers feed their own sampled
        // tokens back, so a disagreement would fork the ranks' KV caches.
        let sampledAgree = true;
        let last = tokens[15]!;
        for (let k = 0; k < 16; k++) {
          const [x, y] = await both({ seqs: [{ tokens: Int32Array.of(last), pos: c.ids.length + 15 + k, blockTable: bt,
            temperature: 0.8, topK: 40, topP: 0.9, seed: 7n }] });
          sampledAgree &&= x!.sampled[0] === y!.sampled[0];
          last = x!.sampled[0]!;
        }
        let match = 0;
        while (match < 16 && tokens[match] === c.greedy_48[match]) match++;
        cases.push({ text: c.text, cosineVsTp1: cosine(a!.logits!, tp1[i]!.lastLogits), cosineRank0VsRank1: cosine(a!.logits!, b!.logits!),
          greedyMatch: match, sameAsTp1: tokens.every((t, k) => t === tp1[i]!.tokens[k]), ranksAgree, sampledAgree });
      }
      // Batched decode: every prompt twice (10 sequences), 16 greedy tokens each.
      const copies = ref.cases.flatMap((c) => [c, c]);
      const bts = blockTables(copies.length, 64, ranks[0]!.blockSize, ranks[0]!.kvBlocks);
      let [x, y] = await both({ seqs: copies.map((c, s) => ({ tokens: Int32Array.from(c.ids), pos: 0, blockTable: bts[s]! })) });
      const batchTokens = copies.map((_, s) => [x!.sampled[s]!]);
      let batchRanksAgree = x!.sampled.every((t, s) => t === y!.sampled[s]);
      for (let k = 1; k < 16; k++) {
        [x, y] = await both({ seqs: copies.map((c, s) => ({ tokens: Int32Array.of(batchTokens[s]![k - 1]!), pos: c.ids.length + k - 1, blockTable: bts[s]! })) });
        batchRanksAgree &&= x!.sampled.every((t, s) => t === y!.sampled[s]);
        x!.sampled.forEach((t, s) => batchTokens[s]!.push(t));
      }
      const batchGreedy = copies.map((c, s) => batchTokens[s]!.every((t, k) => t === c.greedy_48[k]));
      const batch = { seqs: copies.length, ranksAgree: batchRanksAgree, greedyMatch: batchGreedy.filter(Boolean).length };
      recordResult('gpu-tp2.json', { model: 'models/py-tiny', engines: ranks.map((r) => r.engine.describe()), cases, batch });
      for (const c of cases) {
        expect(c.ranksAgree && c.sampledAgree, c.text).toBe(true);
        expect(c.greedyMatch, c.text).toBe(16);
        expect(c.cosineVsTp1, c.text).toBeGreaterThanOrEqual(0.9999);
      }
      expect(batch).toEqual({ seqs: 10, ranksAgree: true, greedyMatch: 10 });
    } finally {
      ranks.forEach((r) => r.engine.dispose());
      comms.forEach((c) => c.abort?.());
    }
  });
});
