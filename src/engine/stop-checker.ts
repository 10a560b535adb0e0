// Decides when a sequence is finished (EOS or a stop token id, stop string in the decoded text, max tokens) and
// which part of the decoded text is safe to stream: text that might still turn into a stop
// string, or ends in an incomplete UTF-8 character, is held back until it is settled.
//
// Stop strings are matched with one Aho-Corasick automaton per sequence, fed each new character
// once: the work per token is proportional to the characters the token adds (amortized), never to
// the number or total length of the stop strings, so a request with many stop strings cannot slow
// the driver's thread down (it only pays once, O(total length), to build the automaton).

import { IncrementalDecoder } from '../model/tokenizer.js';
import type { DecoderState } from '../model/tokenizer.js';
import { FinishReason } from '../protocol/lifecycle.js';

const { FINISH_REASON_STOP: STOP, FINISH_REASON_LENGTH: LENGTH } = FinishReason;

export interface StopOptions {
  eosTokenIds: readonly number[];
  /** Ids that end the sequence like EOS (also with ignoreEos), left out of the output likewise. */
  stopTokenIds?: readonly number[];
  stop: readonly string[];
  maxTokens: number;
  ignoreEos?: boolean;
  /** Detokenizes ids (called on a short window of recent tokens, an array it must not keep: see IncrementalDecoder). */
  decode: (ids: number[]) => string;
  /**
   * Keep the whole text for `text` (default true). A replica's driver passes false: its clients
   * get the text as deltas, and a sequence's whole text, a string grown a token at a time, lived as
   * long as the sequence (promoted to the old generation, thousands of characters a sequence).
   */
  keepText?: boolean;
}

export interface StopUpdate {
  /** New text to show, never retracted later. */
  delta: string;
  done: boolean;
  finishReason?: FinishReason;
}

/**
 * Aho-Corasick over UTF-16 code units (the units String.indexOf matches on). `feed` consumes new
 * text and reports the earliest-starting stop string that ends inside it; `pending` is the length of
 * the longest suffix of the text so far that is a proper prefix of a stop string (the part to hold
 * back). Transitions follow failure links on demand: amortized O(1) per character.
 */
export class StopMatcher {
  // Goto edges of every node in one open-addressing hash table keyed by (node, code unit): sized
  // once from the total length (an upper bound on the nodes), typed arrays, no per-node objects.
  private readonly mask: number;
  private readonly keyNode: Int32Array;
  private readonly keyUnit: Int32Array;
  private readonly target: Int32Array;
  private readonly fail: Int32Array;
  private readonly depth: Int32Array;
  /** Length of the longest stop string that ends at this node (itself or along its failure links), 0 if none. */
  private readonly longest: Int32Array;
  private nodes = 1;
  private state = 0;
  /** The longest stop string's length. */
  readonly longestPattern: number;
  /** Goto and failure steps taken so far (tests check that it grows with the text, not with the stop strings). */
  steps = 0;

  constructor(patterns: readonly string[]) {
    const total = patterns.reduce((n, p) => n + p.length, 0);
    this.longestPattern = patterns.reduce((n, p) => Math.max(n, p.length), 0);
    let cap = 16;
    while (cap < 2 * (total + 1)) cap *= 2;
    this.mask = cap - 1;
    this.keyNode = new Int32Array(cap).fill(-1);
    this.keyUnit = new Int32Array(cap);
    this.target = new Int32Array(cap);
    this.fail = new Int32Array(total + 1);
    this.depth = new Int32Array(total + 1);
    this.longest = new Int32Array(total + 1);
    const parent = new Int32Array(total + 1);
    const unit = new Int32Array(total + 1);
    for (const p of patterns) {
      let s = 0;
      for (let i = 0; i < p.length; i++) {
        const c = p.charCodeAt(i);
        let t = this.edge(s, c);
        if (t < 0) {
          t = this.nodes++;
          this.addEdge(s, c, t);
          parent[t] = s;
          unit[t] = c;
          this.depth[t] = this.depth[s]! + 1;
        }
        s = t;
      }
      if (s > 0) this.longest[s] = Math.max(this.longest[s]!, p.length);
    }
    // By increasing depth: a node's failure link is the longest proper suffix of its path that is
    // in the trie, found from its parent's (already set) link.
    let maxDepth = 0;
    for (let t = 0; t < this.nodes; t++) maxDepth = Math.max(maxDepth, this.depth[t]!);
    const start = new Int32Array(maxDepth + 2);
    for (let t = 0; t < this.nodes; t++) start[this.depth[t]! + 1]!++;
    for (let d = 1; d <= maxDepth + 1; d++) start[d]! += start[d - 1]!;
    const order = new Int32Array(this.nodes);
    for (let t = 0; t < this.nodes; t++) order[start[this.depth[t]!]!++] = t;
    for (const t of order) {
      if (this.depth[t]! < 2) continue;
      const c = unit[t]!;
      let f = this.fail[parent[t]!]!;
      let g = this.edge(f, c);
      while (g < 0 && f !== 0) {
        f = this.fail[f]!;
        g = this.edge(f, c);
      }
      this.fail[t] = Math.max(g, 0);
      this.longest[t] = Math.max(this.longest[t]!, this.longest[this.fail[t]!]!);
    }
  }

  private slot(node: number, c: number): number {
    return (Math.imul(node, 0x9e3779b1) ^ Math.imul(c + 1, 0x85ebca6b)) & this.mask;
  }

  /** The goto edge (node, c), or -1. */
  private edge(node: number, c: number): number {
    for (let i = this.slot(node, c); ; i = (i + 1) & this.mask) {
      const k = this.keyNode[i]!;
      if (k < 0) return -1;
      if (k === node && this.keyUnit[i] === c) return this.target[i]!;
    }
  }

  private addEdge(node: number, c: number, t: number): void {
    let i = this.slot(node, c);
    while (this.keyNode[i]! >= 0) i = (i + 1) & this.mask;
    this.keyNode[i] = node;
    this.keyUnit[i] = c;
    this.target[i] = t;
  }

  get empty(): boolean {
    return this.nodes === 1;
  }

  /** Characters at the end of the text fed so far that may still become a stop string. */
  get pending(): number {
    return this.depth[this.state]!;
  }

  /**
   * Consumes `text` (which continues the text fed before, starting at offset `at` of it); returns
   * the offset where the earliest-starting stop string that ends inside `text` begins, or -1.
   */
  feed(text: string, at: number): number {
    let s = this.state;
    let cut = -1;
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      let t = this.edge(s, c);
      while (t < 0 && s !== 0) {
        s = this.fail[s]!;
        t = this.edge(s, c);
        this.steps++;
      }
      s = Math.max(t, 0);
      this.steps++;
      const len = this.longest[s]!;
      if (len > 0) {
        // The longest stop string ending here starts earliest among those ending here; a later end
        // may still hold one that starts earlier (a long one around a short one).
        const start = at + i + 1 - len;
        if (cut < 0 || start < cut) cut = start;
      }
    }
    this.state = s;
    return cut;
  }
}

export class StopChecker {
  /** Generated ids, EOS and stop token ids excluded. */
  readonly tokens: number[] = [];
  private readonly decoder: IncrementalDecoder;
  private readonly matcher: StopMatcher;
  /** Length of the decoded text so far (complete characters only). */
  private length = 0;
  /** How much of it was emitted (a prefix: the text only grows, holds only shrink its tail). */
  private emitted = 0;
  /** The text from `emitted` on (what is held back: a stop string's possible start, at most its length). */
  private held = '';
  /** The whole text so far, when kept (keepText). */
  private kept: string | undefined;
  private finalText: string | undefined;
  finishReason: FinishReason | undefined;

  constructor(private readonly opts: StopOptions, decoder?: DecoderState) {
    this.decoder = new IncrementalDecoder(opts.decode, decoder);
    this.matcher = new StopMatcher(opts.stop);
    if (opts.keepText ?? true) this.kept = '';
  }

  /**
   * A checker that has already seen `tokens` (a request replayed after a failover), from their
   * text and decoder window as a tokenizer thread rebuilt them (TokenizerPool.replay): the same
   * state pushing them one by one gives, without doing that work here. None of them ended the
   * sequence (it would not be replayed otherwise).
   */
  static restore(opts: StopOptions, tokens: readonly number[], text: string, decoder: DecoderState): StopChecker {
    const c = new StopChecker(opts, decoder);
    c.tokens.push(...tokens);
    // The automaton's state depends only on the last (longest stop string) characters.
    const tail = Math.max(0, text.length - c.matcher.longestPattern);
    c.matcher.feed(text.slice(tail), tail);
    c.length = text.length;
    c.emitted = text.length - c.matcher.pending;
    c.held = text.slice(c.emitted);
    if (c.kept !== undefined) c.kept = text;
    return c;
  }

  /** Automaton steps taken matching stop strings (see StopMatcher.steps). */
  get matchSteps(): number {
    return this.matcher.steps;
  }

  get done(): boolean {
    return this.finishReason !== undefined;
  }

  /** The visible text: everything emitted, and once done, the text up to the stop string (keepText only). */
  get text(): string {
    if (this.kept === undefined) throw new Error('StopChecker: the text is not kept (keepText: false)');
    return this.finalText ?? this.kept.slice(0, this.emitted);
  }

  /**
   * How `token`, pushed next, ends the sequence whatever its text: EOS or a stop token id, or the
   * last token maxTokens allows. Known as soon as the token is sampled; a stop string only once
   * push() decodes it.
   */
  endsWith(token: number): FinishReason | undefined {
    if (!this.opts.ignoreEos && this.opts.eosTokenIds.includes(token)) return STOP;
    if (this.opts.stopTokenIds?.includes(token)) return STOP;
    if (this.tokens.length + 1 >= this.opts.maxTokens) return LENGTH;
    return undefined;
  }

  push(token: number): StopUpdate {
    if (this.done) throw new Error('StopChecker: push after the sequence finished');
    const ends = this.endsWith(token);
    if (ends === STOP) return this.finish(STOP, this.append(this.decoder.flush()));
    this.tokens.push(token);
    const piece = this.decoder.push(token);
    const cut = this.matcher.feed(piece, this.length);
    this.append(piece);
    if (cut >= 0) return this.finish(STOP, cut);
    if (ends === LENGTH) return this.finish(LENGTH, this.append(this.decoder.flush()));
    // Hold back the longest suffix that is a proper prefix of a stop string (the decoder already
    // holds back incomplete characters).
    return { delta: this.advance(this.length - this.matcher.pending), done: false };
  }

  /** Adds decoded text; returns the new length. */
  private append(piece: string): number {
    if (piece) {
      this.length += piece.length;
      this.held += piece;
      if (this.kept !== undefined) this.kept += piece;
    }
    return this.length;
  }

  // Emits the text up to `visible`, which never goes back (the text only grows; holds only
  // shrink its tail): the start of what is held.
  private advance(visible: number): string {
    if (visible <= this.emitted) return '';
    const n = visible - this.emitted;
    const delta = n === this.held.length ? this.held : this.held.slice(0, n);
    this.held = n === this.held.length ? '' : this.held.slice(n);
    this.emitted = visible;
    return delta;
  }

  /** Ends with the text up to `end` (a stop string's start, or all of it). */
  private finish(reason: FinishReason, end: number): StopUpdate {
    this.finishReason = reason;
    const delta = end > this.emitted ? this.held.slice(0, end - this.emitted) : '';
    if (this.kept !== undefined) this.finalText = this.kept.slice(0, end);
    this.emitted = end;
    this.held = '';
    return { delta, done: true, finishReason: reason };
  }
}
