// A model's chat template, rendered as transformers' apply_chat_template renders it: the template
// from chat_template.jinja, chat_template.json or tokenizer_config.json (that order, as
// transformers loads them), @huggingface/jinja (which trims blocks and strips leading block
// whitespace as transformers' environment does, with raise_exception, tojson and strftime_now),
// and the same variables: messages, tools and documents (none unless given), add_generation_prompt,
// and every special token of the tokenizer config (bos_token, eos_token, ...).
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { Template } from '@huggingface/jinja';

/**
 * A message as OpenAI's chat API and transformers take it; content parts are joined (text only).
 * Other fields a client sends (name, ...) reach the template as they are.
 */
export interface ChatMessage {
  role: string;
  content: string | null | ChatContentPart[];
}

export interface ChatContentPart {
  type: string;
  text?: string;
}

export interface ChatRenderOptions {
  /** Append the assistant turn's opening so the model answers (on for chat completions). */
  addGenerationPrompt?: boolean;
  /** A named template when the config holds several (default: "default"). */
  templateName?: string;
  /** Further template variables (tools, documents, date_string, ...), as apply_chat_template's kwargs. */
  extra?: Record<string, unknown>;
}

/** The chat input cannot be rendered: no template, a template error, or raise_exception() in it. */
export class ChatTemplateError extends Error {
  constructor(message: string, readonly kind: 'missing' | 'template' | 'input') {
    super(message);
    this.name = 'ChatTemplateError';
  }
}

type TemplateSource = { text: string; file: string } | { named: Map<string, string>; file: string };

const SPECIAL_TOKEN_KEYS = ['bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token', 'cls_token', 'mask_token'];

/** tokenizer_config.json writes special tokens as strings or as AddedToken objects. */
export function tokenContent(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (typeof v === 'object' && v !== null && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return null;
}

function namedTemplates(list: unknown[], file: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const [i, x] of list.entries()) {
    const { name, template } = (x ?? {}) as { name?: unknown; template?: unknown };
    if (typeof name !== 'string' || typeof template !== 'string')
      throw new ChatTemplateError(`${file}: chat_template[${i}] needs a string name and template`, 'template');
    m.set(name, template);
  }
  return m;
}

function findSource(dir: string, config: Record<string, unknown>): TemplateSource | null {
  const jinja = join(dir, 'chat_template.jinja');
  if (existsSync(jinja)) return { text: readFileSync(jinja, 'utf8'), file: jinja };
  const json = join(dir, 'chat_template.json');
  if (existsSync(json)) {
    let v: unknown;
    try {
      v = JSON.parse(readFileSync(json, 'utf8'));
    } catch (err) {
      throw new ChatTemplateError(`${json}: not valid JSON (${(err as Error).message})`, 'template');
    }
    const t = (v as { chat_template?: unknown } | null)?.chat_template;
    if (typeof t === 'string') return { text: t, file: json };
    throw new ChatTemplateError(`${json}: field chat_template must be a string`, 'template');
  }
  const file = join(dir, 'tokenizer_config.json');
  const t = config.chat_template;
  if (typeof t === 'string') return { text: t, file };
  if (Array.isArray(t)) return { named: namedTemplates(t, file), file };
  return null;
}

/** Text of OpenAI content parts, joined with newlines (vLLM's "string" content format); text parts only. */
function contentText(content: ChatMessage['content'], at: number): string | null {
  if (content === null || typeof content === 'string') return content;
  const texts: string[] = [];
  for (const [j, p] of content.entries()) {
    if (p?.type !== 'text' || typeof p.text !== 'string')
      throw new ChatTemplateError(`messages[${at}].content[${j}]: only text parts are supported (got type ${JSON.stringify(p?.type)})`, 'input');
    texts.push(p.text);
  }
  return texts.join('\n');
}

export class ChatTemplate {
  private readonly compiled = new Map<string, Template>();

  private constructor(private readonly dir: string, private readonly source: TemplateSource | null,
    private readonly specialTokens: Record<string, unknown>) {}

  /** The template of model folder `dir` (`config`: its tokenizer_config.json, {} when absent). */
  static load(dir: string, config: Record<string, unknown>): ChatTemplate {
    const special: Record<string, unknown> = {};
    for (const k of SPECIAL_TOKEN_KEYS) {
      const v = tokenContent(config[k]);
      if (v !== null) special[k] = v;
    }
    const extra = config.additional_special_tokens ?? config.extra_special_tokens;
    if (Array.isArray(extra)) special.additional_special_tokens = extra.map((x) => tokenContent(x)).filter((x) => x !== null);
    return new ChatTemplate(dir, findSource(dir, config), special);
  }

  get available(): boolean {
    return this.source !== null;
  }

  private template(name: string | undefined): Template {
    const src = this.source;
    if (!src) {
      throw new ChatTemplateError(`${join(this.dir, 'tokenizer_config.json')}: this model has no chat template ` +
        '(no chat_template field, chat_template.jinja or chat_template.json); send plain prompts to /v1/completions instead', 'missing');
    }
    let text: string;
    if ('text' in src) {
      text = src.text;
    } else {
      const wanted = name ?? 'default';
      const hit = src.named.get(wanted);
      if (hit === undefined) throw new ChatTemplateError(`${src.file}: chat_template has no template named ${JSON.stringify(wanted)}`, 'missing');
      text = hit;
    }
    const key = name ?? '';
    let t = this.compiled.get(key);
    if (!t) {
      try {
        t = new Template(text);
      } catch (err) {
        throw new ChatTemplateError(`${src.file}: the chat template does not parse (${(err as Error).message})`, 'template');
      }
      this.compiled.set(key, t);
    }
    return t;
  }

  /** The prompt text of `messages`; encode it without adding special tokens (the template writes them). */
  render(messages: ChatMessage[], opts: ChatRenderOptions = {}): string {
    const template = this.template(opts.templateName);
    const msgs = messages.map((m, i) => ({ ...m, content: contentText(m.content, i) }));
    try {
      return template.render({
        ...this.specialTokens,
        tools: null,
        documents: null,
        ...opts.extra,
        messages: msgs,
        add_generation_prompt: opts.addGenerationPrompt ?? false,
      });
    } catch (err) {
      // raise_exception() in the template (roles out of order, an unsupported role) is about the input.
      throw new ChatTemplateError(`chat template: ${(err as Error).message}`, 'input');
    }
  }
}
