// The model families on CUDA against their Hugging Face fixtures (test/fixtures/hf-reference/<family>/,
// made by make_families.py): bf16 compute, last-position logits cosine >= 0.999 and top-1 equal
// to HF's for every prompt, greedy tokens equal to HF's for at least the first 8 of greedy_24
// (bf16 rounding may break a later near-tie, as for the Llama fixtures), and the same checks on the
// CPU backend in f32 in the same run (which must match all 24 and within 2e-3: the reference the
// GPU is held against).
// usage: node test/gpu/families.mjs [family ...]   (prints JSON, exits 1 on failure; writes gpu-families.json)
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { argmax, blockTables, cosine, greedy, openCudaEngine, requireCuda, root, writeResult } from './lib.mjs';

requireCuda();
const ALL = ['qwen3', 'gemma2', 'gemma3_text', 'phi3', 'llama_bias_yarn', 'llama_dynamic', 'mistral', 'qwen2_swa', 'mixtral', 'qwen3_moe', 'qwen2_moe'];
const families = process.argv.slice(2).length ? process.argv.slice(2) : ALL;
const results = [];
let ok = true;

function maxAbs(a, b) {
  let m = 0;
  for (let i = 0; i < b.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

for (const family of families) {
  const dir = join(root, 'test', 'fixtures', 'hf-reference', family);
  if (!existsSync(join(dir, 'reference.json'))) {
    results.push({ family, skipped: 'no fixture folder (run make_families.py first)' });
    ok = false;
    continue;
  }
  const ref = JSON.parse(readFileSync(join(dir, 'reference.json'), 'utf8'));
  for (const [device, dtype] of [['cuda', 'bf16'], ['cpu', 'f32']]) {
    let engine;
    try {
      ({ engine } = await openCudaEngine(dir, { device, dtype, kvBlocks: 64 }));
    } catch (e) {
      results.push({ family, device, error: e.message });
      ok = false;
      continue;
    }
    const cases = [];
    for (const [i, c] of ref.cases.entries()) {
      const [bt] = blockTables(1, 128, 16, 64);
      const { tokens, lastLogits } = await greedy(engine, c.ids, c.greedy_24.length, bt);
      let match = 0;
      while (match < tokens.length && tokens[match] === c.greedy_24[match]) match++;
      const cos = cosine(lastLogits, c.last_logits);
      const top1 = argmax(lastLogits) === c.last_logits_top8[0];
      const diff = maxAbs(lastLogits, c.last_logits);
      const pass = device === 'cuda' ? cos >= 0.999 && top1 && match >= 8 : diff < 2e-3 && match === c.greedy_24.length;
      ok &&= pass;
      cases.push({ prompt: i, ids: c.ids.length, cosine: cos, maxAbsDiff: diff, top1, greedyMatch: match, pass });
    }
    results.push({ family, device, compute: dtype, describe: engine.describe(), cases });
    engine.dispose();
  }
}

const out = { ok, results };
writeResult('gpu-families.json', out);
console.log(JSON.stringify(out, null, 1));
process.exit(ok ? 0 : 1);
