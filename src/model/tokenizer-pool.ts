// Tokenizing and detokenizing off the event loop: a few worker threads, each with its own copy of
// the model's tokenizer. The coordinator encodes prompts (and renders chat templates) here and a
// replica's driver rebuilds a replayed request's text here, so neither a long prompt nor a long
// replay can hold the thread that sends and judges heartbeats. The work per request is bounded
// by the request limits (protocol/limits.ts); this keeps even that bounded work off the loop.
import { availableParallelism } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';

import { ChatTemplateError } from './chat-template.js';
import type { ChatMessage, ChatRenderOptions } from './chat-template.js';
import type { DecoderState } from './tokenizer.js';

export type TokenizerTask =
  | { op: 'encode'; text: string; addSpecialTokens?: boolean }
  | { op: 'encodeChat'; messages: ChatMessage[]; options?: ChatRenderOptions }
  | { op: 'decode'; ids: number[]; skipSpecialTokens?: boolean }
  | { op: 'replay'; ids: number[] }
  | { op: 'tokenTexts'; size: number };

/** Every token's text (the tokenizer's decode of that one id), in one string: token i is text[offsets[i], offsets[i + 1]). */
export interface TokenTextsData {
  text: string;
  offsets: Uint32Array;
}

/**
 * Token id -> its text, as the tokenizer decodes that one id: what the HTTP API reports as a logprob's
 * token. Built once, on a tokenizer thread, so naming the top-20 alternatives of every token of a
 * long answer costs the event loop one substring each instead of a decode each.
 */
export class TokenTexts {
  constructor(private readonly data: TokenTextsData) {}

  get size(): number {
    return this.data.offsets.length - 1;
  }

  /** The text of `id` ('' outside the vocabulary, as decoding an unknown id gives). */
  text(id: number): string {
    const o = this.data.offsets;
    if (!(id >= 0 && id < o.length - 1)) return '';
    return this.data.text.slice(o[id], o[id + 1]);
  }
}

/** A replayed request's detokenized text and the decoder window to go on from (StopChecker.restore). */
export interface ReplayedText {
  text: string;
  decoder: DecoderState;
}

// The compiled thread script: the pool runs from dist/ in a job, and tests that import the
// sources still start the built thread (the serving path needs the build anyway).
const THREAD_SCRIPT = join(resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', 'dist', 'model', 'tokenizer-thread.js'));

interface Thread {
  worker: Worker;
  busy: number;
}

export class TokenizerPool {
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; thread: Thread }>();
  private nextId = 1;
  private closed = false;

  private constructor(private readonly threads: Thread[]) {
    for (const t of threads) {
      t.worker.on('message', (m: { id: number; ok: boolean; value?: unknown; error?: string; chatTemplate?: ChatTemplateError['kind'] }) => {
        const p = this.pending.get(m.id);
        if (!p) return;
        this.pending.delete(m.id);
        t.busy--;
        if (m.ok) p.resolve(m.value);
        // A chat the template cannot render is the request's fault (400), not the server's: it keeps its class.
        else p.reject(m.chatTemplate ? new ChatTemplateError(m.error ?? '', m.chatTemplate) : new Error(m.error));
      });
      t.worker.on('error', (err) => this.failThread(t, err));
      t.worker.on('exit', (code) => this.failThread(t, new Error(`tokenizer thread exited (code ${code})`)));
    }
  }

  /** Starts `threads` threads (default: 2, or 1 on a single core) with the tokenizer of `dir`, each loaded before this resolves. */
  static async start(dir: string, threads = Math.max(1, Math.min(2, availableParallelism() - 1))): Promise<TokenizerPool> {
    const started = await Promise.all(Array.from({ length: threads }, () => new Promise<Thread>((res, rej) => {
      const worker = new Worker(THREAD_SCRIPT, { workerData: { dir }, execArgv: [] });
      const onError = (err: Error) => rej(new Error(`tokenizer thread for ${dir}: ${err.message}`));
      worker.once('error', onError);
      worker.once('message', (m: { ready?: boolean }) => {
        if (!m.ready) return;
        worker.off('error', onError);
        worker.unref();
        res({ worker, busy: 0 });
      });
    })));
    return new TokenizerPool(started);
  }

  private failThread(t: Thread, err: Error): void {
    for (const [id, p] of this.pending) {
      if (p.thread !== t) continue;
      this.pending.delete(id);
      p.reject(this.closed ? new Error('tokenizer pool closed') : err);
    }
  }

  private run<T>(task: TokenizerTask): Promise<T> {
    if (this.closed) return Promise.reject(new Error('tokenizer pool closed'));
    const thread = this.threads.reduce((a, b) => (b.busy < a.busy ? b : a));
    const id = this.nextId++;
    thread.busy++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, thread });
      thread.worker.postMessage({ id, task });
    });
  }

  encode(text: string, opts: { addSpecialTokens?: boolean } = {}): Promise<number[]> {
    return this.run({ op: 'encode', text, ...opts });
  }

  /** The chat rendered with the model's template and tokenized; rejects with ChatTemplateError when it cannot be rendered. */
  encodeChat(messages: ChatMessage[], options?: ChatRenderOptions): Promise<number[]> {
    return this.run({ op: 'encodeChat', messages, ...(options ? { options } : {}) });
  }

  decode(ids: number[], opts: { skipSpecialTokens?: boolean } = {}): Promise<string> {
    return this.run({ op: 'decode', ids, ...opts });
  }

  /** Every token's text, ids 0 to size - 1 (size: the model's vocabulary, which may exceed the tokenizer's). */
  async tokenTexts(size: number): Promise<TokenTexts> {
    return new TokenTexts(await this.run<TokenTextsData>({ op: 'tokenTexts', size }));
  }

  /** The text a stop checker's decoder produces for `ids`, and where it stands after them. */
  replay(ids: number[]): Promise<ReplayedText> {
    return this.run({ op: 'replay', ids });
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.threads.map((t) => t.worker.terminate()));
  }
}
