// The OpenAI-compatible HTTP API of a nodespeed cluster: POST /v1/completions and
// /v1/chat/completions (JSON, or server-sent events with stream: true, as OpenAI sends them),
// GET /v1/models, GET /health (200 only while a replica serves) and GET /metrics when metrics are on.
// Its protection is the gRPC API's (public-auth.ts): the same TLS certificate and client CA, the same
// bearer token (on /v1/* and /metrics; /health stays open for load balancers), and the same
// request limits (--max-request-bytes bounds the body, --max-prompts a batch; the rest are checked
// by validateRequest).
//
// node:http with a small router: five routes do not need a framework, and server-sent events need
// the raw response anyway (their writes are gathered as the gRPC stream's are, and a closed socket
// must cancel the request at once so its KV blocks are freed, as a cancelled gRPC stream does).
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';

import type { TokenTexts } from '../../model/tokenizer-pool.js';
import { CoalescingWriter, joinTokenRun, mergeByKey } from '../../protocol/coalesce.js';
import { LIMIT_FLAGS } from '../../protocol/limits.js';
import { bearerMatches, httpsOptions } from '../public-auth.js';
import type { PublicTls } from '../public-auth.js';
import { ApiError } from './errors.js';
import {
  chatLogprobs, chatLogprobsJson, completionLogprobs, completionLogprobsJson, jsonObject, parseChat, parseCompletion, usage,
} from './openai.js';
import type { FinishReasonName, ParsedChat, ParsedCompletion, ServeRequest, TokenLogprob, Usage } from './openai.js';

/** Tokens of one choice since the previous update (text that might still become a stop string is held back). */
export interface ChoiceUpdate {
  /** prompt index * n + sample index. */
  choice: number;
  tokenIds: number[];
  text: string;
  /** One per token id when the request asked for logprobs. */
  logprobs?: TokenLogprob[];
  finishReason: FinishReasonName | null;
}

export interface ServeSink {
  update(u: ChoiceUpdate): void;
  /** The request cannot complete; its other choices are cancelled by the service. */
  fail(err: ApiError): void;
}

export interface ServeHandle {
  /** Each prompt's ids, as tokenized (chat: the rendered template). */
  promptIds: number[][];
  /** Samples per prompt. */
  n: number;
  /** The request's class priority (lower is more urgent): its echoed prompts are decoded in that order. */
  priority: number;
  /** Its class's stream interval (classes.ts): a stream writes at most once per this many ms; absent or 0: at once. */
  streamIntervalMs?: number;
  cancel(reason: string): void;
}

/** What the HTTP API needs of the coordinator (or of an in-process engine). */
export interface InferenceService {
  readonly modelName: string;
  readonly contextLength: number;
  /** Unix seconds the model was loaded (the models list's `created`). */
  readonly created: number;
  /**
   * Validates and starts a request (prompts are tokenized off the event loop meanwhile); rejects
   * with ApiError when it is refused. `gone` says whether the client left meanwhile: then nothing
   * is admitted and it resolves null.
   */
  submit(req: ServeRequest, sink: ServeSink, gone: () => boolean): Promise<ServeHandle | null>;
  /** Whether a replica serves now (/health). */
  serving(): boolean;
  /** Every token's text (logprob tokens), built once off the event loop. */
  tokenTexts(): Promise<TokenTexts>;
  /** Ids to text, off the event loop (the echo of a prompt given as ids), in `priority` order among what waits for a tokenizer thread. */
  decode(ids: number[], priority?: number): Promise<string>;
  /** Prometheus text exposition, when metrics are on. */
  metrics?: () => Promise<{ contentType: string; body: string }>;
}

export interface HttpApiOptions {
  bind: string;
  /** 0: any free port. */
  port: number;
  /** When set, /v1/* and /metrics need `Authorization: Bearer <token>`. */
  authToken?: string;
  /** HTTPS with this certificate (and client CA: mutual TLS). */
  tls?: PublicTls;
  /** Most bytes a request body may have (--max-request-bytes). */
  maxBodyBytes: number;
  /** Counts what the HTTP API sees (as the gRPC API does). */
  onRequest?: (outcome: { accepted: boolean; status: number }) => void;
}

export interface HttpApi {
  /** host:port it listens on. */
  address: string;
  port: number;
  close(): Promise<void>;
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  sendJsonText(res, status, JSON.stringify(body));
}

function sendJsonText(res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

// A response sent before its request's body was read (413, or an earlier refusal) ends the
// connection: the body is not read into memory, and rather than pull it off the wire for as long
// as the client sends, the socket is given this long to let the client read the answer and stop,
// then closed.
const LINGER_MS = 2000;

/** Whether part of the request's body is still unread. */
function bodyLeft(req: IncomingMessage): boolean {
  return !req.complete && (req.headers['transfer-encoding'] !== undefined || Number(req.headers['content-length'] ?? 0) > 0);
}

function sendError(res: ServerResponse, err: ApiError): void {
  if (res.headersSent) {
    if (!res.writableEnded) res.end();
    return;
  }
  const req = res.req;
  if (bodyLeft(req)) {
    res.setHeader('connection', 'close');
    const socket = req.socket;
    res.once('finish', () => setTimeout(() => socket.destroy(), LINGER_MS).unref());
  }
  sendJson(res, err.status, err);
}

function tooLarge(what: string): ApiError {
  return new ApiError('too_large', `the request body ${what} (${LIMIT_FLAGS.requestBytes})`);
}

/** The body as JSON, read up to `limit` bytes: a longer one is refused (413) from its declared length, or as soon as it passes the limit. */
function readJson(req: IncomingMessage, limit: number): Promise<unknown> {
  const declared = Number(req.headers['content-length'] ?? -1);
  if (declared > limit) return Promise.reject(tooLarge(`is ${declared} bytes, more than the ${limit} bytes accepted`));
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const stop = () => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size <= limit) {
        chunks.push(chunk);
        return;
      }
      // Dropped, and what follows discarded as it arrives (sendError closes the connection).
      stop();
      chunks.length = 0;
      req.resume();
      reject(tooLarge(`is longer than the ${limit} bytes accepted`));
    };
    const onEnd = () => {
      stop();
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
      } catch (err) {
        reject(ApiError.invalid(null, `the request body is not valid JSON (${(err as Error).message})`));
      }
    };
    const onError = (err: Error) => {
      stop();
      reject(err);
    };
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onError);
  });
}

/** What a stream writes: a choice's update (rendered as the endpoint's chunks when written) or a chunk as it is. */
type StreamItem = { update: ChoiceUpdate } | { chunk: unknown };

/** Updates merge per choice (a plain chunk stays in its place, a barrier); the update that finishes a choice is its last. */
const choiceOf = (x: StreamItem) => ('update' in x ? x.update.choice : null);
const unfinished = (last: StreamItem) => (last as { update: ChoiceUpdate }).update.finishReason === null;

/** One choice's updates as one (protocol/coalesce.ts joinTokenRun: its tokens, text and logprobs in order, the last's finish reason). */
const mergeUpdates = (run: StreamItem[]): StreamItem => ({ update: joinTokenRun(run.map((x) => (x as { update: ChoiceUpdate }).update)) });

/**
 * Server-sent events as OpenAI writes them: `data: <json>\n\n` per chunk, `data: [DONE]\n\n` last.
 * One write is in flight at a time, as on the gRPC Generate stream (protocol/coalesce.ts): what is
 * sent meanwhile -- the rest of a turn of the event loop, or everything while a client reads
 * slower than its tokens come -- goes out in one write after it, each choice's updates as one
 * event (a delta of several tokens, as OpenAI's own streams send), so a busy coordinator writes a
 * stream once a turn instead of once a token.
 */
class EventStream {
  private readonly out: CoalescingWriter<StreamItem[]>;
  /** The class's stream interval, in force from the first update on (the opening chunks do not hold back the first token). */
  private paceMs: number | undefined;

  /**
   * `render`: an update's chunks, rendered in order as they are written; `failed`: rendering threw
   * (our fault: the caller ends the stream with an error chunk).
   */
  constructor(private readonly res: ServerResponse, render: (u: ChoiceUpdate) => unknown[], failed: (err: Error) => void, paceMs = 0) {
    this.paceMs = paceMs;
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive' });
    res.flushHeaders();
    const text = (items: StreamItem[]) => items.flatMap((x) => ('update' in x ? render(x.update) : [x.chunk])).map((c) => `data: ${JSON.stringify(c)}\n\n`).join('');
    this.out = new CoalescingWriter((items, done) => {
      if (res.writableEnded || res.destroyed) return done();
      let t: string;
      try {
        t = text(items);
      } catch (err) {
        failed(err as Error);  // its error chunk goes out next, after what is in flight
        done();
        return;
      }
      if (!t) return done();
      // A socket write completes at once (a tick later) unless the client's buffers are full, so
      // it counts as in flight until the next turn of the event loop (what the turn sends after it
      // is gathered, as a gRPC stream's write takes a turn), or until the socket drains.
      res.write(t, (err) => {
        if (err) return done(err);
        if (!res.writableNeedDrain) return void setImmediate(done);
        const go = () => {
          res.off('drain', go);
          res.off('close', go);
          done();
        };
        res.on('drain', go);
        res.on('close', go);
      });
    }, (lists) => [mergeByKey(lists.flat(), choiceOf, unfinished, mergeUpdates)]);
  }

  send(chunk: unknown): void {
    this.out.send([{ chunk }]);
  }

  update(u: ChoiceUpdate): void {
    if (this.paceMs !== undefined) {
      this.out.pace(this.paceMs);
      this.paceMs = undefined;
    }
    this.out.send([{ update: u }]);
  }

  /** Ends the stream after everything sent: [DONE]. */
  done(): void {
    this.out.whenIdle(() => {
      if (this.res.writableEnded || this.res.destroyed) return;
      this.res.write('data: [DONE]\n\n');
      this.res.end();
    }, null);
  }
}

interface ChoiceState {
  text: string;
  tokens: number;
  logprobs: TokenLogprob[];
  finish: FinishReasonName | null;
}

/**
 * Runs one request against the service and turns its choice updates into OpenAI responses; `render`
 * supplies the endpoint's shapes. Cancels the request when the client goes away first. A refusal
 * (ApiError) rejects before anything is written, so the caller answers it as JSON.
 */
async function run(service: InferenceService, req: IncomingMessage, res: ServerResponse, parsed: ParsedCompletion | ParsedChat,
  render: Renderer): Promise<void> {
  // The socket closing before the response ended: the client is gone (or cancelled), also while
  // the request is still being validated (then nothing is admitted).
  let gone = false;
  let onGone: (() => void) | undefined;
  res.on('close', () => {
    gone = true;
    onGone?.();
  });
  req.on('aborted', () => res.destroy());
  // What arrives before submit() resolves waits until the response is set up.
  const early: ChoiceUpdate[] = [];
  let earlyFail: ApiError | undefined;
  let sink: ServeSink = { update: (u) => void early.push(u), fail: (err) => void (earlyFail ??= err) };
  const handle = await service.submit(parsed.req, { update: (u) => sink.update(u), fail: (err) => sink.fail(err) }, () => gone);
  if (!handle) return;
  // Token texts and echoed prompts come from the tokenizer threads; updates wait in `early` meanwhile.
  try {
    await render.prepare(handle);
  } catch (err) {
    handle.cancel('internal error');
    throw err;
  }
  await new Promise<void>((resolve) => {
    let finished = false;
    let stream: EventStream | undefined;
    const states: ChoiceState[] = [];
    for (let i = 0; i < handle.promptIds.length * handle.n; i++) states.push({ text: '', tokens: 0, logprobs: [], finish: null });
    const finish = () => {
      finished = true;
      resolve();
    };
    const take = (u: ChoiceUpdate) => {
      const st = states[u.choice]!;
      st.text += u.text;
      st.tokens += u.tokenIds.length;
      if (u.logprobs) st.logprobs.push(...u.logprobs);
      if (u.finishReason) st.finish = u.finishReason;
      stream?.update(u);
      if (!states.every((s) => s.finish)) return;
      if (stream) {
        const end = render.usageChunk(handle, states);
        if (end) stream.send(end);
        stream.done();
        finish();
        return;
      }
      // Every sequence is done: nothing is left to cancel while the answer is rendered.
      finished = true;
      render.response(handle, states).then((body) => sendJsonText(res, 200, body),
        (err: unknown) => sendError(res, new ApiError('internal', `internal error: ${(err as Error).message}`))).finally(resolve);
    };
    sink = {
      update: (u) => {
        if (finished) return;
        try {
          take(u);
        } catch (err) {
          // Our fault, not the client's: end its response (500) and free what it holds.
          handle.cancel('internal error');
          sink.fail(new ApiError('internal', `internal error: ${(err as Error).message}`));
        }
      },
      fail: (err) => {
        if (finished) return;
        if (stream) {
          stream.send(err.toJSON());
          stream.done();
        } else {
          sendError(res, err);
        }
        finish();
      },
    };
    onGone = () => {
      if (finished) return;
      finished = true;
      handle.cancel('client disconnected');
      resolve();
    };
    if (gone) {
      onGone();
      return;
    }
    if (parsed.stream) {
      // Updates are rendered as they are written, maybe after the stream was told to end.
      const failed = (err: Error) => {
        handle.cancel('internal error');
        stream!.send(new ApiError('internal', `internal error: ${err.message}`).toJSON());
        stream!.done();
        finish();
      };
      stream = new EventStream(res, (u) => render.chunks(u, handle), failed, handle.streamIntervalMs);
      for (const c of render.opening(handle)) stream.send(c);
    }
    for (const u of early.splice(0)) sink.update(u);
    if (earlyFail) sink.fail(earlyFail);
  });
}

interface Renderer {
  /** Fetches what rendering needs off the event loop (token texts, echoed prompts), before the first update is rendered. */
  prepare(h: ServeHandle): Promise<void>;
  opening(h: ServeHandle): unknown[];
  chunks(u: ChoiceUpdate, h: ServeHandle): unknown[];
  usageChunk(h: ServeHandle, states: ChoiceState[]): unknown | null;
  /** The non-streamed answer as JSON text (its logprobs rendered a slice at a time, the event loop served between slices). */
  response(h: ServeHandle, states: ChoiceState[]): Promise<string>;
}

/** A non-streamed answer: its id, object, created and model, its choices (JSON text each), its usage. */
function answerJson(head: Record<string, unknown>, choices: string[], u: Usage): string {
  return jsonObject([...Object.entries(head).map(([k, v]): [string, string] => [k, JSON.stringify(v)]), ['choices', `[${choices.join(',')}]`],
    ['usage', JSON.stringify(u)]]);
}

const newId = (prefix: string) => `${prefix}-${randomBytes(12).toString('hex')}`;
const promptTokens = (h: ServeHandle) => h.promptIds.reduce((a, p) => a + p.length, 0);
const completionTokens = (states: ChoiceState[]) => states.reduce((a, s) => a + s.tokens, 0);

function completionRenderer(service: InferenceService, p: ParsedCompletion): Renderer {
  let texts: TokenTexts | undefined;
  const tokenText = (t: number) => texts!.text(t);
  const id = newId('cmpl');
  const created = Math.floor(Date.now() / 1000);
  const model = service.modelName;
  const withLogprobs = p.req.logprobs !== undefined;
  // Each prompt's echo: its text as given, or its ids decoded (prepare).
  const echoText: string[] = [];
  const prefix = (h: ServeHandle, choice: number) => (p.echo ? echoText[Math.floor(choice / h.n)]! : '');
  const base = { id, object: 'text_completion', created, model };
  const usageNull = p.includeUsage ? { usage: null } : {};
  const sent = new Set<number>();  // choices whose echoed prompt went out
  const offsets = new Map<number, number>();
  return {
    prepare: async (h) => {
      if (withLogprobs) texts = await service.tokenTexts();
      if (p.echo) echoText.push(...await Promise.all(p.req.prompts.map((given, i) => ('text' in given ? given.text : service.decode(h.promptIds[i]!, h.priority)))));
    },
    opening: () => [],
    chunks: (u, h) => {
      let text = u.text;
      if (p.echo && !sent.has(u.choice)) {
        sent.add(u.choice);
        text = prefix(h, u.choice) + text;
      }
      if (!text && !u.finishReason && !u.tokenIds.length) return [];
      let logprobs = null;
      if (withLogprobs && u.logprobs) {
        const off = offsets.get(u.choice) ?? prefix(h, u.choice).length;
        logprobs = completionLogprobs(u.logprobs, tokenText, off);
        offsets.set(u.choice, off + logprobs.tokens.reduce((a, s) => a + s.length, 0));
      }
      return [{ ...base, choices: [{ index: u.choice, text, logprobs, finish_reason: u.finishReason }], ...usageNull }];
    },
    usageChunk: (h, states) => (p.includeUsage ? { ...base, choices: [], usage: usage(promptTokens(h), completionTokens(states)) } : null),
    response: async (h, states) => {
      const choices: string[] = [];
      for (const [i, s] of states.entries()) {
        const logprobs = withLogprobs ? await completionLogprobsJson(s.logprobs, tokenText, prefix(h, i).length) : 'null';
        choices.push(jsonObject([['index', String(i)], ['text', JSON.stringify(prefix(h, i) + s.text)], ['finish_reason', JSON.stringify(s.finish)],
          ['logprobs', logprobs]]));
      }
      return answerJson(base, choices, usage(promptTokens(h), completionTokens(states)));
    },
  };
}

function chatRenderer(service: InferenceService, p: ParsedChat): Renderer {
  let texts: TokenTexts | undefined;
  const tokenText = (t: number) => texts!.text(t);
  const id = newId('chatcmpl');
  const created = Math.floor(Date.now() / 1000);
  const base = { id, object: 'chat.completion.chunk', created, model: service.modelName };
  const usageNull = p.includeUsage ? { usage: null } : {};
  const withLogprobs = p.req.logprobs !== undefined;
  return {
    prepare: async () => {
      if (withLogprobs) texts = await service.tokenTexts();
    },
    // OpenAI opens every choice with the assistant role and empty content.
    opening: (h) => Array.from({ length: h.promptIds.length * h.n }, (_, i) => ({
      ...base, choices: [{ index: i, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }], ...usageNull,
    })),
    chunks: (u) => {
      const out: unknown[] = [];
      const lp = withLogprobs && u.logprobs ? { content: chatLogprobs(u.logprobs, tokenText) } : null;
      if (u.text || (lp && lp.content.length)) out.push({ ...base, choices: [{ index: u.choice, delta: { content: u.text }, logprobs: lp, finish_reason: null }], ...usageNull });
      if (u.finishReason) out.push({ ...base, choices: [{ index: u.choice, delta: {}, logprobs: null, finish_reason: u.finishReason }], ...usageNull });
      return out;
    },
    usageChunk: (h, states) => (p.includeUsage ? { ...base, choices: [], usage: usage(promptTokens(h), completionTokens(states)) } : null),
    response: async (h, states) => {
      const choices: string[] = [];
      for (const [i, s] of states.entries()) {
        const logprobs = withLogprobs ? jsonObject([['content', await chatLogprobsJson(s.logprobs, tokenText)]]) : 'null';
        choices.push(jsonObject([['index', String(i)], ['message', JSON.stringify({ role: 'assistant', content: s.text })],
          ['finish_reason', JSON.stringify(s.finish)], ['logprobs', logprobs]]));
      }
      return answerJson({ ...base, object: 'chat.completion' }, choices, usage(promptTokens(h), completionTokens(states)));
    },
  };
}

function authorized(req: IncomingMessage, token: string | undefined): boolean {
  return !token || bearerMatches(req.headers.authorization, token);
}

export async function serveHttpApi(service: InferenceService, o: HttpApiOptions): Promise<HttpApi> {
  const limit = o.maxBodyBytes;
  const models = () => ({
    object: 'list',
    data: [{ id: service.modelName, object: 'model', created: service.created, owned_by: 'nodespeed', max_model_len: service.contextLength }],
  });

  async function route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0]!.replace(/\/+$/, '') || '/';
    const method = req.method ?? 'GET';
    const allow = (m: string) => {
      if (method === m) return true;
      res.setHeader('allow', m);
      sendError(res, new ApiError('method', `${path} takes ${m}, not ${method}`));
      return false;
    };
    if (path === '/health') {
      if (!allow('GET')) return;
      if (service.serving()) sendJson(res, 200, {});
      else sendError(res, new ApiError('unavailable', 'no replica is serving'));
      return;
    }
    if (path === '/metrics' && service.metrics) {
      if (!allow('GET')) return;
      if (!authorized(req, o.authToken)) throw new ApiError('unauthenticated', 'authorization: a valid "Bearer <token>" is required');
      const m = await service.metrics();
      res.writeHead(200, { 'content-type': m.contentType });
      res.end(m.body);
      return;
    }
    if (!path.startsWith('/v1/')) throw new ApiError('not_found', `no route ${method} ${path}`, null);
    if (!authorized(req, o.authToken)) throw new ApiError('unauthenticated', 'authorization: a valid "Bearer <token>" is required');
    if (path === '/v1/models') {
      if (allow('GET')) sendJson(res, 200, models());
      return;
    }
    if (path.startsWith('/v1/models/')) {
      if (!allow('GET')) return;
      const want = decodeURIComponent(path.slice('/v1/models/'.length));
      if (want !== service.modelName) throw new ApiError('not_found', `the model ${JSON.stringify(want)} does not exist (this server serves ${JSON.stringify(service.modelName)})`, 'model');
      sendJson(res, 200, models().data[0]);
      return;
    }
    if (path === '/v1/completions' || path === '/v1/chat/completions') {
      if (!allow('POST')) return;
      const body = await readJson(req, limit);
      if (path === '/v1/completions') {
        const p = parseCompletion(body);
        await run(service, req, res, p, completionRenderer(service, p));
      } else {
        const p = parseChat(body);
        await run(service, req, res, p, chatRenderer(service, p));
      }
      return;
    }
    throw new ApiError('not_found', `no route ${method} ${path}`);
  }

  const handler = (req: IncomingMessage, res: ServerResponse) => {
    res.on('finish', () => o.onRequest?.({ accepted: res.statusCode < 400, status: res.statusCode }));
    route(req, res).catch((err: unknown) => {
      // Anything that is not an ApiError is our fault: 500, never for bad input (parsers throw ApiError).
      sendError(res, err instanceof ApiError ? err : new ApiError('internal', `internal error: ${(err as Error).message}`));
    });
  };
  const server: Server = o.tls ? createHttpsServer(httpsOptions(o.tls), handler) : createServer(handler);
  // A client that asks before sending its body (Expect: 100-continue, as curl does past 1 MB) is told
  // to go on only when the declared body may fit; otherwise it gets the 413 without sending it.
  server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => {
    if (!(Number(req.headers['content-length'] ?? -1) > limit)) res.writeContinue();
    handler(req, res);
  });
  server.keepAliveTimeout = 65_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port, o.bind, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const a = server.address() as AddressInfo;
  const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
  return {
    address: `${host}:${a.port}`, port: a.port,
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
}
