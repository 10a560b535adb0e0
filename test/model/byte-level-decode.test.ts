// The byte-level decoder (src/model/byte-level-decode.ts) against @huggingface/tokenizers' own
// decode, which it must equal for every id sequence: random windows over the whole vocabulary
// (added and special tokens, bytes that split characters, invalid UTF-8), with and without
// skip_special_tokens, on the fixtures' tokenizers and on variants that exercise each rule
// (non-special added tokens, additional_special_tokens, an added token spelled like a vocabulary
// entry, characters outside the byte alphabet, the clean-up on and off).
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { afterAll, describe, expect, it } from 'vitest';

import { ByteLevelDecoder } from '../../src/model/byte-level-decode.js';
import { IncrementalDecoder, loadTokenizer } from '../../src/model/tokenizer.js';
import { tmpDir, removeTmpDirs } from './helpers.js';

afterAll(removeTmpDirs);

const FIXTURES = join(import.meta.dirname, '..', 'fixtures');
const TEMPLATE_TOKENIZERS = join(FIXTURES, 'chat-templates', 'expected', 'tokenizers');
const readJson = (f: string) => JSON.parse(readFileSync(f, 'utf8')) as Record<string, any>;

/** A model folder's tokenizer.json and tokenizer_config.json ({} when it has none). */
function folder(dir: string): { json: Record<string, any>; config: Record<string, any> } {
  let config = {};
  try {
    config = readJson(join(dir, 'tokenizer_config.json'));
  } catch { /* none */ }
  return { json: readJson(join(dir, 'tokenizer.json')), config };
}

/** A variant of py-tiny's tokenizer with every kind of entry the decoder treats apart. */
function variant(cleanUp: boolean | undefined): { json: Record<string, any>; config: Record<string, any> } {
  const { json, config } = folder(join(import.meta.dirname, '..', '..', 'models', 'py-tiny'));
  const vocab = json.model.vocab as Record<string, number>;
  let next = Math.max(...Object.values(vocab), ...json.added_tokens.map((t: any) => t.id)) + 1;
  // Vocabulary strings outside the byte alphabet (a 0 byte each in the library), and one of two characters.
  for (const s of ['€', 'x😀y', 'ĠĊ€']) vocab[s] = next++;
  const someVocab = Object.keys(vocab).find((k) => k.length > 2 && k.startsWith('Ġ'))!;
  const add = (content: string, special: boolean) =>
    json.added_tokens.push({ id: next++, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special });
  add('<|tool|>', true);
  add('<plain>', false);
  add(' .', false);  // an added token the clean-up rewrites
  add('<extra>', false);  // named by additional_special_tokens below
  add(someVocab, false);  // spelled like a vocabulary token: that token decodes as added text too
  const out: Record<string, any> = { ...config, additional_special_tokens: ['<extra>', 'Ġ', { content: 'obj' }] };
  if (cleanUp === undefined) delete out.clean_up_tokenization_spaces;
  else out.clean_up_tokenization_spaces = cleanUp;
  return { json, config: out };
}

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32;
}

/** Random id windows: mostly uniform ids, some byte tokens (characters split over tokens), some added ones. */
function windows(n: number, idEnd: number, addedIds: number[], byteIds: number[], seed: number): number[][] {
  const r = lcg(seed);
  const pick = (xs: number[]) => xs[Math.floor(r() * xs.length)]!;
  return Array.from({ length: n }, () => Array.from({ length: 1 + Math.floor(r() * 12) }, () => {
    const u = r();
    return u < 0.15 && addedIds.length ? pick(addedIds) : u < 0.45 ? pick(byteIds) : Math.floor(r() * idEnd);
  }));
}

function cases(): [string, { json: Record<string, any>; config: Record<string, any> }][] {
  const out: [string, { json: Record<string, any>; config: Record<string, any> }][] = [
    ['py-tiny', folder(join(import.meta.dirname, '..', '..', 'models', 'py-tiny'))],
    ['chat-tiny', folder(join(FIXTURES, 'chat-tiny'))],
    ['variant, clean-up by default', variant(undefined)],
    ['variant, clean-up on', variant(true)],
    ['variant, clean-up off', variant(false)],
  ];
  for (const d of readdirSync(TEMPLATE_TOKENIZERS)) out.push([d, folder(join(TEMPLATE_TOKENIZERS, d))]);
  return out;
}

describe('byte-level decoding', () => {
  it.each(cases())('%s: every window decodes as the library decodes it, with and without special tokens', (_name, { json, config }) => {
    const hf = new HfTokenizer(json, config);
    const vocab = hf.get_vocab(true);
    const idEnd = Math.max(...vocab.values()) + 1;
    const dec = ByteLevelDecoder.forTokenizer(hf, json, config, idEnd);
    expect(dec).toBeDefined();
    const addedIds = [...hf.get_added_tokens_decoder().keys()];
    // Tokens of one byte-level character: a byte each, high bytes split characters across tokens.
    const byteIds = [...vocab].filter(([t]) => [...t].length === 1).map(([, id]) => id);
    expect(byteIds.length).toBeGreaterThan(100);
    let special = 0;
    for (const ids of windows(3000, idEnd, addedIds, byteIds, idEnd)) {
      for (const skip of [false, true]) {
        const want = hf.decode(ids, { skip_special_tokens: skip });
        expect(dec!.decode(ids, skip), JSON.stringify({ ids, skip })).toBe(want);
        if (skip && want !== hf.decode(ids, { skip_special_tokens: false })) special++;
      }
    }
    expect(special).toBeGreaterThan(0);  // some windows held tokens that skipping dropped
    // Ids outside the vocabulary are left to the library.
    expect(dec!.decode([0, idEnd], false)).toBeUndefined();
    expect(dec!.decode([-1], false)).toBeUndefined();
  });

  it('a streamed decode through the tokenizer gives the library\'s deltas, character for character', async () => {
    const { json, config } = variant(true);
    const dir = tmpDir('ns-bytelevel-');
    writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(json));
    writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(config));
    const tok = await loadTokenizer(dir);
    const hf = new HfTokenizer(json, config);
    const idEnd = Math.max(...hf.get_vocab(true).values()) + 1;
    const byteIds = [...hf.get_vocab(true)].filter(([t]) => [...t].length === 1).map(([, id]) => id);
    const ids = windows(200, idEnd, [...hf.get_added_tokens_decoder().keys()], byteIds, 7).flat();
    const ours = tok.incrementalDecoder();
    const theirs = new IncrementalDecoder((w) => (w.length ? hf.decode(w, { skip_special_tokens: false }) : ''));
    let a = '', b = '';
    for (const id of ids) {
      const x = ours.push(id), y = theirs.push(id);
      expect(x).toBe(y);
      a += x;
      b += y;
    }
    expect(a + ours.flush()).toBe(b + theirs.flush());
    expect(a.length).toBeGreaterThan(500);
    for (const skip of [false, true]) expect(tok.decode(ids, { skipSpecialTokens: skip })).toBe(hf.decode(ids, { skip_special_tokens: skip }));
  });

  it('other decoders (a sequence of them, or an end-of-word suffix) are left to the library', () => {
    const { json, config } = folder(join(import.meta.dirname, '..', '..', 'models', 'py-tiny'));
    const hf = new HfTokenizer(json, config);
    const metaspace = { ...json, decoder: { type: 'Sequence', decoders: [{ type: 'Replace', pattern: { String: '▁' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }] } };
    expect(ByteLevelDecoder.forTokenizer(hf, metaspace, config, 10)).toBeUndefined();
    expect(ByteLevelDecoder.forTokenizer(hf, { ...json, model: { ...json.model, end_of_word_suffix: '</w>' } }, config, 10)).toBeUndefined();
    expect(ByteLevelDecoder.forTokenizer(hf, json, config, 10)).toBeDefined();
  });
});
