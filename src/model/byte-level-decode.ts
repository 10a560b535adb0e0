// Decoding for tokenizers whose decoder is byte-level BPE's (GPT-2, Llama 3, Qwen, Mistral-Nemo,
// ...), the same text as @huggingface/tokenizers' decode, without its per-call work: the library
// maps every token's characters to bytes again at each call (an array a character), scans the
// added tokens for each token and joins strings, about 1 KB and 1.3 us a token of a streaming
// window on a small vocabulary, which the replica driver pays for every sampled token. Here each
// id's text (whole characters), bytes (a piece of a character), or added token's text is worked out
// once, when first decoded.
//
// What the library does, and so what this does: ids become their vocabulary strings (added tokens
// included); with skip_special_tokens, the special ones (added tokens marked special, and
// tokenizer_config.json's additional_special_tokens) are dropped; a token whose string is an added
// token's content stands as it is, and each run of the others is the UTF-8 decoding (invalid bytes
// as U+FFFD) of their characters' bytes (the byte-level alphabet; a character outside it is a 0
// byte); then, unless tokenizer_config.json sets clean_up_tokenization_spaces to false, the
// tokenization-space clean-up below. test/model/byte-level-decode.test.ts holds the two equal.

import type { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';

/** Byte-level BPE's alphabet: the character that stands for each byte (GPT-2's bytes_to_unicode). */
function byteOfChar(): Map<number, number> {
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const m = new Map<number, number>();
  let shifted = 0;  // the other bytes take the characters from U+0100 on, in byte order
  for (let b = 0; b < 256; b++) m.set(printable(b) ? b : 256 + shifted++, b);
  return m;
}
const BYTE_OF_CHAR = byteOfChar();

/** The library's clean-up of tokenization spaces, in its order (each pattern starts with a space). */
const CLEAN_UP: [string, string][] = [
  [' .', '.'], [' ?', '?'], [' !', '!'], [' ,', ','], [" ' ", "'"], [" n't", "n't"], [" 'm", "'m"], [" 's", "'s"], [" 've", "'ve"], [" 're", "'re"],
];

/** A space before a character some pattern of CLEAN_UP continues with: without one, none applies. */
const CLEAN_UP_AT = / [.?!,'n]/;

function cleanUp(text: string): string {
  if (!CLEAN_UP_AT.test(text)) return text;
  for (const [from, to] of CLEAN_UP) text = text.replaceAll(from, to);
  return text;
}

/**
 * What one id decodes to: an added token's own text, or a vocabulary token's text when its bytes are
 * whole, valid UTF-8 characters (in a run, such a token's text does not depend on its neighbours;
 * its bytes are that text's UTF-8, kept only once a run needs them), else its bytes. Most tokens are
 * whole, so most pieces hold one string, not a typed array too.
 */
interface Piece {
  added?: string;
  text?: string;
  bytes?: Uint8Array;
  special: boolean;
}

export interface ByteLevelSource {
  /** The id's vocabulary string (added tokens included), undefined outside the vocabulary. */
  idToToken(id: number): string | undefined;
  /** Contents of the added tokens. */
  added: ReadonlySet<string>;
  /** Strings that skip_special_tokens drops. */
  special: ReadonlySet<string>;
  cleanUpSpaces: boolean;
  /** One past the largest id of the vocabulary (the table's length). */
  idEnd: number;
}

export class ByteLevelDecoder {
  /** Each id's piece once decoded (a dense array: ids index it at every token). */
  private readonly pieces: (Piece | undefined)[];
  private scratch = new Uint8Array(64);
  private readonly utf8 = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });
  private readonly strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
  private readonly utf8Out = new TextEncoder();

  constructor(private readonly src: ByteLevelSource) {
    this.pieces = new Array<Piece | undefined>(src.idEnd).fill(undefined);
  }

  /**
   * The decoder of a tokenizer whose tokenizer.json decoder is byte-level's alone (no sequence of
   * decoders) and whose BPE model appends no end-of-word suffix; undefined for any other (the
   * library decodes those). `idEnd`: one past the largest id of the vocabulary.
   */
  static forTokenizer(hf: HfTokenizer, json: Record<string, unknown>, config: Record<string, unknown>, idEnd: number): ByteLevelDecoder | undefined {
    const decoder = json.decoder as { type?: unknown } | null | undefined;
    const model = json.model as { type?: unknown; end_of_word_suffix?: unknown } | undefined;
    if (decoder?.type !== 'ByteLevel' || model?.type !== 'BPE' || model.end_of_word_suffix) return undefined;
    // As the library: added tokens by content; skip_special_tokens drops the special ones and
    // tokenizer_config.json's additional_special_tokens; clean-up unless the config turns it off.
    const added = [...hf.get_added_tokens_decoder().values()];
    const extra = Array.isArray(config.additional_special_tokens) ? config.additional_special_tokens.filter((t) => typeof t === 'string') : [];
    return new ByteLevelDecoder({
      idToToken: (id) => hf.id_to_token(id),
      added: new Set(added.map((t) => t.content)),
      special: new Set([...added.filter((t) => t.special).map((t) => t.content), ...extra]),
      cleanUpSpaces: Boolean(config.clean_up_tokenization_spaces ?? true),
      idEnd,
    });
  }

  /** The text of `ids`, or undefined when one is not in the vocabulary (the caller asks the library). */
  decode(ids: readonly number[], skipSpecial: boolean): string | undefined {
    // A run of whole-character tokens is the sum of their texts (no bytes copied, no decoder call);
    // from the first token that is not, the run's bytes are gathered and decoded at its end.
    let out = '';
    let n = 0;
    let whole = true;
    for (const id of ids) {
      const p = this.piece(id);
      if (!p) return undefined;
      if (skipSpecial && p.special) continue;
      if (p.added !== undefined) {
        if (n) out += this.utf8.decode(this.scratch.subarray(0, n));
        n = 0;
        whole = true;
        out += p.added;
        continue;
      }
      if (whole && p.text !== undefined) {
        out += p.text;
        continue;
      }
      whole = false;
      // A whole token's bytes are its text's UTF-8, kept once a run needs them (after a piece of a character).
      const b = p.bytes ?? (p.bytes = this.utf8Out.encode(p.text!));
      if (n + b.length > this.scratch.length) {
        const grown = new Uint8Array(Math.max(2 * this.scratch.length, n + b.length));
        grown.set(this.scratch.subarray(0, n));
        this.scratch = grown;
      }
      this.scratch.set(b, n);
      n += b.length;
    }
    if (n) out += this.utf8.decode(this.scratch.subarray(0, n));
    return this.src.cleanUpSpaces ? cleanUp(out) : out;
  }

  private piece(id: number): Piece | undefined {
    if (!Number.isInteger(id) || id < 0 || id >= this.pieces.length) return undefined;
    const known = this.pieces[id];
    if (known !== undefined) return known;
    const token = this.src.idToToken(id);
    if (token === undefined) return undefined;
    const special = this.src.special.has(token);
    let p: Piece;
    if (this.src.added.has(token)) {
      p = { added: token, special };
    } else {
      const bytes: number[] = [];
      for (const c of token) bytes.push(BYTE_OF_CHAR.get(c.codePointAt(0)!) ?? 0);
      const b = Uint8Array.from(bytes);
      const text = this.wholeText(b);
      p = text !== undefined ? { text, special } : { bytes: b, special };
    }
    this.pieces[id] = p;
    return p;
  }

  /** The text of bytes that are whole, valid UTF-8 characters; undefined for any others. */
  private wholeText(b: Uint8Array): string | undefined {
    try {
      return this.strictUtf8.decode(b);
    } catch {
      return undefined;
    }
  }
}
