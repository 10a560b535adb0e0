// Tokenizing and detokenizing off the event loop: a few worker threads, each with its own copy of
// the model's tokenizer. The coordinator encodes prompts (and renders chat templates) here and a
// replica's driver rebuilds a replayed request's text here, so neither a long prompt nor a long
// replay can hold the thread that sends and judges heartbeats. The work per request is bounded
// by the request limits (protocol/limits.ts); this keeps even that bounded work off the loop.
//
// Tasks wait here, not in a thread's message queue, most urgent first (a request's class priority:
// lower goes first; first come, first served within one), and each thread holds at most
// THREAD_DEPTH of them: a realtime prompt that arrives behind a flood's hundreds waits for the tasks
// the threads already hold, not for the flood. Two a thread, so a thread has its next task at hand
// when it finishes one instead of idling while the answer crosses to a busy event loop and back.
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

/** Tasks a thread holds at once (the one it runs and the next). */
const THREAD_DEPTH = 2;

interface Thread {
  worker: Worker;
  busy: number;
  dead: boolean;
}

/** Where a task goes among the waiting ones: a priority (lower is more urgent; a request's class priority). */
export interface TaskOrder {
  priority?: number;
}

interface Waiting {
  id: number;
  task: TokenizerTask;
  priority: number;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
}

export class TokenizerPool {
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; thread: Thread }>();
  /** Tasks no thread holds yet, most urgent first, in arrival order within a priority. */
  private readonly waiting: Waiting[] = [];
  private nextId = 1;
  private closed = false;

  private constructor(private readonly threads: Thread[]) {
    for (const t of threads) {
      t.worker.on('message', (m: { id: number; ok: boolean; value?: unknown; error?: string; chatTemplate?: ChatTemplateError['kind'] }) => {
        const p = this.pending.get(m.id);
        if (!p) return;
        this.pending.delete(m.id);
        t.busy--;
        this.dispatch();
        if (m.ok) p.resolve(m.value);
        // A chat the template cannot render is the request's fault (400), not the server's: it keeps its class.
        else p.reject(m.chatTemplate ? new ChatTemplateError(m.error ?? '', m.chatTemplate) : new Error(m.error));
      });
      t.worker.on('error', (err) => this.failThread(t, err));
      t.worker.on('exit', (code) => this.failThread(t, new Error(`tokenizer thread exited (code ${code})`)));
    }
  }

  /** Tasks waiting for a thread (not those the threads hold). */
  get backlog(): number {
    return this.waiting.length;
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
        res({ worker, busy: 0, dead: false });
      });
    })));
    return new TokenizerPool(started);
  }

  /** A thread that died fails the tasks it held; the others carry on, and with none left every waiting task fails. */
  private failThread(t: Thread, err: Error): void {
    if (t.dead) return;
    t.dead = true;
    const why = (e: Error) => (this.closed ? new Error('tokenizer pool closed') : e);
    for (const [id, p] of this.pending) {
      if (p.thread !== t) continue;
      this.pending.delete(id);
      p.reject(why(err));
    }
    if (this.threads.every((x) => x.dead)) for (const w of this.waiting.splice(0)) w.reject(why(new Error(`no tokenizer thread is left (${err.message})`)));
  }

  private run<T>(task: TokenizerTask, priority = 0): Promise<T> {
    if (this.closed) return Promise.reject(new Error('tokenizer pool closed'));
    if (this.threads.every((t) => t.dead)) return Promise.reject(new Error('no tokenizer thread is left'));
    return new Promise<T>((resolve, reject) => {
      // After every waiting task of the same or a more urgent priority (binary search: a flood's backlog can be long).
      let lo = 0;
      let hi = this.waiting.length;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (this.waiting[mid]!.priority <= priority) lo = mid + 1;
        else hi = mid;
      }
      this.waiting.splice(lo, 0, { id: this.nextId++, task, priority, resolve: resolve as (v: unknown) => void, reject });
      this.dispatch();
    });
  }

  /** Hands the most urgent waiting tasks to the least busy live threads, up to THREAD_DEPTH each. */
  private dispatch(): void {
    while (this.waiting.length) {
      let thread: Thread | undefined;
      for (const t of this.threads) if (!t.dead && t.busy < THREAD_DEPTH && (!thread || t.busy < thread.busy)) thread = t;
      if (!thread) return;
      const w = this.waiting.shift()!;
      thread.busy++;
      this.pending.set(w.id, { resolve: w.resolve, reject: w.reject, thread });
      thread.worker.postMessage({ id: w.id, task: w.task });
    }
  }

  encode(text: string, opts: { addSpecialTokens?: boolean } & TaskOrder = {}): Promise<number[]> {
    const { priority, ...o } = opts;
    return this.run({ op: 'encode', text, ...o }, priority);
  }

  /** The chat rendered with the model's template and tokenized; rejects with ChatTemplateError when it cannot be rendered. */
  encodeChat(messages: ChatMessage[], options?: ChatRenderOptions, order?: TaskOrder): Promise<number[]> {
    return this.run({ op: 'encodeChat', messages, ...(options ? { options } : {}) }, order?.priority);
  }

  decode(ids: number[], opts: { skipSpecialTokens?: boolean } & TaskOrder = {}): Promise<string> {
    const { priority, ...o } = opts;
    return this.run({ op: 'decode', ids, ...o }, priority);
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
    for (const w of this.waiting.splice(0)) w.reject(new Error('tokenizer pool closed'));
    await Promise.all(this.threads.map((t) => t.worker.terminate()));
  }
}
