// `nodespeed generate --model DIR PROMPT`: loads the model in this process and streams the
// continuation to stdout; --json prints one final JSON line instead.
import { Command, InvalidArgumentError, Option } from 'commander';

import { Engine, generate } from '../engine/index.js';
import type { DeviceChoice, DTypeChoice, GenerateResult, KvCacheDtypeChoice, SamplingOptions } from '../engine/index.js';
import type { QuantizeChoice } from '../model/index.js';
import { addQuantizeOptions } from './quantize-flags.js';
import { loadTokenizer } from '../model/index.js';
// --server mode (added by the serving helper): the same generation through a running `nodespeed launch`.
import { generateRemote } from '../client/generate-remote.js';

export interface GenerateCliOptions {
  model?: string;
  device: DeviceChoice;
  dtype: DTypeChoice;
  quantize: QuantizeChoice;
  kvCacheDtype: KvCacheDtypeChoice;
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

function floatArg(flag: string, ok: (n: number) => boolean, what: string) {
  return (v: string) => {
    const n = Number(v);
    if (v.trim() === '' || !Number.isFinite(n) || !ok(n)) throw new InvalidArgumentError(`${flag} must be ${what} (got ${v})`);
    return n;
  };
}

function seedArg(v: string): bigint {
  if (!/^\d+$/.test(v) || BigInt(v) >= 1n << 64n) throw new InvalidArgumentError(`--seed must be an integer in [0, 2^64) (got ${v})`);
  return BigInt(v);
}

/** The JSON line of --json (snake_case, as documented for the CLI). */
export function resultJson(r: GenerateResult): string {
  return JSON.stringify({
    prompt_ids: r.promptIds, token_ids: r.tokenIds, text: r.text, finish_reason: r.finishReason,
    ttft_ms: Number(r.ttftMs.toFixed(3)), tokens_per_s: Number(r.tokensPerS.toFixed(3)),
  });
}

/** In-process generation: load, stream (or collect), print, dispose. */
export async function generateLocal(prompt: string, o: GenerateCliOptions, out: NodeJS.WritableStream = process.stdout): Promise<GenerateResult> {
  if (!o.model) throw new Error('--model DIR is required');
  const [tokenizer, engine] = await Promise.all([
    loadTokenizer(o.model),
    Engine.load(o.model, { device: o.device, dtype: o.dtype, quantize: o.quantize ?? 'none', kvCacheDtype: o.kvCacheDtype ?? 'auto',
      ...(o.threads ? { threads: o.threads } : {}) }),
  ]);
  try {
    const sampling: SamplingOptions = {
      maxTokens: o.maxTokens, temperature: o.temperature, topK: o.topK, topP: o.topP, stop: o.stop,
      ...(o.seed !== undefined ? { seed: o.seed } : {}),
    };
    let result: GenerateResult | undefined;
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

export function register(program: Command): void {
  const cmd = program
    .command('generate')
    .description('Generate a continuation of PROMPT with a Hugging Face Llama-family model, in this process')
    .argument('<prompt>', 'prompt text (tokenized with the model\'s tokenizer, BOS added where it adds one)')
    .option('--model <dir>', 'Hugging Face model folder (config.json, safetensors, tokenizer.json)')
    .addOption(new Option('--device <device>', 'cpu, cuda or auto (cuda when available)').choices(['cpu', 'cuda', 'auto']).default('auto'))
    .addOption(new Option('--dtype <dtype>', 'cpu: weight storage (compute is f32); cuda: compute dtype; auto: as stored')
      .choices(['auto', 'f32', 'bf16', 'f16']).default('auto'));
  addQuantizeOptions(cmd);
  cmd
    .option('--max-tokens <n>', 'most tokens to generate', intArg('--max-tokens', 1), 128)
    .option('--temperature <t>', '0 = greedy', floatArg('--temperature', (n) => n >= 0, 'a number >= 0'), 0)
    .option('--top-k <k>', '0 = off', intArg('--top-k', 0), 0)
    .option('--top-p <p>', '1 = off', floatArg('--top-p', (n) => n > 0 && n <= 1, 'in (0, 1]'), 1)
    .option('--seed <s>', 'sampling seed (same seed, same tokens)', seedArg)
    // Repeatable rather than variadic, so `--stop X PROMPT` does not swallow the prompt.
    .option('--stop <str>', 'stop string, repeatable (not included in the output)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('--threads <n>', 'CPU threads (default: cores given to the process, or NODESPEED_THREADS)', intArg('--threads', 1))
    .option('--json', 'print one JSON line at the end instead of streaming text', false)
    .option('--server <addr>', 'generate through a running `nodespeed launch` (host:port) instead of loading --model here')
    .action(async (prompt: string, o: GenerateCliOptions) => {
      if (!o.server) return void (await generateLocal(prompt, o));
      const result = await generateRemote(prompt, {
        server: o.server, maxTokens: o.maxTokens, temperature: o.temperature, topK: o.topK, topP: o.topP, stop: o.stop,
        ...(o.seed !== undefined ? { seed: o.seed } : {}), ...(process.env.NODESPEED_AUTH_TOKEN ? { authToken: process.env.NODESPEED_AUTH_TOKEN } : {}),
        ...(o.json ? {} : { onText: (d: string) => void process.stdout.write(d) }),
      });
      process.stdout.write(o.json ? resultJson(result) + '\n' : '\n');
    });
}
