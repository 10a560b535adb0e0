// The bars of test/gpu/families-quant.mjs that compare our quantized logits with PyTorch's where both
// carry rounding noise of the same size (pure functions of per-position cosines and losses, tested on the
// CPU by test/quant/quant-criteria.test.ts).
//
// One prompt's quantized logits are one draw of rounding noise: W8A8 activations are re-rounded at
// every linear, the fp8 KV cache rounds every stored element, and an input that moves by a bf16
// rounding moves a fraction of those roundings by a whole E4M3 step. Two equally valid computations
// then differ at a prompt as much as either differs from float, and "1 - the lowest cosine over a
// prompt's positions" of one draw against another's varies by a factor of ~2 (PyTorch's own fp8 KV
// cache at scale 1 against the same cache at the calibrated per-layer scale: 0.37x..11.4x per prompt,
// geometric mean 1.02, log-sd 0.61 over 11 families x 4 prompts on an H100). Hence:
//   - the fp8 KV cache: what it costs us against what it costs PyTorch, as the geometric mean of the
//     per-prompt ratio over every family's prompts (<= KV_FACTOR) and over one family's (<=
//     KV_FAMILY_FACTOR: the most PyTorch's two caches differ on one family is 1.67x);
//   - close to PyTorch's fp8: cosine >= 0.99 at every position (MoE: see `closeness`), or, at a prompt
//     where PyTorch's own two fp8 computations (activations quantized from bf16 and from f32 values)
//     are not that close to each other, no further from PyTorch's than SPREAD_FACTOR x their distance;
//     an MoE's floor of 0.95 at every position is left to its count of positions below 0.99 where
//     PyTorch's own quantization jumps below 0.95 at the prompt (an expert flip on these random
//     routers moves a position to cosine ~0.82..0.90: mixtral's fp8 in PyTorch and ours alike).

export const KV_FACTOR = 1.1;
export const KV_FAMILY_FACTOR = 2;
export const SPREAD_FACTOR = 2;

/**
 * Whether per-position cosines are close: >= 0.99 at every position; for a mixture of experts at 90%
 * of them and >= 0.95 at all (its float router's input moves with the quantized layers, so a token at
 * a top-k near-tie may take another expert: an isolated jump).
 */
export function closeness(moe, cos) {
  const n = cos.length, low = cos.filter((c) => c < 0.99).length, min = Math.min(...cos);
  return { ok: moe ? low <= 0.1 * n && min >= 0.95 : low === 0, min, below099: low, of: n };
}

/**
 * Closeness to PyTorch's quantization, with PyTorch's own spread at the prompt (`spreadCos`: the
 * cosines between its two equally valid computations; null when not run): where the spread itself is
 * not close, ours passes when its loss is at most SPREAD_FACTOR x the spread's (and, MoE, its count of
 * positions below 0.99 at most the spread's plus 10% of the positions). MoE: where PyTorch's quantized
 * logits themselves jump below 0.95 against its float ones at the prompt (`referenceMin`), an expert
 * flip moves a position that far on this model, and the 0.95 floor is left to the count of positions.
 */
export function closeToReference(moe, cos, spreadCos, referenceMin = 1) {
  const own = closeness(moe, cos);
  if (own.ok) return { ...own, byBar: true };
  if (moe && own.below099 <= 0.1 * own.of && referenceMin < 0.95) return { ...own, ok: true, byBar: false, referenceMin };
  if (!spreadCos) return { ...own, byBar: false };
  const spread = closeness(moe, spreadCos);
  const loss = 1 - own.min, spreadLoss = 1 - spread.min;
  const withinSpread = !spread.ok && loss <= SPREAD_FACTOR * spreadLoss &&
    (!moe || own.below099 <= spread.below099 + Math.ceil(0.1 * own.of));
  return { ...own, ok: withinSpread, byBar: false, spread: { min: spread.min, below099: spread.below099, ok: spread.ok }, spreadFactor: SPREAD_FACTOR };
}

/** The fp8 KV cache's loss at a prompt: 1 - the lowest cosine; MoE: at the 90th percentile of positions. */
export function kvLoss(moe, cos) {
  const loss = cos.map((c) => 1 - c).sort((a, b) => a - b);
  return moe ? loss[Math.floor(0.9 * (loss.length - 1))] : loss.at(-1);
}

const gmean = (xs) => Math.exp(xs.reduce((a, x) => a + Math.log(x), 0) / xs.length);
const TINY = 1e-9;  // a loss of 0 (identical logits) counts as this

/**
 * The fp8 KV cache against PyTorch's, over `records` ({ family, prompt, loss, referenceLoss }, one per
 * (family, prompt) of one precision): { ok, ratio (geometric mean of loss / referenceLoss), families:
 * { family: { ok, ratio } } }.
 */
export function kvVerdict(records) {
  const ratio = (r) => Math.max(r.loss, TINY) / Math.max(r.referenceLoss, TINY);
  const families = {};
  for (const f of new Set(records.map((r) => r.family))) {
    const g = gmean(records.filter((r) => r.family === f).map(ratio));
    families[f] = { ok: g <= KV_FAMILY_FACTOR, ratio: g };
  }
  const all = records.length ? gmean(records.map(ratio)) : NaN;
  return { ok: records.length > 0 && all <= KV_FACTOR && Object.values(families).every((f) => f.ok), ratio: all, factor: KV_FACTOR,
    familyFactor: KV_FAMILY_FACTOR, prompts: records.length, families };
}
