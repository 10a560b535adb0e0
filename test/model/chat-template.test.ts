// Chat templates rendered and tokenized as transformers' apply_chat_template does: 11 templates
// from model repos (test/fixtures/chat-templates/templates.json) on 6 conversations, against the
// text and ids transformers produced (expected/, made by make_expected.py on the GPU host), and the
// chat-tiny fixture's ids (the template's BOS only, no second one).
import { existsSync, mkdtempSync, readFileSync, writeFileSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

import { describe, expect, it } from 'vitest';

import { ChatTemplateError, loadTokenizer } from '../../src/model/index.js';

const root = resolve(import.meta.dirname, '..', '..');
const DIR = join(root, 'test', 'fixtures', 'chat-templates');
const EXPECTED = join(DIR, 'expected');
const CHAT_TINY = join(root, 'test', 'fixtures', 'chat-tiny');

interface Conversation { name: string; add_generation_prompt: boolean; messages: { role: string; content: string }[] }
interface TemplateEntry { name: string; bos_token: string | null; eos_token: string; kwargs: Record<string, unknown>; template: string }
interface ExpectedCase { conversation: string; text?: string; ids?: number[]; error?: string }

const json = <T>(file: string): T => JSON.parse(readFileSync(file, 'utf8')) as T;
const conversations = json<{ conversations: Conversation[] }>(join(DIR, 'conversations.json')).conversations;
const templates = json<{ templates: TemplateEntry[] }>(join(DIR, 'templates.json')).templates;
const haveExpected = existsSync(join(EXPECTED, 'chat_expected.json'));

describe.skipIf(!haveExpected)('templates from model repos, against transformers', () => {
  const expected = haveExpected ? json<{ results: { template: string; tokenizer_dir: string; cases: ExpectedCase[] }[] }>(join(EXPECTED, 'chat_expected.json')).results : [];

  it('covers at least 10 templates', () => {
    expect(expected.length).toBeGreaterThanOrEqual(10);
    expect(expected.map((e) => e.template).sort()).toEqual(templates.map((t) => t.name).sort());
  });

  for (const t of templates) {
    it(`${t.name}: every conversation renders to transformers' text and ids, or fails where it fails`, async () => {
      const exp = expected.find((e) => e.template === t.name)!;
      const tok = await loadTokenizer(join(EXPECTED, exp.tokenizer_dir));
      for (const c of conversations) {
        const want = exp.cases.find((x) => x.conversation === c.name)!;
        const opts = { addGenerationPrompt: c.add_generation_prompt, extra: t.kwargs };
        if (want.error !== undefined) {
          expect(() => tok.applyChatTemplate(c.messages, opts), `${t.name} / ${c.name}`).toThrow(ChatTemplateError);
          // The template's own message (transformers: "TemplateError: <message>").
          expect(() => tok.applyChatTemplate(c.messages, opts)).toThrow(want.error.replace(/^\w+: /, ''));
          continue;
        }
        expect(tok.applyChatTemplate(c.messages, opts), `${t.name} / ${c.name}`).toBe(want.text);
        expect(tok.encodeChat(c.messages, opts), `${t.name} / ${c.name} ids`).toEqual(want.ids);
      }
    });
  }
});

describe('chat-tiny', () => {
  it.skipIf(!haveExpected)("ids equal transformers' apply_chat_template(tokenize=True): the template's <|bos|> once", async () => {
    const tok = await loadTokenizer(CHAT_TINY);
    const exp = json<{ cases: (ExpectedCase & { ids_with_special_tokens: number[] })[] }>(join(EXPECTED, 'chat_tiny_expected.json')).cases;
    for (const c of conversations) {
      const want = exp.find((x) => x.conversation === c.name)!;
      const ids = tok.encodeChat(c.messages, { addGenerationPrompt: c.add_generation_prompt });
      expect(ids).toEqual(want.ids);
      expect(want.ids_with_special_tokens).toEqual([0, ...want.ids]);  // what encoding the text plainly would add
    }
  });

  it('renders each turn between <|bos|> and <|eos|> and opens the assistant turn', async () => {
    const tok = await loadTokenizer(CHAT_TINY);
    const text = tok.applyChatTemplate([{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hi' }], { addGenerationPrompt: true });
    expect(text).toBe('<|bos|>system\nBe brief.<|eos|>\n<|bos|>user\nHi<|eos|>\n<|bos|>assistant\n');
    const ids = tok.encodeChat([{ role: 'user', content: 'Hi' }], { addGenerationPrompt: true });
    expect(ids.filter((i) => i === 0)).toHaveLength(2);  // two turns opened, no BOS added on top
    expect(ids[0]).toBe(0);
  });
});

describe('template sources and content', () => {
  function modelDir(files: Record<string, string>): string {
    const d = mkdtempSync(join(tmpdir(), 'ns-chat-'));
    copyFileSync(join(CHAT_TINY, 'tokenizer.json'), join(d, 'tokenizer.json'));
    for (const [name, text] of Object.entries(files)) writeFileSync(join(d, name), text);
    return d;
  }
  const cfg = (extra: Record<string, unknown> = {}) => JSON.stringify({ bos_token: '<|bos|>', eos_token: '<|eos|>', ...extra });

  it('chat_template.jinja wins over chat_template.json, which wins over tokenizer_config.json (as transformers loads them)', async () => {
    const both = modelDir({ 'tokenizer_config.json': cfg({ chat_template: 'config' }), 'chat_template.json': JSON.stringify({ chat_template: 'json' }), 'chat_template.jinja': 'jinja' });
    expect((await loadTokenizer(both)).applyChatTemplate([])).toBe('jinja');
    const json2 = modelDir({ 'tokenizer_config.json': cfg({ chat_template: 'config' }), 'chat_template.json': JSON.stringify({ chat_template: 'json' }) });
    expect((await loadTokenizer(json2)).applyChatTemplate([])).toBe('json');
    const named = modelDir({ 'tokenizer_config.json': cfg({ chat_template: [{ name: 'default', template: 'd' }, { name: 'tool_use', template: 't' }] }) });
    const tok = await loadTokenizer(named);
    expect(tok.applyChatTemplate([])).toBe('d');
    expect(tok.applyChatTemplate([], { templateName: 'tool_use' })).toBe('t');
  });

  it('passes tools and documents as none, special tokens, and extra variables', async () => {
    const d = modelDir({ 'tokenizer_config.json': cfg({ chat_template: '{{ tools is none }}|{{ documents is none }}|{{ bos_token }}|{{ eos_token }}|{{ date_string }}' }) });
    expect((await loadTokenizer(d)).applyChatTemplate([], { extra: { date_string: '1 Jan 2025' } })).toBe('true|true|<|bos|>|<|eos|>|1 Jan 2025');
  });

  it('joins OpenAI text parts with newlines and refuses other parts, naming them', async () => {
    const tok = await loadTokenizer(CHAT_TINY);
    const parts = [{ type: 'text', text: 'a' }, { type: 'text', text: 'b' }];
    expect(tok.applyChatTemplate([{ role: 'user', content: parts }])).toBe('<|bos|>user\na\nb<|eos|>\n');
    expect(() => tok.applyChatTemplate([{ role: 'user', content: [{ type: 'image_url' }] }])).toThrow(/messages\[0\]\.content\[0\]: only text parts/);
  });

  it('a model without a template: a ChatTemplateError of kind missing', async () => {
    const d = modelDir({ 'tokenizer_config.json': cfg() });
    const tok = await loadTokenizer(d);
    expect(tok.hasChatTemplate).toBe(false);
    try {
      tok.applyChatTemplate([{ role: 'user', content: 'x' }]);
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(ChatTemplateError);
      expect((err as ChatTemplateError).kind).toBe('missing');
    }
  });
});
