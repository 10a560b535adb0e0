// Tokenizer for `model init` checkpoints. A random-weight model samples any id of its vocabulary,
// so the tokenizer must give every id a token: this writes a GPT-2-style byte-level BPE whose
// vocabulary is exactly vocab_size — <unk>, <s>, </s> (ids 0, 1, 2 as in Llama 2), the 256 byte
// symbols, then synthetic merges (space+letter and letter pairs first, then longer pieces) until
// the vocabulary is full. Tokenization is deterministic and round-trips any UTF-8 text; it is not
// trained, which does not matter for random weights. tok512 (a trained tokenizer of 512 ids) is
// used instead when the vocabulary is 512 and the fixture is at hand.
export interface InitTokenizer {
  tokenizerJson: Record<string, unknown>;
  tokenizerConfig: Record<string, unknown>;
  bosTokenId: number;
  eosTokenId: number;
}

/** GPT-2's bytes_to_unicode: printable bytes stand for themselves, the rest map past U+0100. */
export function byteSymbols(): string[] {
  const sym: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    sym[b] = String.fromCodePoint(printable ? b : 256 + extra++);
  }
  return sym;
}

const SPECIALS = ['<unk>', '<s>', '</s>'];

export function byteLevelBpe(vocabSize: number, maxLength: number): InitTokenizer {
  const base = SPECIALS.length + 256;
  if (vocabSize < base) throw new RangeError(`vocab_size ${vocabSize}: a byte-level tokenizer needs at least ${base} ids`);
  const sym = byteSymbols();
  const vocab: Record<string, number> = {};
  SPECIALS.forEach((s, i) => { vocab[s] = i; });
  sym.forEach((s, b) => { vocab[s] = SPECIALS.length + b; });
  const merges: [string, string][] = [];
  const add = (a: string, b: string): boolean => {
    if (merges.length + base >= vocabSize) return false;
    const t = a + b;
    if (vocab[t] !== undefined) return true;
    vocab[t] = base + merges.length;
    merges.push([a, b]);
    return true;
  };
  // Alphabet in rough frequency order; 'Ġ' is the space symbol.
  const letters = 'etaoinshrdlcumwfgypbvkjxqz'.split('');
  const alphabet = [...letters, ...letters.map((c) => c.toUpperCase()), ...'0123456789_.,()'.split('')];
  const level1: string[] = [];
  for (const c of alphabet) if (add('Ġ', c)) level1.push('Ġ' + c);
  for (const a of alphabet) for (const b of alphabet) if (add(a, b)) level1.push(a + b);
  // Longer pieces: grow every existing piece by one letter, breadth first, until full.
  let frontier = level1;
  while (merges.length + base < vocabSize) {
    const next: string[] = [];
    for (const p of frontier) {
      for (const c of alphabet) {
        if (!add(p, c)) break;
        next.push(p + c);
      }
      if (merges.length + base >= vocabSize) break;
    }
    frontier = next;
  }
  const added = SPECIALS.map((content, id) => ({
    id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true,
  }));
  const tokenizerJson = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: '<s>', type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    },
    decoder: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges,
    },
  };
  const tokenizerConfig = {
    bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>', add_bos_token: true, add_eos_token: false,
    tokenizer_class: 'PreTrainedTokenizerFast', model_max_length: maxLength, clean_up_tokenization_spaces: false,
  };
  return { tokenizerJson, tokenizerConfig, bosTokenId: 1, eosTokenId: 2 };
}
