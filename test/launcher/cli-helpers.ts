// Shared by the launcher integration tests: run the real CLI, find a job's processes in the process table.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const CLI = `${ROOT}bin/nodespeed`;
export const PROBE = `${ROOT}test/launcher/fixtures/probe.mjs`;

export function requireBuild(): void {
  if (!existsSync(`${ROOT}dist/cli/run.js`)) throw new Error('dist/ is missing: run `npm run build` before the launcher integration tests');
}

export interface CliRun {
  child: ChildProcess;
  stdout: string[];
  stderr: string[];
  /** Resolves when a stdout line matching `re` has appeared `count` times. */
  waitFor(re: RegExp, count?: number, timeoutMs?: number): Promise<string[]>;
  done: Promise<{ code: number | null; signal: string | null; endedAt: number }>;
}

export function startCli(args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): CliRun {
  const child = spawn(process.execPath, [CLI, ...args], { cwd: opts.cwd ?? ROOT, env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const stdout: string[] = [];
  const stderr: string[] = [];
  const waiters: Array<() => void> = [];
  const collect = (into: string[]) => {
    let pending = '';
    return (d: Buffer): void => {
      pending += d.toString();
      const parts = pending.split('\n');
      pending = parts.pop()!;
      into.push(...parts);
      waiters.forEach((w) => w());
    };
  };
  child.stdout!.on('data', collect(stdout));
  child.stderr!.on('data', collect(stderr));
  const done = new Promise<{ code: number | null; signal: string | null; endedAt: number }>((resolve) =>
    child.on('close', (code, signal) => resolve({ code, signal, endedAt: Date.now() })),
  );
  const waitFor = (re: RegExp, count = 1, timeoutMs = 20_000): Promise<string[]> =>
    new Promise((resolve, reject) => {
      const check = (): void => {
        const hits = stdout.filter((l) => re.test(l));
        if (hits.length >= count) resolve(hits);
      };
      waiters.push(check);
      check();
      setTimeout(() => reject(new Error(`timed out waiting for ${count}× ${re}\nstdout:\n${stdout.join('\n')}\nstderr:\n${stderr.join('\n')}`)), timeoutMs).unref();
      void done.then(() => setTimeout(() => reject(new Error(`launcher exited before ${count}× ${re}\nstdout:\n${stdout.join('\n')}\nstderr:\n${stderr.join('\n')}`)), 50));
    });
  return { child, stdout, stderr, waitFor, done };
}

export async function runCli(args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): Promise<{ code: number | null; stdout: string; stderr: string; ms: number }> {
  const t0 = Date.now();
  const r = startCli(args, opts);
  const { code } = await r.done;
  return { code, stdout: r.stdout.join('\n'), stderr: r.stderr.join('\n'), ms: Date.now() - t0 };
}

/** Every process whose command line contains `needle` (the test's unique tag). */
export function processesWith(needle: string): Array<{ pid: number; cmdline: string }> {
  const out: Array<{ pid: number; cmdline: string }> = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      const cmdline = readFileSync(`/proc/${name}/cmdline`, 'utf8').replace(/\0/g, ' ');
      if (cmdline.includes(needle)) out.push({ pid: Number(name), cmdline });
    } catch {
      /* exited */
    }
  }
  return out;
}

/** Waits up to `ms` for every process carrying `needle` to be gone; returns those still there. */
export async function leftAfter(needle: string, ms: number): Promise<Array<{ pid: number; cmdline: string }>> {
  const t0 = Date.now();
  while (processesWith(needle).length > 0 && Date.now() - t0 < ms) await new Promise((r) => setTimeout(r, 100));
  return processesWith(needle);
}
