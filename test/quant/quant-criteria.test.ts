// The bars test/gpu/families-quant.mjs holds our quantized logits to against PyTorch's
// (test/gpu/quant-criteria.mjs), on the losses an H100 measured (main 7960030 + decode-b1, every family
// fixture; gemma2 left out: its reference then ran without attention soft-capping) and on made-up
// systematic losses they must catch.
import { describe, expect, it } from 'vitest';

import { closeToReference, kvLoss, kvVerdict } from '../gpu/quant-criteria.mjs';

// [our fp8 KV cache's loss, PyTorch's same cache's loss] per prompt (4 prompts a family).
const H100: Record<string, Record<string, number[][]>> = {
  'bf16+kv-fp8': {
    qwen3: [[0.002651, 0.002658], [0.002418, 0.001636], [0.003597, 0.003232], [0.003597, 0.003232]],
    gemma3_text: [[0.001381, 0.001135], [0.002405, 0.001412], [0.003004, 0.004778], [0.003004, 0.004778]],
    phi3: [[0.001649, 0.001047], [0.002348, 0.001675], [0.002399, 0.001654], [0.003752, 0.00209]],
    llama_bias_yarn: [[0.0007786, 0.0007253], [0.0007786, 0.0007253], [0.001393, 0.0007939], [0.001393, 0.0007939]],
    llama_dynamic: [[0.002285, 0.002126], [0.0018, 0.001659], [0.001233, 0.001891], [0.001233, 0.001959]],
    mistral: [[0.001122, 0.0008603], [0.001571, 0.001146], [0.003415, 0.002646], [0.003415, 0.002646]],
    qwen2_swa: [[0.0006555, 0.0006359], [0.0007639, 0.0008487], [0.0008934, 0.0009422], [0.0008934, 0.0009422]],
    mixtral: [[0.003771, 0.002016], [0.004509, 0.002473], [0.00187, 0.003605], [0.002196, 0.002965]],
    qwen3_moe: [[0.0005872, 0.0007884], [0.0006349, 0.0007052], [0.002916, 0.008534], [0.004077, 0.008662]],
    qwen2_moe: [[0.0005236, 0.0006174], [0.001177, 0.0003797], [0.0007715, 0.0007845], [0.0006749, 0.0005912]],
  },
  'fp8+kv-fp8': {
    qwen3: [[0.008734, 0.009754], [0.006786, 0.01509], [0.0106, 0.01199], [0.0106, 0.01556]],
    gemma3_text: [[0.006814, 0.009026], [0.01394, 0.02128], [0.01006, 0.01182], [0.0141, 0.01356]],
    phi3: [[0.003505, 0.003913], [0.005397, 0.004581], [0.006224, 0.006181], [0.00884, 0.0093]],
    llama_bias_yarn: [[0.001969, 0.002569], [0.001685, 0.00173], [0.003527, 0.003516], [0.003771, 0.005222]],
    llama_dynamic: [[0.004874, 0.007198], [0.007507, 0.007198], [0.006495, 0.007198], [0.008863, 0.007198]],
    mistral: [[0.003445, 0.004536], [0.007111, 0.007442], [0.01224, 0.009237], [0.01313, 0.01359]],
    qwen2_swa: [[0.002815, 0.003554], [0.00254, 0.002513], [0.003339, 0.003385], [0.006068, 0.004062]],
    mixtral: [[0.008408, 0.007537], [0.007805, 0.02925], [0.006399, 0.006279], [0.00831, 0.006279]],
    qwen3_moe: [[0.002066, 0.001822], [0.008465, 0.001678], [0.008382, 0.006552], [0.01076, 0.01113]],
    qwen2_moe: [[0.003298, 0.002962], [0.00344, 0.005577], [0.00296, 0.002328], [0.00246, 0.001836]],
  },
};

type Rec = { family: string; prompt: number; loss: number; referenceLoss: number };
const records = (precision: string, scale: (family: string) => number = () => 1): Rec[] =>
  Object.entries(H100[precision]).flatMap(([family, pairs]) =>
    pairs.map(([loss, referenceLoss], prompt) => ({ family, prompt, loss: loss * scale(family), referenceLoss })));

describe('fp8 KV cache against PyTorch (families-quant.mjs)', () => {
  it("the H100's measurements pass, where the per-prompt 1.1x rule failed a third of the prompts", () => {
    for (const precision of Object.keys(H100)) {
      const v = kvVerdict(records(precision));
      expect(v.ok, precision).toBe(true);
      expect(v.ratio).toBeGreaterThan(0.85);
      expect(v.ratio).toBeLessThan(1.1);
    }
    const perPrompt = Object.keys(H100).flatMap((p) => records(p)).filter((r) => r.loss > 1.1 * r.referenceLoss).length;
    expect(perPrompt).toBeGreaterThanOrEqual(25);  // of 80: one rounding draw against another
  });

  it('a cache that loses 1.3x more everywhere fails (e.g. rounding toward zero: ~4x)', () => {
    for (const precision of Object.keys(H100)) {
      expect(kvVerdict(records(precision, () => 1.3)).ok).toBe(false);
      expect(kvVerdict(records(precision, () => 4)).ok).toBe(false);
    }
  });

  it('one family losing 3x more fails its own bar', () => {
    const v = kvVerdict(records('bf16+kv-fp8', (f) => (f === 'mistral' ? 3 : 1)));
    expect(v.families.mistral.ok).toBe(false);
    expect(v.families.qwen3.ok).toBe(true);
    expect(v.ok).toBe(false);
  });

  it("the loss is the worst position's, an MoE's at the 90th percentile", () => {
    const cos = [1, 0.999, 0.998, 0.997, 0.996, 0.995, 0.994, 0.993, 0.992, 0.9];
    expect(kvLoss(false, cos)).toBeCloseTo(0.1, 12);
    expect(kvLoss(true, cos)).toBeCloseTo(0.008, 12);
  });
});

describe('close to PyTorch fp8 with its own spread (families-quant.mjs)', () => {
  const at = (n: number, worst: number) => [...Array(n - 1).fill(0.999), worst];
  it('cosine >= 0.99 at every position passes, whatever the spread', () => {
    expect(closeToReference(false, at(10, 0.991), null).ok).toBe(true);
    expect(closeToReference(false, at(10, 0.991), at(10, 0.999)).byBar).toBe(true);
  });
  it('below 0.99 fails where PyTorch is close to itself, or without its second computation', () => {
    expect(closeToReference(false, at(10, 0.988), at(10, 0.995)).ok).toBe(false);
    expect(closeToReference(false, at(10, 0.988), null).ok).toBe(false);
  });
  it('where PyTorch is 0.988 from itself, ours passes within 2x that loss and fails beyond', () => {
    expect(closeToReference(false, at(10, 0.977), at(10, 0.988)).ok).toBe(true);
    expect(closeToReference(false, at(10, 0.97), at(10, 0.988)).ok).toBe(false);
  });
  it("an MoE's 0.95 floor gives way to the count of jumps only where PyTorch's own quantization jumps that far", () => {
    const ours = [...Array(62).fill(0.999), 0.82, 0.97, 0.98, 0.985];  // 4 of 66 below 0.99, one at 0.82
    expect(closeToReference(true, ours, null).ok).toBe(false);
    expect(closeToReference(true, ours, null, 0.97).ok).toBe(false);
    expect(closeToReference(true, ours, null, 0.896).ok).toBe(true);
    const many = [...Array(55).fill(0.999), ...Array(11).fill(0.9)];  // 11 of 66: more than 10%
    expect(closeToReference(true, many, null, 0.896).ok).toBe(false);
  });
  it('an MoE: jumps at most the spread\'s count plus 10% of the positions', () => {
    const spread = [...Array(60).fill(0.999), 0.9, 0.9, 0.95, 0.95, 0.98, 0.98];
    const ours = (k: number) => [...Array(66 - k).fill(0.999), ...Array(k).fill(0.85)];
    expect(closeToReference(true, ours(6), spread).ok).toBe(true);
    expect(closeToReference(true, ours(14), spread).ok).toBe(false);
  });
});
