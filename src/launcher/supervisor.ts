// Supervises one job: starts every rank (local or SSH), streams its lines, and tears the whole job down
// — every rank on every host, process groups included — on the first failure or on request.
import { randomBytes } from 'node:crypto';
import { createWriteStream, mkdirSync, type WriteStream } from 'node:fs';
import { join } from 'node:path';
import { EventEmitter } from 'node:events';
import { carriedEnv, JOB_TOKEN_VAR, loadEnvFiles, rankVars } from './env.js';
import { killLocalGroupSync, startLocalRank } from './local.js';
import { startRemoteRank } from './remote.js';
import { resolveTarget, type SshOptions } from './ssh.js';
import type { Placement, RankPlacement } from './plan.js';
import type { RankExit, RankProcess, StreamName } from './rank-process.js';

export interface JobSpec {
  placement: Placement;
  /** Full argv run on every rank (see buildCommand for `node script.js`). */
  command: string[];
  /** Extra variables for every rank (below the rank variables in precedence). */
  env?: Record<string, string>;
  /** Working directory of local ranks; remote ranks use remoteWorkdir ?? cwd. */
  cwd?: string;
  remoteWorkdir?: string;
  ssh?: SshOptions;
  /** Read .nodespeed_env / .deepspeed_env (default true). */
  loadEnvFiles?: boolean;
  /** Per-job secret; generated when absent. */
  jobToken?: string;
  /**
   * Secret variables of one rank (e.g. its slot's TLS identity): like the job token, they reach the
   * rank only through its environment (local) or the script on the SSH channel (remote), never argv,
   * and --dry_run masks them.
   */
  secrets?: (rank: RankPlacement) => Record<string, string>;
  /** Tear everything down on the first non-zero rank exit (default true; `launch` turns it off and supervises). */
  failFast?: boolean;
  /** SIGTERM → SIGKILL delay during teardown, ms (default 2500; whole teardown stays under 5 s). */
  graceMs?: number;
  /** --enable_each_rank_log: one file per rank, named like DeepSpeed's `<timestamp>_rank<N>.log`. */
  logDir?: string;
}

export interface RankLine {
  rank: number;
  host: string;
  stream: StreamName;
  line: string;
}

export interface RankExitEvent extends RankExit {
  rank: number;
  host: string;
  /** True when the launcher itself killed the rank (teardown or killRank). */
  expected: boolean;
}

export interface JobResult {
  code: number;
  reason: string;
  failedRank?: number;
}

interface RankState {
  placement: RankPlacement;
  proc?: RankProcess;
  running: boolean;
  killedByUs: boolean;
  starts: number;
  log?: WriteStream;
}

class StoppedWhileStarting extends Error {}

/** The launcher's own secrets: never passed on to a rank, not even to a local one that inherits the environment. */
export const LAUNCHER_ONLY_VARS = ['NODESPEED_AUTH_TOKEN'];

export declare interface Job {
  on(event: 'line', listener: (e: RankLine) => void): this;
  on(event: 'rank-start', listener: (e: { rank: number; host: string; pid: number | undefined }) => void): this;
  on(event: 'rank-exit', listener: (e: RankExitEvent) => void): this;
  on(event: 'exit', listener: (e: JobResult) => void): this;
}

export class Job extends EventEmitter {
  readonly jobToken: string;
  readonly done: Promise<JobResult>;
  private resolveDone!: (r: JobResult) => void;
  private readonly ranks = new Map<number, RankState>();
  private readonly baseEnv: Record<string, string>;
  private stopping: Promise<void> | undefined;
  private result: { code?: number; reason?: string; failedRank?: number } = {};
  /** One SIGKILL sweep per started process (a sweep costs an SSH round trip; never do it twice). */
  private readonly sweeps = new Map<RankProcess, Promise<void>>();
  private readonly starting = new Set<Promise<void>>();
  private readonly exitGuard = (): void => {
    for (const s of this.ranks.values()) if (s.placement.isLocal) killLocalGroupSync(s.proc?.pid);
  };

  constructor(readonly spec: JobSpec) {
    super();
    this.jobToken = spec.jobToken ?? randomBytes(24).toString('hex');
    const files = spec.loadEnvFiles === false ? {} : loadEnvFiles(spec.cwd ?? process.cwd()).vars;
    this.baseEnv = { ...carriedEnv(), ...files, ...(spec.env ?? {}) };
    this.done = new Promise((r) => (this.resolveDone = r));
    for (const p of spec.placement.ranks) this.ranks.set(p.rank, { placement: p, running: false, killedByUs: false, starts: 0 });
    if (spec.logDir) mkdirSync(spec.logDir, { recursive: true });
    process.on('exit', this.exitGuard);
  }

  /**
   * Starts every rank in parallel. If a rank cannot start, tears the job down and throws every failure's
   * message. If the job is stopped meanwhile (a rank already failed, a signal), resolves: `done` says why.
   */
  async start(): Promise<void> {
    const results = await Promise.allSettled(this.spec.placement.ranks.map((p) => this.startRank(p.rank)));
    const failures = results.flatMap((r) => (r.status === 'rejected' && !(r.reason instanceof StoppedWhileStarting) ? [(r.reason as Error).message] : []));
    if (failures.length > 0) {
      await this.stop('start failed', 1);
      throw new Error([...new Set(failures)].join('\n'));
    }
  }

  /** Environment of one rank, exactly as it is sent (the token and the rank's secrets included). */
  rankEnv(p: RankPlacement): Record<string, string> {
    const own = { ...this.baseEnv, ...rankVars(this.spec.placement, p), [JOB_TOKEN_VAR]: this.jobToken, ...this.spec.secrets?.(p) };
    if (!p.isLocal) return own;
    // Local ranks inherit the launcher's environment, except what is the launcher's alone (the API's
    // bearer token): a worker never needs it, and whoever can read a worker's environment must not get it.
    const inherited = Object.fromEntries(Object.entries(process.env)
      .filter((e): e is [string, string] => e[1] !== undefined && !LAUNCHER_ONLY_VARS.includes(e[0])));
    return { ...inherited, ...own };
  }

  /** Names of the variables --dry_run masks: the job token and the rank's secrets. */
  secretNames(p: RankPlacement): string[] {
    return [JOB_TOKEN_VAR, ...Object.keys(this.spec.secrets?.(p) ?? {})];
  }

  rankState(rank: number): { running: boolean; pid: number | undefined; starts: number } {
    const s = this.mustRank(rank);
    return { running: s.running, pid: s.proc?.pid, starts: s.starts };
  }

  private mustRank(rank: number): RankState {
    const s = this.ranks.get(rank);
    if (!s) throw new Error(`no rank ${rank} in this job (world size ${this.ranks.size})`);
    return s;
  }

  private logFor(s: RankState): WriteStream | undefined {
    if (!this.spec.logDir) return undefined;
    if (!s.log) {
      const stamp = new Date().toISOString().replace(/[-:T]/g, '').slice(0, 14);
      s.log = createWriteStream(join(this.spec.logDir, `${stamp}_rank${s.placement.rank}.log`), { flags: 'a' });
    }
    return s.log;
  }

  /** Starts (or restarts) one rank on its host. */
  startRank(rank: number): Promise<void> {
    const starting = this.launchRank(rank);
    this.starting.add(starting);
    return starting.finally(() => this.starting.delete(starting));
  }

  private async launchRank(rank: number): Promise<void> {
    const s = this.mustRank(rank);
    if (s.running) throw new Error(`rank ${rank} on ${s.placement.host} is still running`);
    if (this.stopping) throw new Error(`job is stopping; rank ${rank} not started`);
    const p = s.placement;
    const log = this.logFor(s);
    const sink = (stream: StreamName, line: string): void => {
      log?.write(line + '\n');
      this.emit('line', { rank, host: p.host, stream, line } satisfies RankLine);
    };
    const cwd = this.spec.cwd ?? process.cwd();
    const env = this.rankEnv(p);
    const proc = p.isLocal
      ? startLocalRank({ command: this.spec.command, cwd, env, sink })
      : await startRemoteRank({
          target: resolveTarget(p.host, p.sshPort, this.spec.ssh),
          ssh: this.spec.ssh ?? {},
          command: this.spec.command,
          cwd: this.spec.remoteWorkdir ?? cwd,
          env,
          sink,
        });
    if (this.stopping) {
      // Teardown began while this rank was connecting: it must not outlive the job.
      await proc.kill('SIGKILL');
      await proc.sweep();
      throw new StoppedWhileStarting(`job stopped while rank ${rank} on ${p.host} was starting`);
    }
    s.proc = proc;
    s.running = true;
    s.killedByUs = false;
    s.starts++;
    this.emit('rank-start', { rank, host: p.host, pid: proc.pid });
    void proc.exited.then((e) => this.onRankExit(s, proc, e));
  }

  private onRankExit(s: RankState, proc: RankProcess, e: RankExit): void {
    if (s.proc !== proc) return;
    s.running = false;
    void this.sweep(proc);
    const rank = s.placement.rank;
    this.emit('rank-exit', { rank, host: s.placement.host, ...e, expected: s.killedByUs || this.stopping !== undefined } satisfies RankExitEvent);
    if (this.stopping) return;
    const failFast = this.spec.failFast ?? true;
    if (e.code !== 0 && failFast) {
      void this.stop(`rank ${rank} on ${s.placement.host} exited with code ${e.code}`, e.code, rank);
    } else if (failFast && this.starting.size === 0 && [...this.ranks.values()].every((r) => !r.running && r.starts > 0)) {
      // Only when every rank has run: with staggered SSH handshakes, early ranks can finish before late ones start.
      void this.stop('all ranks exited', 0);
    }
  }

  private sweep(proc: RankProcess): Promise<void> {
    let p = this.sweeps.get(proc);
    if (!p) {
      p = proc.sweep().catch(() => {});
      this.sweeps.set(proc, p);
    }
    return p;
  }

  /** Signals one rank's process group (its exit then follows the job's policy). */
  async killRank(rank: number, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const s = this.mustRank(rank);
    if (!s.running || !s.proc) return;
    s.killedByUs = true;
    await s.proc.kill(signal);
  }

  async restartRank(rank: number): Promise<void> {
    await this.startRank(rank);
  }

  /**
   * Tears down every rank on every host: SIGTERM to each process group, SIGKILL after graceMs, then a
   * SIGKILL sweep of every group. Resolves when nothing of the job is left. The first reason/code wins.
   */
  stop(reason = 'stopped', code?: number, failedRank?: number): Promise<void> {
    if (this.stopping) return this.stopping;
    this.result = { code, reason, failedRank };
    this.stopping = (async () => {
      const grace = this.spec.graceMs ?? 2500;
      const live = (): RankState[] => [...this.ranks.values()].filter((s) => s.running && s.proc);
      const waitAll = (states: RankState[], ms: number): Promise<unknown> =>
        Promise.race([Promise.all(states.map((s) => s.proc!.exited)), new Promise((r) => setTimeout(r, ms).unref())]);
      const first = live();
      await Promise.all(first.map((s) => s.proc!.kill('SIGTERM')));
      await waitAll(first, grace);
      const stubborn = live();
      await Promise.all(stubborn.map((s) => s.proc!.kill('SIGKILL')));
      await waitAll(stubborn, 1500);
      await Promise.allSettled([...this.starting]);
      await Promise.all([...this.ranks.values()].map((s) => (s.proc ? this.sweep(s.proc) : undefined)));
      await Promise.all(this.sweeps.values());
      await Promise.all([...this.ranks.values()].map((s) => new Promise<void>((r) => (s.log ? s.log.end(r) : r()))));
      process.off('exit', this.exitGuard);
      const res: JobResult = { code: this.result.code ?? 0, reason: this.result.reason ?? reason };
      if (this.result.failedRank !== undefined) res.failedRank = this.result.failedRank;
      this.emit('exit', res);
      this.resolveDone(res);
    })();
    return this.stopping;
  }
}

/**
 * Creates the job, lets `beforeStart` attach listeners (so no early line is missed), starts every rank.
 * If any rank fails to start (SSH refused, bad host key, …) the others are torn down and the error names the host.
 */
export async function startJob(spec: JobSpec, beforeStart?: (job: Job) => void): Promise<Job> {
  const job = new Job(spec);
  beforeStart?.(job);
  await job.start();
  return job;
}
