#!/usr/bin/env node
// Streaming detokenization, the replica driver's work for every sampled token: 128 sequences'
// IncrementalDecoders fed random ids round-robin (--tokens in all), decoding through nodespeed's
// Tokenizer (the byte-level decoder for byte-level BPE tokenizers, src/model/byte-level-decode.ts)
// and through @huggingface/tokenizers' own decode (the peer: what the Tokenizer called before), side
// by side in one process, runs interleaved; checks that both stream the same text (every
// sequence's, character for character, flushed at the end), reports us a
// token (best of --runs) and the ratio. Ids are uniform over the vocabulary, a third of them taken
// from the single-character tokens (high bytes split characters over tokens, as byte-level models
// sample them), so both decoders take their slow paths too.
//   npm run build && node bench/detok/run.mjs [--model DIR]... [--tokens N] [--runs N] [--out FILE]
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { execSync } from 'node:child_process';
import { cpus, hostname } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const { values: a } = parseArgs({ options: {
  model: { type: 'string', multiple: true, default: [join(root, 'models', 'py-tiny'), join(root, 'test', 'fixtures', 'chat-templates', 'expected', 'tokenizers', 'llama-3-instruct')] },
  tokens: { type: 'string', default: '400000' }, runs: { type: 'string', default: '5' }, out: { type: 'string' },
} });
const { Tokenizer, IncrementalDecoder } = await import(join(root, 'dist', 'model', 'tokenizer.js'));
const N = Number(a.tokens), RUNS = Number(a.runs), SEQS = 128;
const readJson = (f) => { try { return JSON.parse(readFileSync(f, 'utf8')); } catch { return {}; } };

/** Streams ids through the decoders; the time a token and every sequence's text. */
function stream(decoders, ids) {
  const texts = decoders.map(() => []);
  const t0 = performance.now();
  for (let i = 0; i < ids.length; i++) texts[i % SEQS].push(decoders[i % SEQS].push(ids[i]));
  const us = ((performance.now() - t0) * 1000) / ids.length;
  return { us, text: texts.map((t, k) => t.join('') + decoders[k].flush()).join('\u0000') };
}

const results = [];
for (const dir of a.model) {
  const ours = Tokenizer.load(dir);
  const hf = new HfTokenizer(readJson(join(dir, 'tokenizer.json')), readJson(join(dir, 'tokenizer_config.json')));
  const vocab = hf.get_vocab(true);
  const idEnd = Math.max(...vocab.values()) + 1;
  const single = [...vocab].filter(([t]) => [...t].length === 1).map(([, id]) => id);
  let s = 1;
  const r = () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32;
  const ids = Array.from({ length: N }, () => (r() < 1 / 3 ? single[Math.floor(r() * single.length)] : Math.floor(r() * idEnd)));
  const best = { nodespeed: Infinity, library: Infinity };
  let text = null;
  for (let run = 0; run < RUNS; run++) {
    for (const who of run % 2 ? ['library', 'nodespeed'] : ['nodespeed', 'library']) {
      const make = who === 'nodespeed' ? () => ours.incrementalDecoder() : () => new IncrementalDecoder((w) => (w.length ? hf.decode(w) : ''));
      const got = stream(Array.from({ length: SEQS }, make), ids);
      if (text !== null && got.text !== text) throw new Error(`bench/detok: ${dir}: ${who} streamed other text than the other decoder`);
      text = got.text;
      best[who] = Math.min(best[who], got.us);
    }
  }
  const row = { model: dir.replace(root + '/', ''), vocab: idEnd, tokens: N, streamed_chars: text.length - (SEQS - 1),
    nodespeed_us_per_token: Math.round(best.nodespeed * 1000) / 1000, library_us_per_token: Math.round(best.library * 1000) / 1000,
    speedup: Math.round((best.library / best.nodespeed) * 100) / 100 };
  results.push(row);
  console.log(`${row.model}: nodespeed ${row.nodespeed_us_per_token} us/token, library ${row.library_us_per_token} us/token (${row.speedup}x), the same ${row.streamed_chars} characters`);
}
let commit = 'unknown';
try { commit = execSync('git rev-parse HEAD', { cwd: root }).toString().trim(); } catch { /* not a checkout */ }
const out = { bench: 'detok', date: new Date().toISOString(), commit, machine: `${hostname()}: ${cpus().length} x ${cpus()[0]?.model}`,
  command: `node bench/detok/run.mjs ${process.argv.slice(2).join(' ')}`.trim(), results };
const file = a.out ?? join(root, 'bench', 'results', `detok-vm-${out.date.replace(/[:.]/g, '-')}.json`);
mkdirSync(dirname(file), { recursive: true });
writeFileSync(file, JSON.stringify(out, null, 2) + '\n');
console.log(`wrote ${file}`);
