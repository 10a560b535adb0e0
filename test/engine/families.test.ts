// Every model family on the CPU engine, in process: last-position logits and incremental greedy
// decoding against the family's reference (test/engine/families.ts: the transformers fixture when
// present, else the plain PyTorch forward of torch_families.py), tensor parallelism over the TCP
// communicator (experts spread over the ranks for MoE), and for windowed families that the window
// matters: the same checkpoint with its window opened to the whole context gives the full-attention
// reference, which differs.
import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import { estimateMemory, windowPoolBlocks } from '../../src/coordinator/memory.js';
import { Engine, KvGroups, generateAll } from '../../src/engine/index.js';
import type { TokenizerLike } from '../../src/engine/index.js';
import { loadAddon } from '../../src/native/addon.js';
import { FAMILIES, MIXED_WINDOWS, MOE, WINDOWED, comparableTokens, familyReference, hasTorch, torchGreedy } from './families.js';
import type { FamilyCase, FamilyReference } from './families.js';
import { maxAbsDiff } from './helpers.js';

const idsOnly: TokenizerLike = { encode: () => { throw new Error('ids only'); }, decode: () => '', eosTokenIds: [] };
const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

async function lastLogits(e: Engine, ids: number[]): Promise<Float32Array> {
  return (await e.step({ seqs: [{ tokens: Int32Array.from(ids), pos: 0, ...e.kvGroups().allocate(0, ids.length) }], wantLogits: true })).logits!;
}

async function greedy(e: Engine, cases: FamilyCase[]): Promise<number[][]> {
  const out = await generateAll(e, idsOnly, cases.map((c) => ({ promptIds: c.ids, maxTokens: c.greedy_24.length, ignoreEos: true })));
  return out.map((r) => r.tokenIds);
}

/** The checkpoint with config.json's sliding_window opened to max_position_embeddings. */
function fullAttentionCopy(dir: string): string {
  const out = mkdtempSync(join(tmpdir(), 'nodespeed-full-'));
  dirs.push(out);
  for (const f of ['model.safetensors', 'tokenizer.json', 'tokenizer_config.json', 'generation_config.json']) symlinkSync(join(dir, f), join(out, f));
  const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  writeFileSync(join(out, 'config.json'), JSON.stringify({ ...cfg, sliding_window: cfg.max_position_embeddings }));
  return out;
}

describe.skipIf(!hasTorch)('model families on cpu', () => {
  for (const family of FAMILIES) {
    describe(family, () => {
      let ref: FamilyReference;
      // Both references compute in f32 from the same weights (transformers' rounded to 5 decimals): ~6e-6 apart.
      const tol = () => 1e-4;

      it('last-position logits and greedy tokens of every prompt equal the reference', async () => {
        ref = familyReference(family);
        const e = await Engine.load(ref.dir, { device: 'cpu', kvBlocks: 64 });
        try {
          for (const c of ref.cases) expect(maxAbsDiff(await lastLogits(e, c.ids), c.last_logits), `${family} ${c.ids.length} ids`).toBeLessThan(tol());
          const got = await greedy(e, ref.cases);
          ref.cases.forEach((c, i) => {
            const n = comparableTokens(ref, c);
            expect(got[i]!.slice(0, n), `${family} prompt ${i}`).toEqual(c.greedy_24.slice(0, n));
          });
        } finally {
          e.dispose();
        }
      }, 60_000);

      const tp = MOE.includes(family) ? 4 : 2;
      it(`tp=${tp} over TCP${MOE.includes(family) ? ' (experts spread over the ranks)' : ''}: the same logits and tokens`, async () => {
        const addon = loadAddon();
        const comms = Array.from({ length: tp }, (_, rank) => new addon.Comm!({ kind: 'tcp', rank, size: tp }));
        const ports = await Promise.all(comms.map((c) => c.listen!('127.0.0.1')));
        await Promise.all(comms.map((c) => c.connect!(ports.map((p) => `127.0.0.1:${p}`))));
        const ranks = await Promise.all(comms.map((_, r) => Engine.load(ref.dir, { device: 'cpu', tpRank: r, tpSize: tp, kvBlocks: 64, threads: 1 })));
        try {
          ranks.forEach((e, r) => e.setTpComm(comms[r]!));
          if (MOE.includes(family)) expect(ranks.map((e) => e.shard.expertEnd! - e.shard.expertStart!).reduce((a, b) => a + b)).toBe(ranks[0]!.shard.numExperts);
          const c = ref.cases[ref.cases.length - 1]!;
          const tables = ranks[0]!.kvGroups().allocate(0, c.ids.length + 24);
          const first = await Promise.all(ranks.map((e) => e.step({ seqs: [{ tokens: Int32Array.from(c.ids), pos: 0, ...tables }], wantLogits: true })));
          for (const r of first) expect(maxAbsDiff(r.logits!, c.last_logits)).toBeLessThan(tol());
          const toks = [first[0]!.sampled[0]!];
          for (let i = 1; i < c.greedy_24.length; i++) {
            const res = await Promise.all(ranks.map((e) => e.step({ seqs: [{ tokens: Int32Array.of(toks[i - 1]!), pos: c.ids.length + i - 1, ...tables }] })));
            expect(new Set(res.map((r) => r.sampled[0])).size).toBe(1);
            toks.push(res[0]!.sampled[0]!);
          }
          expect(toks).toEqual(c.greedy_24);
        } finally {
          ranks.forEach((e) => e.dispose());
          comms.forEach((c) => c.abort());
        }
      }, 120_000);

      if (MIXED_WINDOWS.includes(family)) {
        it('the launch-time memory estimate counts the KV pools the CPU backend allocates (its default size, the windowed layers\' ring pool)', async () => {
          const e = await Engine.load(familyReference(family).dir, { device: 'cpu', maxStepTokens: 32 });
          try {
            const cfg = e.config, kvHeads = cfg.numKvHeads;
            const sliding = cfg.slidingLayers.filter(Boolean).length;
            expect(e.kvWindowBlocks).toBeLessThan(e.kvBlocks);
            const actual = ((cfg.numLayers - sliding) * e.kvBlocks + sliding * e.kvWindowBlocks) * 16 * 2 * kvHeads * cfg.headDim * 4;
            const rank = { rank: 0, host: 'h', localRank: 0, replica: 0, stage: 0, tpRank: 0, layerStart: 0, layerEnd: cfg.numLayers };
            const est = estimateMemory(cfg, { tp: 1, pp: 1, ranks: [rank] }, { device: 'cpu', dtype: 'auto', kvBlocks: 0, kvBlockSize: 16, stepTokens: 32 });
            expect(est.ranks[0]!.kvBytes).toBe(actual);
          } finally {
            e.dispose();
          }
        });
      }

      if (family === 'mistral') {
        it('every layer windowed: a sequence far longer than the KV cache cycles through a ring of blocks, same tokens', async () => {
          const c = ref.cases[2]!;  // 27 ids
          const n = 150;
          const want = torchGreedy(ref.dir, c.ids, n);
          // 4 blocks of 16 positions hold 64 of the 177; a 27-token prefill plus a window of 12 needs 3.
          const e = await Engine.load(ref.dir, { device: 'cpu', kvBlocks: 4 });
          try {
            expect(e.kvWindow).toBe(12);
            const [g] = await generateAll(e, idsOnly, [{ promptIds: c.ids, maxTokens: n, ignoreEos: true }]);
            expect(g!.tokenIds).toEqual(want);
          } finally {
            e.dispose();
          }
        }, 60_000);
      }

      if (MIXED_WINDOWS.includes(family)) {
        it('windowed and global layers mixed: the windowed layers cycle through a ring of their own, a long sequence costs whole-context blocks only in the global layers, same tokens', async () => {
          const c = ref.cases[2]!;  // 27 ids
          const n = 150;
          const want = torchGreedy(ref.dir, c.ids, n);
          // 177 positions: 12 blocks of 16 in every layer with one table shared by all layers (48
          // layer-blocks). The global layers hold 12 here, the windowed ones a ring of
          // ceil((27-token prefill + window 12 - 1) / 16) = 3: 30 layer-blocks in all.
          const e = await Engine.load(ref.dir, { device: 'cpu', kvBlocks: 12, maxStepTokens: 32 });
          try {
            expect(e.kvWindowBlocks).toBe(3);  // a ring of a 32-token step and the window, for 12 global blocks of 16 contexts
            const sliding = e.config.slidingLayers.filter(Boolean).length;
            const layerBlocks = (e.config.numLayers - sliding) * e.kvBlocks + sliding * e.kvWindowBlocks;
            expect(layerBlocks).toBeLessThan(e.config.numLayers * 12);
            // The launch-time estimate (--dry-run, the fit check) sizes the pools as the backend did.
            expect(windowPoolBlocks(e.config, 12, 16, 32)).toBe(e.kvWindowBlocks);
            const [g] = await generateAll(e, idsOnly, [{ promptIds: c.ids, maxTokens: n, ignoreEos: true }]);
            expect(g!.tokenIds).toEqual(want);
            // The allocator's counts for that sequence, as the scheduler keeps them: every block in the global pool, the ring in the window pool.
            const kv = e.kvGroups();
            const t = kv.allocate('long', c.ids.length + n, c.ids.length);
            expect([kv.main.held('long'), kv.windowed!.held('long')]).toEqual([12, 3]);
            expect(new Set(t.windowBlockTable).size).toBe(3);
            expect(t.windowBlockTable!.length).toBe(t.blockTable.length);
          } finally {
            e.dispose();
          }
        }, 60_000);
      }

      if (WINDOWED.includes(family)) {
        it('the window matters: opened to the whole context, the engine gives the full-attention answer, which differs', async () => {
          const full = fullAttentionCopy(ref.dir);
          const long = ref.cases.filter((c) => c.ids.length > 12);
          const e = await Engine.load(full, { device: 'cpu', kvBlocks: 64 });
          let fullTokens: number[][];
          let logitsMoved = 0;
          try {
            fullTokens = await greedy(e, long);
            for (const c of long) logitsMoved = Math.max(logitsMoved, maxAbsDiff(await lastLogits(e, c.ids), c.last_logits));
            if (ref.full) {
              const fullRef = ref.full.filter((c) => c.ids.length > 12);
              expect(fullTokens).toEqual(fullRef.map((c) => c.greedy_24));
              for (const c of fullRef) expect(maxAbsDiff(await lastLogits(e, c.ids), c.last_logits)).toBeLessThan(tol());
            }
          } finally {
            e.dispose();
          }
          // A prompt longer than the window: the windowed reference's tokens are not the full-attention
          // ones (Gemma 2's attention soft-cap of 0.5 flattens its scores so much that its tokens may
          // survive; its logits still move well past rounding).
          const tokensMoved = fullTokens.some((t, i) => JSON.stringify(t) !== JSON.stringify(long[i]!.greedy_24));
          expect(tokensMoved || (family === 'gemma2' && logitsMoved > 1e-2), `logits moved by ${logitsMoved}`).toBe(true);
        }, 60_000);
      }
    });
  }
});
