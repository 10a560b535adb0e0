import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import { loadTokenizer } from '../../src/model/index.js';
import { tmpDir, removeTmpDirs } from './helpers.js';

afterAll(removeTmpDirs);

const FIXTURES = join(import.meta.dirname, '..', 'fixtures', 'hf-reference');
const ENCODINGS: Record<string, number[]> = JSON.parse(readFileSync(join(FIXTURES, 'tok512_encodings.json'), 'utf8'));

function tokDir(config: Record<string, unknown>, gen?: Record<string, unknown>): string {
  const dir = tmpDir('ns-tok-');
  copyFileSync(join(FIXTURES, 'tok512.json'), join(dir, 'tokenizer.json'));
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(config));
  if (gen) writeFileSync(join(dir, 'generation_config.json'), JSON.stringify(gen));
  return dir;
}

const BASE = { bos_token: '<|bos|>', eos_token: '<|eos|>', tokenizer_class: 'PreTrainedTokenizerFast' };

describe('tokenizer', () => {
  it('tok512.json encodes every string of tok512_encodings.json exactly (BOS from the post-processor)', async () => {
    const tok = await loadTokenizer(tokDir(BASE));
    expect(Object.keys(ENCODINGS).length).toBeGreaterThan(3);
    for (const [text, ids] of Object.entries(ENCODINGS)) expect(tok.encode(text), JSON.stringify(text)).toEqual(ids);
    expect(tok.encode('import os', { addSpecialTokens: false })).toEqual(ENCODINGS['import os']!.slice(1));
  });

  it('decodes back to the text; special tokens in text map to their ids', async () => {
    const tok = await loadTokenizer(tokDir(BASE));
    for (const text of Object.keys(ENCODINGS)) expect(tok.decode(tok.encode(text), { skipSpecialTokens: true })).toBe(text);
    expect(tok.encode('a<|eos|>')).toContain(1);
  });

  it('eos ids: generation_config list first, then tokenizer_config eos_token', async () => {
    expect((await loadTokenizer(tokDir(BASE))).eosTokenIds).toEqual([1]);
    expect((await loadTokenizer(tokDir(BASE, { eos_token_id: [7, 9] }))).eosTokenIds).toEqual([7, 9, 1]);
  });

  it('incremental decoding streams whole characters when UTF-8 bytes span tokens', async () => {
    const tok = await loadTokenizer(tokDir(BASE));
    const text = 'héllo wörld ✓ 日本';
    const ids = ENCODINGS[text]!.slice(1);
    const dec = tok.incrementalDecoder();
    const deltas = ids.map((id) => dec.push(id));
    expect(deltas.join('') + dec.flush()).toBe(text);
    expect(deltas.some((d) => d === '')).toBe(true); // some tokens hold half a character
    for (const d of deltas) expect(d).not.toContain('\uFFFD');
  });

  it('chat template from tokenizer_config.json, with and without the generation prompt', async () => {
    const template = "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";
    const tok = await loadTokenizer(tokDir({ ...BASE, chat_template: template }));
    const msgs = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hi' }];
    expect(tok.applyChatTemplate(msgs)).toBe('<|bos|><system>Be brief.<|eos|><user>Hi<|eos|>');
    expect(tok.applyChatTemplate(msgs, { addGenerationPrompt: true })).toBe('<|bos|><system>Be brief.<|eos|><user>Hi<|eos|><assistant>');
    const ids = tok.encodeChat(msgs, { addGenerationPrompt: true });
    expect(ids.filter((i) => i === 0)).toHaveLength(1); // the template's BOS only, not a second one
    expect(ids[0]).toBe(0);
    expect(ids.filter((i) => i === 1)).toHaveLength(2); // the two <|eos|> as special tokens
    const raising = await loadTokenizer(tokDir({ ...BASE, chat_template: "{{ raise_exception('no system role') }}" }));
    expect(() => raising.applyChatTemplate(msgs)).toThrow(/chat template: .*no system role/);
  });

  it('a model without a chat template says so; a folder without tokenizer.json is named', async () => {
    const tok = await loadTokenizer(tokDir(BASE));
    expect(tok.hasChatTemplate).toBe(false);
    expect(() => tok.applyChatTemplate([{ role: 'user', content: 'x' }])).toThrow(/tokenizer_config\.json: this model has no chat template/);
    await expect(loadTokenizer(tmpDir())).rejects.toThrow(/tokenizer\.json: no such file/);
  });
});
