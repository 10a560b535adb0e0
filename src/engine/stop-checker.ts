// Decides when a sequence is finished (EOS or a stop token id, stop string in the decoded text, max tokens) and
// which part of the decoded text is safe to stream: text that might still turn into a stop
// string, or ends in an incomplete UTF-8 character, is held back until it is settled.

import { IncrementalDecoder } from '../model/tokenizer.js';
import { FinishReason } from '../protocol/lifecycle.js';

const { FINISH_REASON_STOP: STOP, FINISH_REASON_LENGTH: LENGTH } = FinishReason;

export interface StopOptions {
  eosTokenIds: readonly number[];
  /** Ids that end the sequence like EOS (also with ignoreEos), left out of the output likewise. */
  stopTokenIds?: readonly number[];
  stop: readonly string[];
  maxTokens: number;
  ignoreEos?: boolean;
  /** Detokenizes ids (called on a short window of recent tokens, see IncrementalDecoder). */
  decode: (ids: number[]) => string;
}

export interface StopUpdate {
  /** New text to show, never retracted later. */
  delta: string;
  done: boolean;
  finishReason?: FinishReason;
}

export class StopChecker {
  /** Generated ids, EOS and stop token ids excluded. */
  readonly tokens: number[] = [];
  private readonly decoder: IncrementalDecoder;
  private full = '';  // decoded text so far (complete characters only)
  private emitted = '';
  private finalText: string | undefined;
  finishReason: FinishReason | undefined;

  constructor(private readonly opts: StopOptions) {
    this.decoder = new IncrementalDecoder(opts.decode);
  }

  get done(): boolean {
    return this.finishReason !== undefined;
  }

  /** The visible text: everything emitted, and once done, the text up to the stop string. */
  get text(): string {
    return this.finalText ?? this.emitted;
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
    if (ends === STOP) return this.finish(STOP, this.full + this.decoder.flush());
    this.tokens.push(token);
    const before = this.full.length;
    this.full += this.decoder.push(token);
    let cut = -1;
    for (const s of this.opts.stop) {
      const at = this.full.indexOf(s, Math.max(0, before - s.length + 1));
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) return this.finish(STOP, this.full.slice(0, cut));
    if (ends === LENGTH) return this.finish(LENGTH, this.full + this.decoder.flush());
    return { delta: this.advance(this.settled(this.full)), done: false };
  }

  // `full` minus the longest suffix that is a proper prefix of a stop string (the decoder already
  // holds back incomplete characters).
  private settled(full: string): string {
    const end = full.length;
    let hold = 0;
    for (const s of this.opts.stop)
      for (let k = Math.min(s.length - 1, end); k > hold; k--)
        if (full.slice(end - k, end) === s.slice(0, k)) {
          hold = k;
          break;
        }
    return full.slice(0, end - hold);
  }

  // `visible` always extends what was emitted (full text only grows; holds only shrink its tail).
  private advance(visible: string): string {
    if (visible.length <= this.emitted.length) return '';
    const delta = visible.slice(this.emitted.length);
    this.emitted = visible;
    return delta;
  }

  private finish(reason: FinishReason, text: string): StopUpdate {
    this.finishReason = reason;
    const delta = text.length > this.emitted.length ? text.slice(this.emitted.length) : '';
    this.emitted = text;
    this.finalText = text;
    return { delta, done: true, finishReason: reason };
  }
}
