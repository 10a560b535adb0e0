// The sampling algorithm of docs/ENGINE.md in plain JS and float64, to check the GPU's draws:
// logits / T, top-k, softmax, top-p (smallest prefix of the sorted distribution with mass >= p),
// one uniform draw walking the sorted distribution. Sorted by logit descending, id ascending.

// ns::sampling_uniform of engine.h (splitmix64 over seed + golden-ratio step * (position + 1)).
export function samplingUniform(seed, position) {
  const M = (1n << 64n) - 1n;
  let z = (BigInt(seed) + 0x9E3779B97F4A7C15n * (BigInt(position) + 1n)) & M;
  z = ((z ^ (z >> 30n)) * 0xBF58476D1CE4E5B9n) & M;
  z = ((z ^ (z >> 27n)) * 0x94D049BB133111EBn) & M;
  z ^= z >> 31n;
  return Math.fround(Number(z >> 40n) * (1 / 16777216));
}

export function referenceSample(logits, { temperature, topK = 0, topP = 1 }, u) {
  const V = logits.length;
  const order = Array.from({ length: V }, (_, i) => i).sort((a, b) => logits[b] - logits[a] || a - b);
  let keep = topK > 0 && topK < V ? topK : V;
  const z = order.slice(0, keep).map((i) => logits[i] / temperature);
  const m = z[0];
  const e = z.map((v) => Math.exp(v - m));
  const total = e.reduce((a, b) => a + b, 0);
  if (topP < 1) {
    let c = 0, n = 0;
    while (n < keep) { c += e[n++]; if (c >= topP * total) break; }
    keep = n;
  }
  let kept = 0;
  for (let i = 0; i < keep; i++) kept += e[i];
  const r = u * kept;
  let c = 0;
  for (let i = 0; i < keep; i++) { c += e[i]; if (c > r) return order[i]; }
  return order[keep - 1];
}
