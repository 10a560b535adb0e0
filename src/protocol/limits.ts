// Bounded work per request, and the one bound on control-plane messages.
//
// A request may cost only a bounded amount of work before it is refused: its bytes on the wire,
// its prompt's bytes before tokenizing (a prompt longer than the context could ever hold is
// refused without running the tokenizer over it), its stop strings (count and total length), n,
// logprobs, and the sequences it starts (a batch of prompts times n). Every limit is answered INVALID_ARGUMENT (HTTP 400) with a message naming the field and
// the flag that raises it.
//
// What the coordinator forwards to a driver (Submit: prompt, replayed tokens, stop strings) follows
// from these limits and the model's context, so it can be bounded ahead: `submitBytesBound` is
// checked against CONTROL_MAX_MESSAGE_BYTES when the coordinator starts, and both ends of every
// control stream are configured from that one constant (controlChannelOptions), so no message
// between the coordinator and a worker can exceed what its receiver accepts.

/** The largest message either end of a control stream sends or accepts. */
export const CONTROL_MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

/** gRPC channel/server options for both ends of the control plane, from the one constant. */
export function controlChannelOptions(): Record<string, number> {
  return {
    'grpc.max_receive_message_length': CONTROL_MAX_MESSAGE_BYTES,
    'grpc.max_send_message_length': CONTROL_MAX_MESSAGE_BYTES,
  };
}

export interface RequestLimits {
  /** --max-request-bytes: the largest public request (a gRPC message, an HTTP body). */
  requestBytes: number;
  /** --max-stop-strings: stop strings per request. */
  stopStrings: number;
  /** --max-stop-chars: their total length, in characters (UTF-16 code units). */
  stopChars: number;
  /** --max-n: completions per request. */
  n: number;
  /** --max-logprobs: top log-probabilities per token. */
  logprobs: number;
  /** --max-prompts: prompts one request batches, and the sequences it starts (prompts × n). */
  prompts: number;
}

/**
 * Request bytes as TGI's --payload-limit (2 MB; a 128K-token prompt is ~0.5 MB of text or of
 * varint ids); stop strings: OpenAI and TGI allow 4, vLLM sets no limit, so 16 strings of 4,096
 * characters in total leaves room for what clients send while bounding the automaton and the
 * Submit message; n: 16; logprobs: vLLM's --max-logprobs default, 20. Prompts: OpenAI takes up to
 * 2,048 prompts per completion request and vLLM sets no limit, but every sequence is a place in the
 * cluster's queue (--max-queue, 1,024 by default): 256 sequences (prompts × n) lets one request take
 * at most a quarter of it, four times the batches evaluation harnesses send (lm-eval's batch_size
 * 1 to 64), while the prompts' text together stays within the request bytes.
 */
export const DEFAULT_REQUEST_LIMITS: Readonly<RequestLimits> = Object.freeze({
  requestBytes: 2 * 1024 * 1024, stopStrings: 16, stopChars: 4096, n: 16, logprobs: 20, prompts: 256,
});

/** The flag that raises each limit (named in refusals). */
export const LIMIT_FLAGS: Readonly<Record<keyof RequestLimits, string>> = Object.freeze({
  requestBytes: '--max-request-bytes', stopStrings: '--max-stop-strings', stopChars: '--max-stop-chars', n: '--max-n', logprobs: '--max-logprobs',
  prompts: '--max-prompts',
});

/** A request over a limit: `field` is the request field it is about (proto / JSON name). */
export class LimitError extends Error {
  constructor(readonly field: string, message: string) {
    super(`${field}: ${message}`);
    this.name = 'LimitError';
  }
}

/**
 * The most bytes a prompt can have and still fit the context: every token stands for at most
 * `maxTokenBytes` bytes of text (the longest entry of the vocabulary, added tokens included), so a
 * longer prompt holds more tokens than the context. Checked before tokenizing.
 */
export function promptBytesLimit(contextLength: number, maxTokenBytes: number): number {
  return contextLength * Math.max(1, maxTokenBytes);
}

export interface RequestSize {
  /** Prompt text, when the request has one (its UTF-8 length is what is checked). */
  prompt?: string;
  stop?: readonly string[];
  n?: number;
  logprobs?: number;
  /** Prompts batched in the request (an HTTP completion's list); absent: one. */
  prompts?: number;
}

/** Throws LimitError for the first limit the request exceeds. */
export function checkRequestLimits(r: RequestSize, limits: RequestLimits, promptBytes: number): void {
  if (r.prompt !== undefined) {
    // Each UTF-16 code unit is 1 to 3 bytes of UTF-8: only a prompt between the two bounds is
    // counted, so a huge one is refused without even a pass over it.
    const n = r.prompt.length;
    const bytes = n > promptBytes ? n : n * 3 <= promptBytes ? 0 : Buffer.byteLength(r.prompt, 'utf8');
    if (bytes > promptBytes)
      throw new LimitError('prompt', `is ${n > promptBytes ? 'at least ' : ''}${bytes} bytes, more than the ${promptBytes} bytes the model's context ` +
        'can hold (context length × the longest token of the vocabulary); it was not tokenized');
  }
  const stop = r.stop ?? [];
  if (stop.length > limits.stopStrings)
    throw new LimitError('stop', `${stop.length} stop strings, more than ${limits.stopStrings} (${LIMIT_FLAGS.stopStrings})`);
  let chars = 0;
  for (const s of stop) chars += s.length;
  if (chars > limits.stopChars)
    throw new LimitError('stop', `${chars} characters of stop strings in total, more than ${limits.stopChars} (${LIMIT_FLAGS.stopChars})`);
  if (r.prompts !== undefined && r.prompts > limits.prompts)
    throw new LimitError('prompt', `${r.prompts} prompts, more than ${limits.prompts} (${LIMIT_FLAGS.prompts})`);
  if (r.n !== undefined && r.n > limits.n) throw new LimitError('n', `is ${r.n}, more than ${limits.n} (${LIMIT_FLAGS.n})`);
  const sequences = (r.prompts ?? 1) * (r.n ?? 1);
  if (sequences > limits.prompts)
    throw new LimitError('n', `${r.prompts ?? 1} prompts × n ${r.n ?? 1} = ${sequences} sequences, more than ${limits.prompts} (${LIMIT_FLAGS.prompts})`);
  if (r.logprobs !== undefined && r.logprobs > limits.logprobs)
    throw new LimitError('logprobs', `is ${r.logprobs}, more than ${limits.logprobs} (${LIMIT_FLAGS.logprobs})`);
}

/** --max-prompts when it is not given: the default, or --max-queue where the queue is smaller (see checkQueueFits). */
export function defaultPromptsLimit(maxQueue: number): number {
  return Math.min(DEFAULT_REQUEST_LIMITS.prompts, maxQueue);
}

/**
 * Throws when a request these limits admit could never be admitted: its sequences are admitted all
 * at once or not at all against the queue, so more than --max-queue of them would be refused
 * (queue full) forever.
 */
export function checkQueueFits(limits: RequestLimits, maxQueue: number): void {
  if (limits.prompts > maxQueue)
    throw new Error(`${LIMIT_FLAGS.prompts} ${limits.prompts} is more than --max-queue ${maxQueue}: a request of that many sequences could never be ` +
      `admitted (lower ${LIMIT_FLAGS.prompts} or raise --max-queue)`);
}

/** Per message: field tags, lengths and the fixed fields of Submit and its sampling parameters. */
const SUBMIT_OVERHEAD_BYTES = 4096;

/**
 * An upper bound on the encoded Submit of any request these limits admit: prompt and replayed
 * tokens together fit the context (a packed uint32 is at most 5 bytes), each stop string's UTF-8 is
 * at most 3 bytes per UTF-16 unit plus its tag and length (at most 6 bytes).
 */
export function submitBytesBound(contextLength: number, limits: RequestLimits): number {
  return SUBMIT_OVERHEAD_BYTES + 5 * contextLength + 3 * limits.stopChars + 6 * limits.stopStrings;
}

/** Throws when these limits let a request through whose Submit a driver could not receive. */
export function checkControlFits(contextLength: number, limits: RequestLimits): void {
  const bound = submitBytesBound(contextLength, limits);
  if (bound > CONTROL_MAX_MESSAGE_BYTES)
    throw new Error(`${LIMIT_FLAGS.stopChars} ${limits.stopChars} and ${LIMIT_FLAGS.stopStrings} ${limits.stopStrings} with a context of ` +
      `${contextLength} tokens allow a request the coordinator would forward as ${bound} bytes, more than a control message may carry ` +
      `(${CONTROL_MAX_MESSAGE_BYTES} bytes): lower them`);
}
