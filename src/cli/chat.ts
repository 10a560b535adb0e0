// `nodespeed chat`: an interactive chat in the terminal, with the model loaded in this process
// (--model DIR) or through a running cluster (--server ADDR). The conversation is kept and sent
// whole each turn (rendered with the model's chat template); Ctrl-C stops a reply that is being
// written, Ctrl-C (or Ctrl-D, or /exit) at the prompt leaves. /reset starts over.
import { createInterface } from 'node:readline';
import type { Interface } from 'node:readline';

import { Command, Option } from 'commander';

import { NodespeedClient } from '../client/index.js';
import type { ClientOptions } from '../client/index.js';
import { Engine, generate } from '../engine/index.js';
import type { DeviceChoice, DTypeChoice } from '../engine/index.js';
import { loadGenerationConfig, loadTokenizer } from '../model/index.js';
import type { ChatMessage } from '../model/index.js';
import { finishReasonText } from '../protocol/lifecycle.js';
import { samplingDefaults, withModelDefaults } from '../protocol/sampling.js';
import { intArg } from './args.js';
import { requestSampling, samplingOf, samplingOptions } from './generate.js';
import type { SamplingFlags } from './generate.js';
import { addServerFlags, clientOptions, SERVER_FLAG_KEYS } from './server-flags.js';
import type { ServerFlags } from './server-flags.js';

export interface ChatReply {
  text: string;
  finishReason: string;
}

/** Where replies come from: an engine in this process, or a cluster. */
export interface ChatBackend {
  /** Streams the assistant's reply to `messages` through onText; resolves when it ends or `signal` aborts it. */
  reply(messages: ChatMessage[], onText: (delta: string) => void, signal: AbortSignal): Promise<ChatReply>;
  close(): Promise<void>;
}

export interface LocalChatOptions extends SamplingFlags {
  model: string;
  device?: DeviceChoice;
  dtype?: DTypeChoice;
  threads?: number;
}

/** The model in this process: the chat template renders the conversation, the engine writes the reply. */
export async function localChatBackend(o: LocalChatOptions): Promise<ChatBackend> {
  const [tokenizer, engine] = await Promise.all([
    loadTokenizer(o.model),
    Engine.load(o.model, { device: o.device ?? 'auto', dtype: o.dtype ?? 'auto', ...(o.threads ? { threads: o.threads } : {}) }),
  ]);
  if (!tokenizer.hasChatTemplate) {
    engine.dispose();
    throw new Error(`${o.model}: this model has no chat template; use \`nodespeed generate\` for plain prompts`);
  }
  const sampling = withModelDefaults(samplingOf(o), samplingDefaults(loadGenerationConfig(o.model)));
  return {
    async reply(messages, onText, signal) {
      const promptIds = tokenizer.encodeChat(messages, { addGenerationPrompt: true });
      if (promptIds.length >= engine.maxPosition)
        throw new Error(`the conversation is ${promptIds.length} tokens, which leaves no room in the model's context of ${engine.maxPosition}; /reset to start over`);
      let text = '';
      for await (const ev of generate(engine, tokenizer, [{ promptIds, ...sampling }])) {
        if (signal.aborted) return { text, finishReason: 'cancelled' };  // leaving the loop frees the sequence's KV blocks
        text += ev.delta;
        onText(ev.delta);
        if (ev.type === 'done') return { text: ev.result.text, finishReason: finishReasonText(ev.result.finishReason) ?? 'stop' };
      }
      return { text, finishReason: 'stop' };
    },
    async close() {
      engine.dispose();
    },
  };
}

/** A running cluster: each turn is one Generate call with the conversation as `messages`, cancelled on abort. */
export function serverChatBackend(server: string, o: SamplingFlags, connect: ClientOptions = {}): ChatBackend {
  const client = new NodespeedClient(server, connect);
  return {
    async reply(messages, onText, signal) {
      let text = '';
      try {
        for await (const m of client.generate({ messages: messages.map((x) => ({ role: x.role, content: String(x.content ?? '') })), ...requestSampling(o) }, { signal })) {
          text += m.text;
          if (m.text) onText(m.text);
          if (m.finishReason !== 'FINISH_REASON_UNSPECIFIED') return { text, finishReason: finishReasonText(m.finishReason) ?? 'stop' };
        }
      } catch (err) {
        if (signal.aborted) return { text, finishReason: 'cancelled' };
        throw new Error(`--server ${server}: ${(err as Error).message}`);
      }
      return { text, finishReason: signal.aborted ? 'cancelled' : 'stop' };
    },
    async close() {
      client.close();
    },
  };
}

export interface ChatLoopIo {
  input: NodeJS.ReadableStream;
  output: NodeJS.WritableStream;
  system?: string;
}

/** The read-reply loop; resolves when the user leaves. */
export async function chatLoop(backend: ChatBackend, io: ChatLoopIo): Promise<void> {
  const history: ChatMessage[] = io.system ? [{ role: 'system', content: io.system }] : [];
  let closed = false;
  const start = history.length;
  const tty = (io.input as { isTTY?: boolean }).isTTY === true;
  const rl: Interface = createInterface({ input: io.input, output: io.output, prompt: '> ', terminal: tty });
  const ask = () => {
    if (tty && !closed) rl.prompt();  // piped input gets the replies alone, one per line
  };
  let replying: AbortController | null = null;
  let leaving = false;  // Ctrl-C or /exit: stop now; end of input (Ctrl-D, a pipe) finishes the lines already read
  const lines: string[] = [];
  let busy: Promise<void> | null = null;
  const done = new Promise<void>((resolve) => rl.once('close', () => {
    closed = true;
    if (leaving) {
      lines.length = 0;
      replying?.abort();
    }
    void (async () => {
      while (busy) await busy;
      if (tty) io.output.write('\n');
      resolve();
    })();
  }));
  const leave = () => {
    leaving = true;
    rl.close();
  };
  // Ctrl-C: stop the reply being written, or leave when there is none. A terminal delivers it to
  // readline; a signal (kill -INT, or no terminal) to the process.
  const interrupt = () => {
    if (replying) replying.abort();
    else leave();
  };
  rl.on('SIGINT', interrupt);
  process.on('SIGINT', interrupt);
  rl.once('close', () => process.off('SIGINT', interrupt));
  const turn = async (line: string): Promise<void> => {
    if (!line) return;
    if (line === '/exit' || line === '/quit') {
      leave();
      return;
    }
    if (line === '/reset') {
      history.length = start;
      io.output.write('(conversation cleared)\n');
      return;
    }
    history.push({ role: 'user', content: line });
    replying = new AbortController();
    try {
      const r = await backend.reply(history, (d) => io.output.write(d), replying.signal);
      io.output.write(r.finishReason === 'cancelled' ? ' [stopped]\n' : '\n');
      // A stopped reply stays in the conversation as far as it got (the model said it).
      history.push({ role: 'assistant', content: r.text });
    } catch (err) {
      history.pop();
      io.output.write(`\nerror: ${(err as Error).message}\n`);
    } finally {
      replying = null;
    }
  };
  const drain = async (): Promise<void> => {
    for (let line = lines.shift(); line !== undefined; line = lines.shift()) {
      await turn(line.trim());
      ask();
    }
  };
  rl.on('line', (l) => {
    lines.push(l);
    busy ??= drain().finally(() => {
      busy = null;
    });
  });
  ask();
  await done;
}

interface ChatCliOptions extends SamplingFlags, ServerFlags {
  model?: string;
  server?: string;
  device: DeviceChoice;
  dtype: DTypeChoice;
  threads?: number;
  system?: string;
}

export function register(program: Command): void {
  const cmd = program
    .command('chat')
    .description('Chat with a model in the terminal, loaded here (--model DIR) or through a running cluster (--server ADDR)')
    .option('--model <dir>', 'Hugging Face model folder with a chat template')
    .option('--server <addr>', 'a running `nodespeed launch` (host:port of its gRPC API)')
    .option('--system <text>', 'a system message that opens the conversation')
    .addOption(new Option('--device <device>', 'with --model: cpu, cuda or auto').choices(['cpu', 'cuda', 'auto']).default('auto'))
    .addOption(new Option('--dtype <dtype>', 'with --model: cpu weight storage / cuda compute dtype').choices(['auto', 'f32', 'bf16', 'f16']).default('auto'))
    .option('--threads <n>', 'with --model: CPU threads', intArg('--threads', 1, 4096));
  addServerFlags(cmd, 'with --server: ');
  samplingOptions(cmd)
    .action(async (o: ChatCliOptions) => {
      // cmd.error prints the message (an error thrown here would only set the exit code).
      if (!o.model === !o.server) cmd.error('error: give exactly one of --model DIR and --server ADDR');
      const serverOnly = SERVER_FLAG_KEYS.filter((k) => o[k] !== undefined);
      if (!o.server && serverOnly.length) cmd.error(`error: --${serverOnly[0]!.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} only applies with --server`);
      const backend = o.server ? serverChatBackend(o.server, o, clientOptions(o)) : await localChatBackend({ ...o, model: o.model! });
      try {
        await chatLoop(backend, { input: process.stdin, output: process.stdout, ...(o.system ? { system: o.system } : {}) });
      } finally {
        await backend.close();
      }
    });
}
