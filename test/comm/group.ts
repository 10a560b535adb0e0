// Runs a TCP comm group of real Node processes (fixtures/rank.mjs) with this process as the
// rendezvous, the way workers get their peers' addresses from the coordinator.
import { fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const root = resolve(here, '..', '..');
const fixture = join(here, 'fixtures', 'rank.mjs');

export function requireBuilt(): void {
  for (const f of ['dist/comm/index.js', 'build/Release/nodespeed.node'])
    if (!existsSync(join(root, f)) && !(f.endsWith('.node') && process.env.NODESPEED_ADDON))
      throw new Error(`${f} is missing: run \`npx tsc -p tsconfig.json\` and \`npm run build:native\` first`);
}

export interface RankMessage { rank: number; type: string; [k: string]: unknown }

export interface Group {
  procs: ChildProcess[];
  /** Resolves with the first message of `type` from every listed rank (default: all). */
  waitAll(type: string, ranks?: number[], timeoutMs?: number): Promise<RankMessage[]>;
  send(rank: number, msg: object): void;
  /** Exit code (or signal name) of every child, once all have exited. */
  exits(timeoutMs?: number): Promise<(number | string)[]>;
  /** Kills every child still running. */
  close(): void;
}

export interface GroupOptions {
  /** Each rank's group context (default 'test-job:1' for all). */
  context?: (rank: number) => string;
  /** Each rank's job key, hex (default: one random key for the whole group). */
  key?: (rank: number) => string;
  env?: NodeJS.ProcessEnv;
  /** Extra environment of one rank. */
  rankEnv?: (rank: number) => NodeJS.ProcessEnv;
  /** Runs once every rank listens, before any rank gets the addresses (strays can be aimed at them). */
  beforeConnect?: (addresses: string[]) => Promise<void>;
}

export function startGroup(scenario: string, size: number, opts: GroupOptions = {}): Group {
  const groupKey = randomBytes(32).toString('hex');
  const messages: RankMessage[] = [];
  const listeners: (() => void)[] = [];
  const procs = Array.from({ length: size }, (_, rank) => {
    const p = fork(fixture, [scenario, String(rank), String(size), opts.context?.(rank) ?? 'test-job:1'], {
      env: { ...process.env, COMM_KEY: opts.key?.(rank) ?? groupKey, ...opts.env, ...opts.rankEnv?.(rank) }, stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    p.on('message', (m) => { messages.push(m as RankMessage); for (const l of [...listeners]) l(); });
    return p;
  });
  const waitAll = (type: string, ranks = procs.map((_, i) => i), timeoutMs = 30_000) =>
    new Promise<RankMessage[]>((res, rej) => {
      const timer = setTimeout(() => {
        const have = messages.filter((m) => m.type === type).map((m) => m.rank);
        rej(new Error(`timed out after ${timeoutMs} ms waiting for '${type}' from ranks ${ranks.filter((r) => !have.includes(r))}`));
      }, timeoutMs);
      const check = () => {
        const got = ranks.map((r) => messages.find((m) => m.rank === r && m.type === type));
        if (got.every(Boolean)) {
          clearTimeout(timer);
          listeners.splice(listeners.indexOf(check), 1);
          res(got as RankMessage[]);
        }
      };
      listeners.push(check);
      check();
    });
  const exited = procs.map((p) => new Promise<number | string>((res) => {
    p.on('exit', (code, signal) => res(code ?? signal ?? 'unknown'));
  }));
  const exits = (timeoutMs = 10_000) => Promise.race([
    Promise.all(exited),
    new Promise<never>((_, rej) => setTimeout(() => rej(new Error(`children still running after ${timeoutMs} ms`)), timeoutMs)),
  ]);
  const group: Group = {
    procs,
    waitAll,
    exits,
    send: (rank, msg) => { procs[rank]!.send(msg); },
    close: () => { for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL'); },
  };
  // Rendezvous: collect every rank's info, hand the full list back to all.
  void waitAll('info').then(async (infos) => {
    try {
      await opts.beforeConnect?.(infos.map((m) => (m.info as { address: string }).address));
    } finally {
      for (const p of procs) if (p.connected) p.send({ type: 'infos', infos: infos.map((m) => m.info) });
    }
  }, () => {});
  return group;
}
