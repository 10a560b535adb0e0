// `nodespeed generate PROMPT`: with --model DIR, loads the model in this process and streams the
// continuation to stdout; with --server ADDR, the same generation through a running `nodespeed
// launch` (the gRPC API), with the same result shape. --json prints one final JSON line instead.
import { readFileSync } from 'node:fs';
import { Command, InvalidArgumentError, Option } from 'commander';

import { NodespeedClient } from '../client/index.js';
import type { ClientOptions } from '../client/index.js';
import { Engine, generate } from '../engine/index.js';
import type { DeviceChoice, DTypeChoice, GenerateResult, KvCacheDtypeChoice } from '../engine/index.js';
import type { QuantizeChoice } from '../model/index.js';
import { addQuantizeOptions } from './quantize-flags.js';
import { loadGenerationConfig, loadTokenizer } from '../model/index.js';
import { FinishReason, finishReasonText } from '../protocol/lifecycle.js';
import { PriorityError, parsePriority } from '../protocol/priority.js';
import type { Priority } from '../protocol/priority.js';
import type { GenerateRequestMsg, TokenLogprobs } from '../protocol/api.js';
import { SamplingError, parseSamplingNumber, parseSeed, samplingDefaults, withModelDefaults } from '../protocol/sampling.js';
import type { NumericSamplingField, SamplingInput } from '../protocol/sampling.js';
import { I32_MAX, intArg, secondsArg, U32_MAX } from './args.js';
import { addServerFlags, clientOptions, SERVER_FLAG_KEYS } from './server-flags.js';
import type { ServerFlags } from './server-flags.js';
import { HF_ROUNDING, HF_ROUNDING_HELP, overrideSettings } from '../settings/index.js';

/** The sampling and stopping flags, shared by `generate` and `chat` (absent: the server's or the model's default). */
export interface SamplingFlags {
  maxTokens?: number;
  temperature?: number;
  topK?: number;
  topP?: number;
  minP?: number;
  repetitionPenalty?: number;
  presencePenalty?: number;
  frequencyPenalty?: number;
  seed?: bigint;
  stop: string[];
  stopTokenId: number[];
  logitBias: { token: number; bias: number }[];
  ignoreEos?: boolean;
  logprobs?: number;
}

export interface GenerateCliOptions extends SamplingFlags, ServerFlags {
  model?: string;
  device: DeviceChoice;
  dtype: DTypeChoice;
  quantize: QuantizeChoice;
  kvCacheDtype: KvCacheDtypeChoice;
  threads?: number;
  hfRounding?: boolean;
  json: boolean;
  server?: string;
  timeout: number;
  /** The request class or an integer priority (with --server). */
  priority?: Priority;
}

/** A sampling flag, checked by the sampling rules (protocol/sampling.ts) and reported under the flag's name. */
function samplingArg<T>(flag: string, parse: (v: string) => T) {
  return (v: string): T => {
    try {
      return parse(v);
    } catch (err) {
      if (err instanceof SamplingError) throw new InvalidArgumentError(`${flag} ${err.problem}`);
      throw err;
    }
  };
}
const numberArg = (flag: string, field: NumericSamplingField) => samplingArg(flag, (v) => parseSamplingNumber(field, v));

/** A sampling integer that must also fit its field on the wire (the API's max_tokens is an int32, top_k a uint32). */
function wireIntArg(flag: string, field: NumericSamplingField, min: number, max: number) {
  const rules = numberArg(flag, field);
  return (v: string): number => rules(String(intArg(flag, min, max)(v)));
}

/** Offset of the first byte that is not part of well-formed UTF-8, or -1. */
export function invalidUtf8At(b: Uint8Array): number {
  for (let i = 0; i < b.length; ) {
    const c = b[i]!;
    const n = c < 0x80 ? 0 : c >= 0xc2 && c <= 0xdf ? 1 : c >= 0xe0 && c <= 0xef ? 2 : c >= 0xf0 && c <= 0xf4 ? 3 : -1;
    if (n < 0) return i;
    for (let k = 1; k <= n; k++) {
      const d = b[i + k];
      if (d === undefined || (d & 0xc0) !== 0x80) return i;
    }
    // Overlong forms, UTF-16 surrogates and code points past U+10FFFF.
    const d1 = b[i + 1]!;
    if ((c === 0xe0 && d1 < 0xa0) || (c === 0xed && d1 > 0x9f) || (c === 0xf0 && d1 < 0x90) || (c === 0xf4 && d1 > 0x8f)) return i;
    i += n + 1;
  }
  return -1;
}

function strictUtf8(bytes: Uint8Array, what: string): string {
  const at = invalidUtf8At(bytes);
  if (at >= 0) throw new Error(`${what} is not valid UTF-8 (byte 0x${bytes[at]!.toString(16).padStart(2, '0')} at offset ${at})`);
  return Buffer.from(bytes).toString('utf8');
}

/**
 * The prompt as the user gave it: `-` reads stdin. Node has already decoded argv, replacing invalid
 * bytes with U+FFFD, so an argument holding U+FFFD is checked against the raw command line (Linux).
 */
export function readPrompt(arg: string): string {
  if (arg === '-') return strictUtf8(readFileSync(0), 'the prompt on stdin');
  if (arg.includes('\uFFFD')) {
    let raw: Buffer[] = [];
    try {
      const cmdline = readFileSync('/proc/self/cmdline');
      for (let at = 0; at < cmdline.length; ) {
        const end = cmdline.indexOf(0, at);
        raw.push(cmdline.subarray(at, end < 0 ? cmdline.length : end));
        at = end < 0 ? cmdline.length : end + 1;
      }
    } catch {
      raw = [];
    }
    const mine = raw.find((b) => b.toString('utf8') === arg);
    if (mine) strictUtf8(mine, 'the prompt argument');
  }
  return arg;
}

function tokenIdArg(flag: string) {
  return (v: string, acc: number[]) => {
    if (!/^\d+$/.test(v)) throw new InvalidArgumentError(`${flag} must be a token id (got ${v})`);
    return [...acc, Number(v)];
  };
}

function logitBiasArg(v: string, acc: { token: number; bias: number }[]) {
  const m = /^(\d+)=(-?[\d.]+(?:e-?\d+)?)$/.exec(v);
  if (!m) throw new InvalidArgumentError(`--logit-bias must be ID=BIAS, e.g. 50256=-100 (got ${v})`);
  return [...acc, { token: Number(m[1]), bias: Number(m[2]) }];
}

/** Adds the sampling and stopping flags to a command (generate, chat). */
export function samplingOptions(cmd: Command): Command {
  return cmd
    .option('--max-tokens <n>', 'most tokens to generate (default: what fits the model\'s context)', wireIntArg('--max-tokens', 'maxTokens', 1, I32_MAX))
    .option('--temperature <t>', '0 = greedy (default: the model\'s generation_config.json, else greedy)', numberArg('--temperature', 'temperature'))
    .option('--top-k <k>', '0 = off', wireIntArg('--top-k', 'topK', 0, U32_MAX))
    .option('--top-p <p>', '1 = off', numberArg('--top-p', 'topP'))
    .option('--min-p <p>', 'drop tokens with p < min_p * p(most likely); 0 = off', numberArg('--min-p', 'minP'))
    .option('--repetition-penalty <r>', 'transformers\' repetition penalty on prompt and output tokens; 1 = off', numberArg('--repetition-penalty', 'repetitionPenalty'))
    .option('--presence-penalty <p>', 'OpenAI presence penalty in [-2, 2]', numberArg('--presence-penalty', 'presencePenalty'))
    .option('--frequency-penalty <f>', 'OpenAI frequency penalty in [-2, 2]', numberArg('--frequency-penalty', 'frequencyPenalty'))
    .option('--logit-bias <id=bias>', 'add bias (in [-100, 100]) to a token\'s logit, repeatable', logitBiasArg, [] as { token: number; bias: number }[])
    .option('--seed <s>', 'sampling seed (same seed, same tokens)', samplingArg('--seed', parseSeed))
    // Repeatable rather than variadic, so `--stop X PROMPT` does not swallow the prompt.
    .option('--stop <str>', 'stop string, repeatable (not included in the output)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('--stop-token-id <id>', 'token id that ends the generation like EOS, repeatable', tokenIdArg('--stop-token-id'), [] as number[])
    .option('--ignore-eos', 'keep generating past EOS')
    .option('--logprobs <k>', 'with --json: each token\'s logprob and its k (0-20) most likely alternatives', numberArg('--logprobs', 'logprobs'));
}

export function samplingOf(o: SamplingFlags): SamplingInput & { seed?: bigint } {
  const out: SamplingInput & { seed?: bigint } = { stop: o.stop, stopTokenIds: o.stopTokenId, logitBias: o.logitBias };
  for (const k of ['maxTokens', 'temperature', 'topK', 'topP', 'minP', 'repetitionPenalty', 'presencePenalty', 'frequencyPenalty', 'logprobs', 'ignoreEos', 'seed'] as const)
    if (o[k] !== undefined) (out as Record<string, unknown>)[k] = o[k];
  return out;
}

/** The same controls as the public GenerateRequest carries them (logit bias as a map). */
export function requestSampling(o: SamplingFlags): Omit<GenerateRequestMsg, 'model' | 'prompt' | 'promptIds' | 'messages'> {
  const { logitBias, ...rest } = samplingOf(o);
  return { ...rest, logitBias: Object.fromEntries((logitBias ?? []).map((b) => [b.token, b.bias])) };
}

/** The JSON line of --json (snake_case, as documented for the CLI). */
export function resultJson(r: GenerateResult): string {
  return JSON.stringify({
    prompt_ids: r.promptIds, token_ids: r.tokenIds, text: r.text, finish_reason: finishReasonText(r.finishReason),
    ttft_ms: Number(r.ttftMs.toFixed(3)), tokens_per_s: Number(r.tokensPerS.toFixed(3)),
    ...(r.logprobs ? { logprobs: r.logprobs.map((l) => ({ logprob: l.logprob, top_ids: l.topIds, top_logprobs: l.topLogprobs })) } : {}),
  });
}

/** In-process generation: load, stream (or collect), print, dispose. */
export async function generateLocal(prompt: string, o: GenerateCliOptions, out: NodeJS.WritableStream = process.stdout): Promise<GenerateResult> {
  if (!o.model) throw new Error('--model DIR is required');
  if (o.hfRounding) overrideSettings({ cudaRound: HF_ROUNDING });  // before the addon loads: it reads its settings then
  const [tokenizer, engine] = await Promise.all([
    loadTokenizer(o.model),
    Engine.load(o.model, { device: o.device, dtype: o.dtype, quantize: o.quantize ?? 'none', kvCacheDtype: o.kvCacheDtype ?? 'auto',
      ...(o.threads ? { threads: o.threads } : {}) }),
  ]);
  try {
    let result: GenerateResult | undefined;
    const sampling = withModelDefaults(samplingOf(o), samplingDefaults(loadGenerationConfig(o.model)));
    for await (const ev of generate(engine, tokenizer, [{ prompt, ...sampling }])) {
      if (!o.json && ev.delta) out.write(ev.delta);
      if (ev.type === 'done') result = ev.result;
    }
    if (o.json) out.write(resultJson(result!) + '\n');
    else out.write('\n');
    return result!;
  } finally {
    engine.dispose();
  }
}

/** The same generation through a running `nodespeed launch` at `server`; `onText` gets each text delta. */
export async function generateRemote(prompt: string, o: GenerateCliOptions & { server: string }, connect: ClientOptions,
  onText?: (delta: string) => void): Promise<GenerateResult> {
  const client = new NodespeedClient(o.server, connect);
  const start = performance.now();
  let firstAt: number | undefined;
  const tokenIds: number[] = [];
  let text = '';
  let promptIds: number[] = [];
  let finishReason: FinishReason = FinishReason.FINISH_REASON_LENGTH;
  const logprobs: TokenLogprobs[] = [];
  try {
    const priority = o.priority && ('className' in o.priority ? o.priority.className : o.priority.value);
    for await (const m of client.generate({ prompt, ...requestSampling(o), ...(priority !== undefined ? { priority } : {}) })) {
      logprobs.push(...m.logprobs);
      if (m.tokenIds.length) firstAt ??= performance.now();
      tokenIds.push(...m.tokenIds);
      text += m.text;
      if (m.text) onText?.(m.text);
      if (m.finishReason !== FinishReason.FINISH_REASON_UNSPECIFIED) {
        finishReason = m.finishReason;
        promptIds = m.promptIds;
      }
    }
  } catch (err) {
    throw new Error(`generate --server ${o.server}: ${(err as Error).message}`);
  } finally {
    client.close();
  }
  const end = performance.now();
  const decodeMs = firstAt === undefined ? 0 : end - firstAt;
  return {
    promptIds, tokenIds, text, finishReason, ttftMs: (firstAt ?? end) - start,
    tokensPerS: tokenIds.length > 1 && decodeMs > 0 ? ((tokenIds.length - 1) * 1000) / decodeMs : 0,
    ...(o.logprobs !== undefined ? { logprobs } : {}),
  };
}

/** Flags that only mean something when the model is loaded here; --server refuses them rather than ignore them. */
const LOCAL_ONLY = ['model', 'device', 'dtype', 'threads', 'hfRounding'] as const;
/** And the reverse. */
const SERVER_ONLY = [...SERVER_FLAG_KEYS, 'timeout', 'priority'] as const;

export function register(program: Command): void {
  const cmd = program
    .command('generate')
    .description('Generate a continuation of PROMPT with a Hugging Face Llama-family model, in this process (or through --server)')
    .argument('<prompt>', 'prompt text (tokenized with the model\'s tokenizer, BOS added where it adds one); - reads it from stdin')
    .option('--model <dir>', 'Hugging Face model folder (config.json, safetensors, tokenizer.json)')
    .addOption(new Option('--device <device>', 'cpu, cuda or auto (cuda when available)').choices(['cpu', 'cuda', 'auto']).default('auto'))
    .addOption(new Option('--dtype <dtype>', 'cpu: weight storage (compute is f32); cuda: compute dtype; auto: as stored')
      .choices(['auto', 'f32', 'bf16', 'f16']).default('auto'));
  addQuantizeOptions(cmd);
  samplingOptions(cmd)
    .option('--threads <n>', 'CPU threads (default: cores given to the process, or NODESPEED_THREADS)', intArg('--threads', 1, 4096))
    .option('--hf-rounding', HF_ROUNDING_HELP, false)
    .option('--json', 'print one JSON line at the end instead of streaming text', false)
    .option('--server <addr>', 'generate through a running `nodespeed launch` (host:port) instead of loading --model here')
    .option('--priority <class|int>', 'with --server: the request class (realtime, standard, batch, or one the deployment names) or an integer ' +
      '(lower runs first; it falls in the class whose range holds it)', (v: string) => {
      try {
        return parsePriority(v);
      } catch (err) {
        if (err instanceof PriorityError) throw new InvalidArgumentError(`--priority ${err.message}`);
        throw err;
      }
    });
  addServerFlags(cmd, 'with --server: ')
    .option('--timeout <s>', 'with --server: seconds to wait for the server to be reachable', secondsArg('--timeout'), 10);
  cmd.action(async (promptArg: string, o: GenerateCliOptions) => {
    const given = (k: string): boolean => cmd.getOptionValueSource(k) === 'cli';
    const flag = (k: string): string => `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
    if (o.server) {
      const ignored = LOCAL_ONLY.filter(given);
      if (ignored.length) cmd.error(`error: ${ignored.map(flag).join(', ')} cannot be used with --server: the server's launch chose its model, device, dtype, threads and rounding`);
    } else {
      const ignored = SERVER_ONLY.filter(given);
      if (ignored.length) cmd.error(`error: ${ignored.map(flag).join(', ')} only apply with --server`);
    }
    const prompt = readPrompt(promptArg);
    if (!o.server) return void (await generateLocal(prompt, o));
    const connect = clientOptions(o);
    const probe = new NodespeedClient(o.server, connect);
    try {
      await probe.waitForReady(o.timeout * 1000);
    } catch (err) {
      throw new Error(`generate --server ${o.server}: not reachable within ${o.timeout} s (--timeout): ${(err as Error).message}`);
    } finally {
      probe.close();
    }
    const result = await generateRemote(prompt, { ...o, server: o.server }, connect,
      o.json ? undefined : (delta) => void process.stdout.write(delta));
    process.stdout.write(o.json ? resultJson(result) + '\n' : '\n');
  });
}
