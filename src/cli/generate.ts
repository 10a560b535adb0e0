// `nodespeed generate PROMPT`: with --model DIR, loads the model in this process and streams the
// continuation to stdout; with --server ADDR, the same generation through a running `nodespeed
// launch` (the gRPC API), with the same result shape. --json prints one final JSON line instead.
import { Command, InvalidArgumentError, Option } from 'commander';

import { NodespeedClient } from '../client/index.js';
import { Engine, generate } from '../engine/index.js';
import type { DeviceChoice, DTypeChoice, GenerateResult } from '../engine/index.js';
import { loadTokenizer } from '../model/index.js';
import { FinishReason, finishReasonText } from '../protocol/lifecycle.js';
import { SAMPLING_DEFAULTS, SamplingError, parseSamplingNumber, parseSeed } from '../protocol/sampling.js';
import type { NumericSamplingField, SamplingInput } from '../protocol/sampling.js';

export interface GenerateCliOptions {
  model?: string;
  device: DeviceChoice;
  dtype: DTypeChoice;
  maxTokens: number;
  temperature: number;
  topK: number;
  topP: number;
  seed?: bigint;
  stop: string[];
  threads?: number;
  json: boolean;
  server?: string;
}

function intArg(flag: string, min: number) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${flag} must be an integer >= ${min} (got ${v})`);
    return n;
  };
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

/** The JSON line of --json (snake_case, as documented for the CLI). */
export function resultJson(r: GenerateResult): string {
  return JSON.stringify({
    prompt_ids: r.promptIds, token_ids: r.tokenIds, text: r.text, finish_reason: finishReasonText(r.finishReason),
    ttft_ms: Number(r.ttftMs.toFixed(3)), tokens_per_s: Number(r.tokensPerS.toFixed(3)),
  });
}

function samplingOf(o: GenerateCliOptions): SamplingInput & { seed?: bigint } {
  return { maxTokens: o.maxTokens, temperature: o.temperature, topK: o.topK, topP: o.topP, stop: o.stop, ...(o.seed !== undefined ? { seed: o.seed } : {}) };
}

/** In-process generation: load, stream (or collect), print, dispose. */
export async function generateLocal(prompt: string, o: GenerateCliOptions, out: NodeJS.WritableStream = process.stdout): Promise<GenerateResult> {
  if (!o.model) throw new Error('--model DIR is required');
  const [tokenizer, engine] = await Promise.all([
    loadTokenizer(o.model),
    Engine.load(o.model, { device: o.device, dtype: o.dtype, ...(o.threads ? { threads: o.threads } : {}) }),
  ]);
  try {
    let result: GenerateResult | undefined;
    for await (const ev of generate(engine, tokenizer, [{ prompt, ...samplingOf(o) }])) {
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
export async function generateRemote(prompt: string, o: GenerateCliOptions & { server: string; authToken?: string },
  onText?: (delta: string) => void): Promise<GenerateResult> {
  const client = new NodespeedClient(o.server, o.authToken ? { authToken: o.authToken } : {});
  const start = performance.now();
  let firstAt: number | undefined;
  const tokenIds: number[] = [];
  let text = '';
  let promptIds: number[] = [];
  let finishReason: FinishReason = FinishReason.FINISH_REASON_LENGTH;
  try {
    for await (const m of client.generate({ prompt, ...samplingOf(o), ignoreEos: false })) {
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
  };
}

export function register(program: Command): void {
  const d = SAMPLING_DEFAULTS;
  program
    .command('generate')
    .description('Generate a continuation of PROMPT with a Hugging Face Llama-family model, in this process')
    .argument('<prompt>', 'prompt text (tokenized with the model\'s tokenizer, BOS added where it adds one)')
    .option('--model <dir>', 'Hugging Face model folder (config.json, safetensors, tokenizer.json)')
    .addOption(new Option('--device <device>', 'cpu, cuda or auto (cuda when available)').choices(['cpu', 'cuda', 'auto']).default('auto'))
    .addOption(new Option('--dtype <dtype>', 'cpu: weight storage (compute is f32); cuda: compute dtype; auto: as stored')
      .choices(['auto', 'f32', 'bf16', 'f16']).default('auto'))
    .option('--max-tokens <n>', 'most tokens to generate', numberArg('--max-tokens', 'maxTokens'), d.maxTokens)
    .option('--temperature <t>', '0 = greedy', numberArg('--temperature', 'temperature'), d.temperature)
    .option('--top-k <k>', '0 = off', numberArg('--top-k', 'topK'), d.topK)
    .option('--top-p <p>', '1 = off', numberArg('--top-p', 'topP'), d.topP)
    .option('--seed <s>', 'sampling seed (same seed, same tokens)', samplingArg('--seed', parseSeed))
    // Repeatable rather than variadic, so `--stop X PROMPT` does not swallow the prompt.
    .option('--stop <str>', 'stop string, repeatable (not included in the output)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('--threads <n>', 'CPU threads (default: cores given to the process, or NODESPEED_THREADS)', intArg('--threads', 1))
    .option('--json', 'print one JSON line at the end instead of streaming text', false)
    .option('--server <addr>', 'generate through a running `nodespeed launch` (host:port) instead of loading --model here')
    .action(async (prompt: string, o: GenerateCliOptions) => {
      if (!o.server) return void (await generateLocal(prompt, o));
      const token = process.env.NODESPEED_AUTH_TOKEN;
      const result = await generateRemote(prompt, { ...o, server: o.server, ...(token ? { authToken: token } : {}) },
        o.json ? undefined : (delta) => void process.stdout.write(delta));
      process.stdout.write(o.json ? resultJson(result) + '\n' : '\n');
    });
}
