// Starts a real `nodespeed launch` (coordinator + worker processes through the launcher) for the
// serving tests and talks to it through the typed client.
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';

import { NodespeedClient, NodespeedError } from '../../src/client/index.js';
import type { GenerateRequest } from '../../src/engine/index.js';
import type { GenerateRequestMsg, GenerateResponseMsg } from '../../src/client/index.js';

export const root = resolve(import.meta.dirname, '..', '..');
export const BIN = join(root, 'bin', 'nodespeed');
export const fixtures = join(root, 'test', 'fixtures', 'hf-reference');
export const F32 = join(fixtures, 'tiny-llama-gqa-f32');
export const BF16 = join(fixtures, 'tiny-llama-gqa-bf16');
export const PY_TINY = join(root, 'models', 'py-tiny');

export interface FixtureCase { text: string; ids: number[]; greedy_24: number[]; last_logits_top8: number[] }
export interface PyTinyCase { text: string; ids: number[]; greedy_48: number[]; greedy_48_text: string }

export function reference<T>(dir: string): { cases: T[] } {
  return JSON.parse(readFileSync(join(dir, 'reference.json'), 'utf8')) as { cases: T[] };
}

/** The serving path runs dist/ (the workers are `node dist/worker/main.js`): it must be built. */
export function requireBuild(): void {
  for (const f of ['dist/cli/index.js', 'dist/worker/main.js', 'build/Release/nodespeed.node'])
    if (!existsSync(join(root, f))) throw new Error(`${f} is missing: run \`npx tsc -p tsconfig.json\` and \`npm run build:native\` first`);
}

export interface LaunchedCluster {
  address: string;
  readyLine: string;
  client: NodespeedClient;
  proc: ChildProcess;
  stderr: () => string;
  /** SIGINT, then waits for the launch process to exit; returns its exit code. */
  stop(): Promise<number | null>;
}

/** `nodespeed launch --model DIR --port 0 --bind 127.0.0.1 ...args`, resolved at its ready line. */
export async function launch(model: string, args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number; nodeArgs?: string[]; authToken?: string } = {}): Promise<LaunchedCluster> {
  requireBuild();
  // Any free port for the HTTP API unless a test picks one (its default, 8000, would collide between clusters).
  const http = args.includes('--http-port') ? [] : ['--http-port', '0'];
  const proc = spawn(process.execPath, [...(opts.nodeArgs ?? []), BIN, 'launch', '--model', model, '--port', '0', '--bind', '127.0.0.1', '--no-progress', ...http, ...args], {
    cwd: root, env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  const readyLine = await new Promise<string>((resolveReady, reject) => {
    const t = setTimeout(() => reject(new Error(`launch ${args.join(' ')}: no ready line after ${opts.timeoutMs ?? 60000} ms\n${err}`)), opts.timeoutMs ?? 60_000);
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const line = out.split('\n').find((l) => l.startsWith('nodespeed ready '));
      if (line) {
        clearTimeout(t);
        resolveReady(line);
      }
    });
    void exited.then((code) => {
      clearTimeout(t);
      reject(new Error(`launch ${args.join(' ')} exited with ${code} before ready\n${err}`));
    });
  });
  const address = readyLine.split(' ')[2]!;
  const client = new NodespeedClient(address, opts.authToken ? { authToken: opts.authToken } : {});
  return {
    address, readyLine, client, proc, stderr: () => err,
    stop: async () => {
      client.close();
      if (proc.exitCode === null) proc.kill('SIGINT');
      const t = setTimeout(() => proc.kill('SIGKILL'), 15_000);
      const code = await exited;
      clearTimeout(t);
      return code;
    },
  };
}

/** Streams one request; checks the stream's own consistency (no gap, no repeat) as it goes. */
export async function stream(client: NodespeedClient, req: GenerateRequestMsg, opts: { timeoutMs?: number } = {}) {
  const msgs: GenerateResponseMsg[] = [];
  const tokenIds: number[] = [];
  const logprobs: GenerateResponseMsg['logprobs'] = [];
  let text = '';
  for await (const m of client.generate(req, opts)) {
    if (m.index !== tokenIds.length) throw new Error(`stream gap/repeat: message index ${m.index}, ${tokenIds.length} tokens received`);
    msgs.push(m);
    tokenIds.push(...m.tokenIds);
    logprobs.push(...m.logprobs);
    text += m.text;
  }
  const last = msgs[msgs.length - 1];
  return { tokenIds, text, logprobs, finishReason: last?.finishReason, usage: last?.usage, messages: msgs.length };
}

/** An in-process engine request (prompt ids and sampling input) as the public GenerateRequest. */
export function requestMsg(r: GenerateRequest): GenerateRequestMsg {
  const { prompt, promptIds, logitBias, seed, ...rest } = r;
  return {
    ...rest, ...(prompt !== undefined ? { prompt } : {}), ...(promptIds ? { promptIds } : {}),
    ...(seed !== undefined && seed !== null ? { seed: String(seed) } : {}),
    ...(logitBias ? { logitBias: Object.fromEntries(logitBias.map((b) => [b.token, b.bias])) } : {}),
  } as GenerateRequestMsg;
}

/** Live processes whose /proc/PID/cmdline (arguments joined by NULs) satisfies `match`. */
export function processesWhere(match: (cmdline: string) => boolean): number[] {
  const pids: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      if (match(readFileSync(`/proc/${d}/cmdline`, 'utf8'))) pids.push(Number(d));
    } catch {
      /* exited meanwhile */
    }
  }
  return pids;
}

/** Worker processes (dist/worker/main.js) still alive: none may be left after a test. */
export function workerProcesses(): number[] {
  return processesWhere((cmd) => cmd.includes(join(root, 'dist', 'worker', 'main.js')));
}

/** The NodespeedError a call fails with; throws if it succeeds or fails with anything else. */
export async function grpcError(p: Promise<unknown>): Promise<NodespeedError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof NodespeedError) return err;
    throw err;
  }
  throw new Error('expected the call to fail');
}
