// Unit tests of the pieces that need no processes: the layout planner (PP balance by cost, TP
// groups inside hosts), the memory estimate, the step-metadata codec and the driver's
// continuous-batching scheduler. Plus `nodespeed launch --dry-run` as a real CLI process.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { balanceStages, LayoutError, planLayout } from '../../src/coordinator/layout.js';
import { estimateMemory, groupRanks, stepScratchBytes } from '../../src/coordinator/memory.js';
import type { TokenizerLike } from '../../src/engine/index.js';
import type { ModelConfig } from '../../src/model/index.js';
import { loadModelConfig } from '../../src/model/index.js';
import type { Submit } from '../../src/protocol/control.js';
import { FinishReason } from '../../src/protocol/lifecycle.js';
import { samplingToWire, validateSampling } from '../../src/protocol/sampling.js';
import { decodeStep, encodeStep } from '../../src/protocol/step-codec.js';
import { Scheduler } from '../../src/worker/scheduler.js';
import { BIN, PY_TINY, root } from './helpers.js';

// Llama-2-7B's shape: 32 layers, vocab 32000 (embedding and head each ~ 0.65 of a layer).
const llama7b = { ...loadModelConfig(PY_TINY), hiddenSize: 4096, intermediateSize: 11008, numHeads: 32, numKvHeads: 32, headDim: 128,
  vocabSize: 32000, numLayers: 32, maxPosition: 4096, tieWordEmbeddings: false } as ModelConfig;
// A big-vocabulary model (Llama-3-8B-like): the head weighs ~2.4 layers, so the last stage gets fewer layers.
const bigVocab = { ...llama7b, numKvHeads: 8, intermediateSize: 14336, vocabSize: 128256 } as ModelConfig;

/** Stage costs of the naive split (same number of layers per stage), for comparison. */
function balanceStagesEven(c: ModelConfig, pp: number): number[] {
  const per = balanceStages(c, 1)[0]!.params - c.vocabSize * c.hiddenSize * 2 - c.hiddenSize;
  const layer = per / c.numLayers;
  return Array.from({ length: pp }, (_, s) => (c.numLayers / pp) * layer + (s === 0 ? c.vocabSize * c.hiddenSize : 0) +
    (s === pp - 1 ? c.vocabSize * c.hiddenSize + c.hiddenSize : 0));
}

describe('layout', () => {
  it('balances pipeline stages by cost, counting embedding and LM head', () => {
    const s = balanceStages(bigVocab, 4);
    expect(s[0]!.layerStart).toBe(0);
    expect(s[3]!.layerEnd).toBe(32);
    for (let i = 1; i < 4; i++) expect(s[i]!.layerStart).toBe(s[i - 1]!.layerEnd);
    const counts = s.map((x) => x.layerEnd - x.layerStart);
    // Not 8/8/8/8: the stages holding the embedding and the (large) head take fewer layers.
    expect(counts[3]).toBeLessThan(8);
    expect(counts[0]).toBeLessThan(counts[1]!);
    // Better balanced than an even split of the layers.
    const costs = s.map((x) => x.params);
    const even = balanceStagesEven(bigVocab, 4);
    expect(Math.max(...costs)).toBeLessThan(Math.max(...even));
    expect(Math.max(...costs) / Math.min(...costs)).toBeLessThan(1.25);
  });

  it('numbers ranks replica, stage, TP rank and keeps TP groups on one host', () => {
    const l = planLayout(llama7b, [{ host: 'a', slots: 4 }, { host: 'b', slots: 4 }], { tp: 2, pp: 2, replicas: 'auto' });
    expect(l.replicas).toBe(2);
    expect(l.ranks.map((r) => [r.host, r.replica, r.stage, r.tpRank])).toEqual([
      ['a', 0, 0, 0], ['a', 0, 0, 1], ['a', 0, 1, 0], ['a', 0, 1, 1],
      ['b', 1, 0, 0], ['b', 1, 0, 1], ['b', 1, 1, 0], ['b', 1, 1, 1]]);
    expect(() => planLayout(llama7b, [{ host: 'a', slots: 3 }, { host: 'b', slots: 3 }], { tp: 2, pp: 1, replicas: 3 }))
      .toThrow(/TP group of replica 1 .* would span hosts a, b/);
    expect(planLayout(llama7b, [{ host: 'a', slots: 3 }, { host: 'b', slots: 3 }], { tp: 2, pp: 1, replicas: 3, allowTpAcrossHosts: true }).world).toBe(6);
    expect(() => planLayout(llama7b, [{ host: 'a', slots: 2 }], { tp: 2, pp: 1, replicas: 2 })).toThrow(/= 4 workers, the hosts have 2 slots/);
    expect(() => planLayout(llama7b, [{ host: 'a', slots: 8 }], { tp: 3, pp: 1, replicas: 1 })).toThrow(LayoutError);
    expect(() => planLayout(llama7b, [{ host: 'a', slots: 64 }], { tp: 1, pp: 33, replicas: 1 })).toThrow(/only 32 layers/);
  });

  it('estimates per-rank memory and flags a layout that does not fit', () => {
    const l = groupRanks(planLayout(llama7b, [{ host: 'gpu', slots: 2 }], { tp: 2, pp: 1, replicas: 1 }));
    const m = estimateMemory(llama7b, l, { device: 'cuda', dtype: 'auto', kvBlocks: 1000, kvBlockSize: 16, gpuMemory: 80e9 });
    // ~6.7e9 params / 2 ranks x 2 bytes.
    expect(m.ranks[0]!.weightBytes / 1e9).toBeGreaterThan(6.5);
    expect(m.ranks[0]!.weightBytes / 1e9).toBeLessThan(7);
    expect(m.problems).toEqual([]);
    const small = estimateMemory(llama7b, l, { device: 'cuda', dtype: 'auto', kvBlocks: 1000, kvBlockSize: 16, gpuMemory: 8e9 });
    expect(small.problems[0]).toMatch(/rank 0 on gpu needs ~\d+\.\d GiB, a GPU offers/);
  });

  it('counts quantized matrices at one byte a weight, an MoE\'s experts too (CUDA keeps them quantized as the CPU does)', () => {
    const moe = loadModelConfig(join(root, 'test', 'fixtures', 'hf-reference', 'qwen2_moe'));
    const l = groupRanks(planLayout(moe, [{ host: 'gpu', slots: 1 }], { tp: 1, pp: 1, replicas: 1 }));
    const o = { dtype: 'auto', kvBlocks: 16, kvBlockSize: 16, gpuMemory: 80e9 };
    const w = (device: 'cpu' | 'cuda', quantize: 'none' | 'int8') => estimateMemory(moe, l, { ...o, device, quantize }).ranks[0]!.weightBytes;
    // qwen2_moe fixture: per layer 8 experts of 3 x 32 x 64 and a shared expert of 3 x 64 x 64 (every layer sparse).
    const H = 64, L = moe.numLayers, experts = L * (8 * 3 * 32 * H + 3 * 64 * H), expertRows = L * (8 * (32 + 32 + H) + (64 + 64 + H));
    const saved = w('cuda', 'none') - w('cuda', 'int8');
    expect(saved).toBe(w('cpu', 'none') - w('cpu', 'int8'));
    expect(saved).toBeGreaterThan(experts - 4 * expertRows);  // the experts' bytes halve, and attention and head shrink too
  });

  it('counts one step of --max-batch-tokens tokens of scratch, as the CUDA backend sizes it', () => {
    // CudaBackend::activation_bytes for a 7B at tp 1: 8 H + 2 (H + qkv rows + heads x dim + 3 I) = 139,776 bytes a token.
    expect(stepScratchBytes(llama7b, 1, 8192, 'cuda')).toBe(8192 * 139_776);
    expect(stepScratchBytes(llama7b, 2, 1, 'cuda')).toBe(8 * 4096 + 2 * (4096 + 6144 + 2048 + 16512));
    const l = groupRanks(planLayout(llama7b, [{ host: 'gpu', slots: 1 }], { tp: 1, pp: 1, replicas: 1 }));
    const o = { device: 'cuda' as const, dtype: 'auto', kvBlocks: 1000, kvBlockSize: 16, gpuMemory: 80e9 };
    const without = estimateMemory(llama7b, l, o).ranks[0]!, withSteps = estimateMemory(llama7b, l, { ...o, stepTokens: 8192 }).ranks[0]!;
    expect(without.scratchBytes).toBe(0);
    expect(withSteps.totalBytes - without.totalBytes).toBe(8192 * 139_776);
  });
});

describe('step metadata codec', () => {
  it('round-trips sequences, sampling parameters and 64-bit seeds', () => {
    const seqs = [
      { tokens: Int32Array.from([1, 2, 3]), pos: 0, blockTable: Int32Array.from([7]), sample: false, topK: 0, temperature: 0, topP: 1, seed: 0n },
      { tokens: Int32Array.from([9]), pos: 41, blockTable: Int32Array.from([3, 4, 5]), sample: true, topK: 40, temperature: Math.fround(0.7),
        topP: Math.fround(0.9), seed: (1n << 64n) - 3n },
    ];
    expect(decodeStep(encodeStep({ step: 12, seqs }))).toEqual({ step: 12, seqs });
    const bad = encodeStep({ step: 1, seqs });
    bad[0] ^= 1;
    expect(() => decodeStep(bad)).toThrow(/bad magic/);
  });

  it('round-trips the sampling extras; a corrupt extras count is an error before anything is read for it', () => {
    const seq = { tokens: Int32Array.from([5]), pos: 3, blockTable: Int32Array.from([2]), sample: true, topK: 0, temperature: 1, topP: 1, seed: 9n,
      sampling: { minP: Math.fround(0.1), repetitionPenalty: Math.fround(1.2), presencePenalty: 0, frequencyPenalty: Math.fround(0.5), promptLen: 1, logprobs: 3,
        logitBiasIds: Int32Array.from([7]), logitBiasValues: Float32Array.from([-2]) } };
    expect(decodeStep(encodeStep({ step: 4, seqs: [seq] }))).toEqual({ step: 4, seqs: [seq] });
    // The first sequence's extras-word count sits after the header (3 words) and its 44 bytes of fixed fields.
    const at = 12 + 44;
    for (const [words, error] of [[0x7fffffff, /does not fit/], [-1, /negative count/], [3, /fewer than 7/]] as const) {
      const bad = encodeStep({ step: 4, seqs: [seq] });
      new DataView(bad.buffer, bad.byteOffset).setInt32(at, words, true);
      expect(() => decodeStep(bad)).toThrow(error);
    }
    // Its window-table count (-1: none) is the fifth word; a huge or negative one is refused the same way.
    for (const [count, error] of [[0x7fffffff, /does not fit/], [-2, /negative count/]] as const) {
      const bad = encodeStep({ step: 4, seqs: [seq] });
      new DataView(bad.buffer, bad.byteOffset).setInt32(12 + 16, count, true);
      expect(() => decodeStep(bad)).toThrow(error);
    }
  });
});

describe('continuous-batching scheduler', () => {
  const tok: TokenizerLike = { encode: () => [], decode: (ids) => ids.map((i) => String.fromCharCode(97 + (i % 26))).join(''), eosTokenIds: [1] };
  const sub = (id: string, n: number, maxTokens: number): Submit => ({ epoch: '1', requestId: id, promptIds: Array.from({ length: n }, (_, i) => 2 + i),
    params: samplingToWire(validateSampling({ seed: 0, maxTokens })), generatedIds: [], priority: 0, classRank: 0 });
  const { FINISH_REASON_STOP: STOP, FINISH_REASON_LENGTH: LENGTH, FINISH_REASON_UNSPECIFIED: NONE } = FinishReason;

  it('admits by free KV blocks, chunks long prefills, mixes prefill and decode in one step, frees on finish and cancel', () => {
    // 8 blocks of 4 tokens; each request reserves prompt + max tokens up front.
    const s = new Scheduler(8, 4, tok, 10, 100, 512);
    expect(s.submit(sub('a', 6, 2))).toBeNull();   // 2 blocks
    expect(s.submit(sub('b', 12, 4))).toBeNull();  // 4 blocks
    expect(s.submit(sub('c', 4, 4))).toBeNull();   // 2 blocks: fits exactly
    expect(s.submit(sub('d', 4, 4))).toBeNull();   // must wait for blocks
    expect(s.submit(sub('huge', 40, 1))?.error).toMatch(/needs 11 KV blocks, the replica's cache has 8/);
    let step = s.next(1)!;
    // Token budget 10: a's 6-token prompt whole, then a 4-token chunk of b; c waits for budget.
    expect(step.members.map((m) => [m.seq.id, m.n, m.sample])).toEqual([['a', 6, true], ['b', 4, false]]);
    expect(s.load()).toMatchObject({ running: 3, queued: 1, kvBlocksFree: 0 });
    let ups = s.complete(step, Int32Array.from([5]));
    expect(ups).toEqual([{ requestId: 'a', tokenIds: [5], text: 'f', index: 0, finishReason: NONE, error: '', preempted: false, logprobs: [] }]);
    step = s.next(1)!;
    // a decodes (1 token) in the same step as b's next prefill chunk and c's prompt.
    expect(step.members.map((m) => [m.seq.id, m.n, m.sample])).toEqual([['a', 1, true], ['b', 8, true], ['c', 1, false]]);
    ups = s.complete(step, Int32Array.from([6, 7]));
    expect(ups.map((u) => [u.requestId, u.finishReason])).toEqual([['a', LENGTH], ['b', NONE]]); // a hit max tokens
    expect(s.load().kvBlocksFree).toBe(2);
    step = s.next(1)!; // d admitted into a's freed blocks
    expect(step.members.map((m) => m.seq.id)).toEqual(['b', 'c', 'd']);
    s.cancel('b'); // in flight: freed when the step completes
    ups = s.complete(step, Int32Array.from([4, 1, 9]));
    // b's token is dropped (cancelled), c sampled EOS, d got its first token.
    expect(ups.map((u) => [u.requestId, u.finishReason, u.tokenIds])).toEqual([['c', STOP, []], ['d', NONE, [9]]]);
    expect(s.load()).toMatchObject({ running: 1, kvBlocksFree: 6 });
    expect(s.maxStepBatch).toBe(3);
  });

  it('splits the running set across pipeline micro-batches', () => {
    const s = new Scheduler(64, 16, tok, 256, 100, 512);
    for (let i = 0; i < 6; i++) s.submit(sub(`r${i}`, 3, 8));
    const a = s.next(2)!;
    const b = s.next(2)!;
    expect(a.members.length).toBe(3);
    expect(b.members.length).toBe(3);
    expect(s.next(2)).toBeNull(); // everything in flight
    expect(new Set([...a.members, ...b.members].map((m) => m.seq.id)).size).toBe(6);
  });
});

describe('nodespeed launch --dry-run', () => {
  it('prints the layout and the per-rank estimate, and refuses a layout that does not fit', () => {
    const ok = spawnSync(process.execPath, [BIN, 'launch', '--model', PY_TINY, '--num_cpu_workers', '4', '--tp', '2', '--pp', '2', '--dry-run'],
      { encoding: 'utf8', cwd: root });
    expect(ok.status, ok.stderr).toBe(0);
    expect(ok.stdout).toContain('world 4 = 1 replica(s) x pp 2 x tp 2');
    expect(ok.stdout).toMatch(/stage 0 layers 0-2: rank 0 \(tp 0\) @localhost, rank 1 \(tp 1\) @localhost \| stage 1 layers 3-5/);
    expect(ok.stdout.match(/^ {2}rank \d @localhost .* step scratch \d+\.\d+ GiB, total \d+\.\d+ GiB$/gm)).toHaveLength(4);
    expect(ok.stdout).toContain("one step's scratch at 256 tokens");
    const tooBig = spawnSync(process.execPath, [BIN, 'launch', '--model', PY_TINY, '--num_cpu_workers', '2', '--kv-blocks', '100000000', '--dry-run'],
      { encoding: 'utf8', cwd: root });
    expect(tooBig.status).toBe(1);
    expect(tooBig.stderr).toMatch(/the layout does not fit:\n {2}the ranks on localhost need ~\d+\.\d GiB together/);
    const badTp = spawnSync(process.execPath, [BIN, 'launch', '--model', PY_TINY, '--num_cpu_workers', '3', '--tp', '3', '--dry-run'],
      { encoding: 'utf8', cwd: root });
    expect(badTp.status).not.toBe(0);
    expect(badTp.stderr).toContain('--tp 3 does not divide the model\'s 8 attention heads');
  });
});
