#!/usr/bin/env node
// What one non-streamed /v1/completions answer with logprobs costs the coordinator's event loop
// (the loop that serves every other stream). Before: each token and top alternative decoded on the
// loop and the answer built and serialized in one go. Now: looked up in the token texts a tokenizer
// thread built once (model/tokenizer-pool.ts TokenTexts) and rendered a slice of tokens at a time
// (http/openai.ts completionLogprobsJson), the loop free between slices: the longest slice is the
// longest the loop is held. Also the time the thread takes to build the texts, and the loop's
// longest pause meanwhile. The two answers are checked equal byte for byte. Runs on py-tiny's
// tokenizer and on one with a 128k vocabulary (py-tiny's, its vocabulary grown with random
// byte-level entries: decoding one id costs what it costs with Llama 3's). No GPU needed.
// Writes bench/results/logprob-texts-<host>-<timestamp>.json.
//
//   npm run build && node bench/serve/logprob-texts.mjs [--choices 16] [--tokens 2048] [--top 20]
import { mkdtempSync, readFileSync, writeFileSync, copyFileSync, rmSync, mkdirSync } from 'node:fs';
import { cpus, hostname, loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { execSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const { values: a } = parseArgs({ options: {
  choices: { type: 'string', default: '16' }, tokens: { type: 'string', default: '2048' }, top: { type: 'string', default: '20' },
} });
const [C, T, K] = [Number(a.choices), Number(a.tokens), Number(a.top)];

const { loadTokenizer } = await import(join(root, 'dist', 'model', 'tokenizer.js'));
const { TokenizerPool } = await import(join(root, 'dist', 'model', 'tokenizer-pool.js'));
const { completionLogprobs, completionLogprobsJson, nextTurn } = await import(join(root, 'dist', 'coordinator', 'http', 'openai.js'));

/** mulberry32: a seeded generator in [0, 1). */
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** py-tiny's tokenizer with `size` vocabulary entries (random strings of 1-8 byte-level symbols). */
function grownTokenizer(size) {
  const dir = mkdtempSync(join(tmpdir(), 'nodespeed-vocab-'));
  const src = join(root, 'models', 'py-tiny');
  const t = JSON.parse(readFileSync(join(src, 'tokenizer.json'), 'utf8'));
  const symbols = [...new Set(Object.keys(t.model.vocab).filter((k) => [...k].length === 1))];
  const rand = rng(1);
  let id = Math.max(...Object.values(t.model.vocab), ...t.added_tokens.map((x) => x.id)) + 1;
  while (id < size) {
    const w = Array.from({ length: 1 + Math.floor(rand() * 8) }, () => symbols[Math.floor(rand() * symbols.length)]).join('');
    if (!(w in t.model.vocab)) t.model.vocab[w] = id++;
  }
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(t));
  for (const f of ['tokenizer_config.json', 'generation_config.json']) {
    try { copyFileSync(join(src, f), join(dir, f)); } catch {}
  }
  return dir;
}

/** A choice's sampled tokens and top-K alternatives, as the sampler reports them. */
function answer(vocab) {
  const rand = rng(7);
  return Array.from({ length: C }, () => Array.from({ length: T }, () => {
    const id = Math.floor(rand() * vocab);
    return { id, logprob: -rand(), top: Array.from({ length: K }, () => ({ id: Math.floor(rand() * vocab), logprob: -rand() * 5 })) };
  }));
}

async function measure(dir, label) {
  const tok = await loadTokenizer(dir);
  const vocab = tok.vocabSize;
  const choices = answer(vocab);
  // Before: every token string decoded on the loop, the answer built and serialized in one go.
  let t0 = performance.now();
  const before = JSON.stringify(choices.map((lps) => completionLogprobs(lps, (id) => tok.decode([id]), 0)));
  const beforeMs = performance.now() - t0;
  // Now: the token texts, built once on a tokenizer thread (the loop's longest pause meanwhile)...
  const pool = await TokenizerPool.start(dir, 1);
  let gap = 0, last = performance.now();
  const timer = setInterval(() => { const now = performance.now(); gap = Math.max(gap, now - last); last = now; }, 1);
  t0 = performance.now();
  const texts = await pool.tokenTexts(vocab);
  const buildMs = performance.now() - t0;
  clearInterval(timer);
  await pool.close();
  // ...and the answer rendered a slice at a time, the loop free between slices: its longest slice.
  let longest = 0, resumed = performance.now();
  const between = async () => {
    longest = Math.max(longest, performance.now() - resumed);
    await nextTurn();
    resumed = performance.now();
  };
  t0 = performance.now();
  const parts = [];
  for (const lps of choices) {
    parts.push(await completionLogprobsJson(lps, (id) => texts.text(id), 0, between));
    await between();
  }
  const after = `[${parts.join(',')}]`;
  const afterMs = performance.now() - t0;
  if (after !== before) throw new Error(`${label}: the sliced answer differs from the one built at once`);
  const r = { tokenizer: label, vocab, choices: C, tokens: T, top: K, tokenStrings: C * T * (K + 1), jsonBytes: after.length,
    beforeOnLoopMs: +beforeMs.toFixed(1), nowTotalMs: +afterMs.toFixed(1), nowLongestSliceMs: +longest.toFixed(1),
    textsBuildOnThreadMs: +buildMs.toFixed(1), loopLongestGapWhileBuildingMs: +gap.toFixed(1) };
  console.log(JSON.stringify(r));
  return r;
}

const big = grownTokenizer(128_256);
const runs = [];
try {
  runs.push(await measure(join(root, 'models', 'py-tiny'), 'py-tiny'));
  runs.push(await measure(big, 'py-tiny grown to 128,256 entries'));
} finally {
  rmSync(big, { recursive: true, force: true });
}
const commit = execSync('git rev-parse --short HEAD', { cwd: root }).toString().trim();
const out = join(root, 'bench', 'results', `logprob-texts-${hostname()}-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, JSON.stringify({ machine: `${cpus()[0]?.model} x${cpus().length}`, loadavg: loadavg(), node: process.version, commit, runs }, null, 2) + '\n');
console.log(`wrote ${out}`);
