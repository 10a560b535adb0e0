// tokenizer.json through @huggingface/tokenizers (normalizer, pre-tokenizer, BPE, post-processor
// and added/special tokens exactly as the Rust library defines them), the model's chat template
// (chat-template.ts), and an incremental decoder for streaming.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';

import { ByteLevelDecoder } from './byte-level-decode.js';
import { ChatTemplate, tokenContent } from './chat-template.js';
import type { ChatMessage, ChatRenderOptions } from './chat-template.js';
import { loadGenerationConfig } from './config.js';

export class TokenizerError extends Error {}

function readJsonObject(file: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new TokenizerError(`${file}: ${code ? `cannot read (${code})` : `not valid JSON (${(err as Error).message})`}`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new TokenizerError(`${file}: expected a JSON object`);
  return v as Record<string, unknown>;
}

const KEEP_SPECIAL = { skip_special_tokens: false };
const SKIP_SPECIAL = { skip_special_tokens: true };

export class Tokenizer {
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  /** EOS ids: generation_config.json's first (may be a list), then tokenizer_config.json's eos_token. */
  readonly eosTokenIds: number[];
  readonly vocabSize: number;
  /**
   * The most UTF-8 bytes any one token stands for (the longest vocabulary entry, added tokens
   * included): a text longer than n × this certainly holds more than n tokens, which bounds the
   * prompts worth tokenizing. Vocabulary entries spell bytes at least as long as the text they
   * match (a byte-level 'Ġ' is 2 bytes for one space, '▁' 3, '<0x0A>' 6), so this only overestimates.
   */
  readonly maxTokenBytes: number;

  readonly chatTemplate: ChatTemplate;
  /** decode([id]) of the ids decoded alone so far (see decodeOne). */
  private readonly single = new Map<number, string>();
  /** The library's decode without its per-call work, for byte-level BPE tokenizers (undefined: the library decodes). */
  private readonly byteLevel: ByteLevelDecoder | undefined;

  private constructor(readonly dir: string, private readonly hf: HfTokenizer, json: Record<string, unknown>, config: Record<string, unknown>,
    eosIds: number[]) {
    this.bosToken = tokenContent(config.bos_token);
    this.eosToken = tokenContent(config.eos_token);
    const ids = [...eosIds];
    const eos = this.eosToken !== null ? hf.token_to_id(this.eosToken) : undefined;
    if (eos !== undefined && !ids.includes(eos)) ids.push(eos);
    this.eosTokenIds = ids;
    const vocab = hf.get_vocab(true);
    this.vocabSize = vocab.size;
    let longest = 1;
    let idEnd = 0;
    for (const [token, id] of vocab) {
      longest = Math.max(longest, Buffer.byteLength(token, 'utf8'));
      idEnd = Math.max(idEnd, id + 1);
    }
    this.maxTokenBytes = longest;
    this.chatTemplate = ChatTemplate.load(dir, config);
    this.byteLevel = ByteLevelDecoder.forTokenizer(hf, json, config, idEnd);
  }

  static load(dir: string): Tokenizer {
    const tokFile = join(dir, 'tokenizer.json');
    if (!existsSync(tokFile)) throw new TokenizerError(`${tokFile}: no such file (the model folder needs a tokenizer.json)`);
    const json = readJsonObject(tokFile);
    const cfgFile = join(dir, 'tokenizer_config.json');
    const config = existsSync(cfgFile) ? readJsonObject(cfgFile) : {};
    let hf: HfTokenizer;
    try {
      hf = new HfTokenizer(json, config);
    } catch (err) {
      throw new TokenizerError(`${tokFile}: cannot build the tokenizer (${(err as Error).message})`);
    }
    return new Tokenizer(dir, hf, json, config, loadGenerationConfig(dir).eosTokenIds);
  }

  /** Ids of `text`, special tokens in the text recognised and the post-processor applied (BOS). */
  encode(text: string, opts: { addSpecialTokens?: boolean } = {}): number[] {
    return this.hf.encode(text, { add_special_tokens: opts.addSpecialTokens ?? true }).ids;
  }

  decode(ids: number[], opts: { skipSpecialTokens?: boolean } = {}): string {
    if (ids.length === 0) return ''; // the library rejects an empty list
    const skip = opts.skipSpecialTokens ?? false;
    // The byte-level decoder keeps each id's text itself; the library's decode is cached per id here.
    const fast = this.byteLevel?.decode(ids, skip);
    if (fast !== undefined) return fast;
    if (ids.length === 1 && !skip) return this.decodeOne(ids[0]!);
    return this.hf.decode(ids, skip ? SKIP_SPECIAL : KEEP_SPECIAL);
  }

  /**
   * One id's text, kept for the ids of the vocabulary: a streaming decoder decodes each sampled
   * token alone once (IncrementalDecoder's prefix window), at every token of every sequence, and
   * the library's decode is a pure function of the id.
   */
  private decodeOne(id: number): string {
    const known = this.single.get(id);
    if (known !== undefined) return known;
    const text: string = this.hf.decode([id], KEEP_SPECIAL);
    if (Number.isInteger(id) && id >= 0 && id < this.vocabSize) this.single.set(id, text);
    return text;
  }

  tokenToId(token: string): number | undefined {
    return this.hf.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    return this.hf.id_to_token(id);
  }

  get hasChatTemplate(): boolean {
    return this.chatTemplate.available;
  }

  /** Renders `messages` with the model's chat template (ChatTemplateError when it cannot). */
  applyChatTemplate(messages: ChatMessage[], opts: ChatRenderOptions = {}): string {
    return this.chatTemplate.render(messages, opts);
  }

  /**
   * Prompt ids of a chat: the rendered template, encoded without the post-processor's special
   * tokens (the template writes its own BOS, as transformers' apply_chat_template(tokenize=True) does).
   */
  encodeChat(messages: ChatMessage[], opts: ChatRenderOptions = {}): number[] {
    return this.encode(this.applyChatTemplate(messages, opts), { addSpecialTokens: false });
  }

  /** A decoder that turns a stream of ids into text deltas (see IncrementalDecoder). */
  incrementalDecoder(opts: { skipSpecialTokens?: boolean } = {}): IncrementalDecoder {
    return new IncrementalDecoder((ids) => this.decode(ids, opts));
  }
}

/**
 * Streaming detokenization. Decoding token by token breaks characters whose UTF-8 bytes span
 * several byte-level tokens, and loses the spaces some decoders add between tokens. So, as
 * vLLM/TGI do, decode a window from a few tokens back (prefix) and emit only what it adds beyond
 * the prefix's text, holding back while the new text ends in U+FFFD (an incomplete character).
 * A character spans at most 4 bytes, so a tail still ending in U+FFFD after MAX_HELD tokens is
 * text that really decodes to U+FFFD (invalid bytes): it is emitted, which keeps the window, and
 * the work per token, bounded whatever the model samples.
 */
const MAX_HELD = 8;

/** Where an IncrementalDecoder stands: the window of ids it still needs (see restore). */
export interface DecoderState {
  ids: number[];
  prefixOffset: number;
  readOffset: number;
}

export class IncrementalDecoder {
  // Only the window from prefixOffset on is kept: older ids are never decoded again.
  private ids: number[] = [];
  private prefixOffset = 0;
  private readOffset = 0;
  /** A one-id window handed to decodeIds, reused (decodeIds must not keep it). */
  private readonly one: number[] = [0];

  /** `decodeIds` reads the ids it is given during the call only (the arrays are reused). */
  constructor(private readonly decodeIds: (ids: number[]) => string, state?: DecoderState) {
    if (state) {
      this.ids = [...state.ids];
      this.prefixOffset = state.prefixOffset;
      this.readOffset = state.readOffset;
    }
  }

  /** Adds one token; returns the text it completes ('' while a character is incomplete). */
  push(id: number): string {
    this.ids.push(id);
    const prefix = this.decodeRange(this.prefixOffset, this.readOffset);
    const full = this.decodeRange(this.prefixOffset, this.ids.length);
    if (full.length > prefix.length && (!full.endsWith('\uFFFD') || this.ids.length - this.readOffset >= MAX_HELD)) {
      // Drops the ids before readOffset (in place: splice would return them in a new array).
      this.ids.copyWithin(0, this.readOffset);
      this.ids.length -= this.readOffset;
      this.prefixOffset = 0;
      this.readOffset = this.ids.length;
      return full.slice(prefix.length);
    }
    return '';
  }

  // The windows are nearly always all the ids kept, or one of them: those are passed without a
  // copy (an array a call was most of the garbage a streamed token made).
  private decodeRange(from: number, to: number): string {
    if (from === 0 && to === this.ids.length) return this.decodeIds(this.ids);
    if (to - from === 1) {
      this.one[0] = this.ids[from]!;
      return this.decodeIds(this.one);
    }
    return this.decodeIds(this.ids.slice(from, to));
  }

  /** Text still held back at the end of the stream (an incomplete character decodes as U+FFFD). */
  flush(): string {
    const prefix = this.decodeRange(this.prefixOffset, this.readOffset);
    const full = this.decodeRange(this.prefixOffset, this.ids.length);
    this.ids = [];
    this.prefixOffset = this.readOffset = 0;
    return full.length > prefix.length ? full.slice(prefix.length) : '';
  }

  /** The window it needs to go on (a decoder built from it continues exactly where this one is). */
  state(): DecoderState {
    return { ids: [...this.ids], prefixOffset: this.prefixOffset, readOffset: this.readOffset };
  }
}

export async function loadTokenizer(dir: string): Promise<Tokenizer> {
  return Tokenizer.load(dir);
}
