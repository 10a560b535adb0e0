// Inputs of check.py (run where transformers is installed, e.g. the GPU machine): `model init`
// checkpoints, our tokenizers' ids and our CPU engine's last-position logits. Usage (after npx tsc):
//   node test/model/hf-compat/make.mjs DIR && cp test/model/hf-compat/check.py DIR && python3 DIR/check.py
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { initModel, loadTokenizer, PRESETS, parseModelConfig, parameterCount } from '../../../dist/model/index.js';
import { llamaConfigJson } from '../../../dist/model/init.js';
import { byteLevelBpe } from '../../../dist/model/init-tokenizer.js';
import { Engine, BlockAllocator } from '../../../dist/engine/index.js';
const root = process.argv[2] ?? '.model-check';
mkdirSync(root, { recursive: true });
const prompts = ['The license', 'def main():\n    return', 'héllo wörld ✓ 日本 🎉', 'Hello  world\n\n  x = 1', 'a<|eos|>b <s> c'];
await initModel({ arch: 'llama', preset: 'tiny', dtype: 'bf16', seed: 5n, out: join(root, 'tiny') });
for (const [name, vocab] of [['syn512', 512], ['syn32000', 32000]]) {
  const d = join(root, name); mkdirSync(d);
  const t = byteLevelBpe(vocab, 256);
  writeFileSync(join(d, 'tokenizer.json'), JSON.stringify(t.tokenizerJson));
  writeFileSync(join(d, 'tokenizer_config.json'), JSON.stringify(t.tokenizerConfig));
}
const out = { tokenizers: {}, logits: [], presets: {} };
for (const name of ['tiny', 'syn512', 'syn32000']) {
  const tok = await loadTokenizer(join(root, name));
  out.tokenizers[name] = prompts.map((p) => ({ text: p, ids: tok.encode(p), decoded: tok.decode(tok.encode(p), { skipSpecialTokens: true }) }));
}
const engine = await Engine.load(join(root, 'tiny'), { device: 'cpu' });
const alloc = new BlockAllocator(engine.kvBlocks, engine.kvBlockSize);
for (const [i, c] of out.tokenizers.tiny.entries()) {
  const res = await engine.step({ seqs: [{ tokens: Int32Array.from(c.ids), pos: 0, blockTable: alloc.allocate(i, c.ids.length) }], wantLogits: true });
  out.logits.push({ ids: c.ids, last: [...res.logits] });
  alloc.free(i);
}
engine.dispose();
mkdirSync(join(root, 'presets'));
for (const p of ['100m', '1b', '7b', '13b', '70b']) {
  const cj = llamaConfigJson(PRESETS[p], 'bf16', 1, 2);
  writeFileSync(join(root, 'presets', `${p}.json`), JSON.stringify(cj));
  out.presets[p] = parameterCount(parseModelConfig(cj, 'x', '/nonexistent'));
}
writeFileSync(join(root, 'ours.json'), JSON.stringify(out));
console.log('ok');
