// Supervises one job: starts every rank (local or SSH), streams its lines, and tears the whole job down
// — every rank on every host, process groups included — on the first failure or on request.
import { randomBytes } from 'node:crypto';
import { createWriteStream, mkdirSync, type WriteStream } from 'node:fs';
import { join } from 'node:path';
import { EventEmitter } from 'node:events';
import { carriedEnv, JOB_TOKEN_VAR, loadEnvFiles, rankVars, resolveAssigns, type EnvAssign, type ShellValue, type VisibleDevices } from './env.js';
import { killLocalGroupSync, startLocalRank } from './local.js';
import { HANDSHAKES_IN_ALL, Limiter, startRemoteRank, summarizeStartFailures } from './remote.js';
import { resolveTarget, type SshOptions, type SshTarget } from './ssh.js';
import type { Placement, RankPlacement } from './plan.js';
import { StoppedWhileStarting, type RankExit, type RankProcess, type StreamName } from './rank-process.js';
import { allSettings } from '../settings/index.js';

export interface JobSpec {
  placement: Placement;
  /** Full argv run on every rank (see buildCommand for `node script.js`), or one per rank (`--local_rank=N`). */
  command: string[] | ((r: RankPlacement) => string[]);
  /** Shell lines run on the rank's host just before the program, which is `"$@"` there (core binding, a venv script). */
  prelude?: (r: RankPlacement) => string | undefined;
  /** CUDA_VISIBLE_DEVICES: the node's GPUs for every rank (DeepSpeed, the default) or each rank its own. */
  visibleDevices?: VisibleDevices;
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
  /** --enable_each_rank_log: one file per rank, `<stamp>_rank<N>.log` as DeepSpeed names them (one local-time stamp per node). */
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

/**
 * The launcher's own secrets (the registry's secret entries of one process: the API's bearer token):
 * never passed on to a rank, not even to a local one that inherits the environment.
 */
export const LAUNCHER_ONLY_VARS = allSettings().filter((s) => s.secret && s.scope === 'process').map((s) => s.name);

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
  private readonly carried: Record<string, string>;
  /** Env-file lines, expanded by the rank's own shell (remote) or against this environment (local). */
  private readonly fileAssigns: EnvAssign[];
  private readonly logStamps = new Map<string, string>();
  private readonly targets = new Map<string, SshTarget>();
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
    this.carried = carriedEnv();
    this.fileAssigns = spec.loadEnvFiles === false ? [] : loadEnvFiles(spec.cwd ?? process.cwd()).assigns;
    this.done = new Promise((r) => (this.resolveDone = r));
    for (const p of spec.placement.ranks) this.ranks.set(p.rank, { placement: p, running: false, killedByUs: false, starts: 0 });
    if (spec.logDir) mkdirSync(spec.logDir, { recursive: true });
    process.on('exit', this.exitGuard);
  }

  /**
   * Starts every rank in parallel. If a rank cannot start, the ranks not yet started are not started, the
   * job is torn down, and the error summarizes the failures (grouped by cause for many hosts). If the job
   * is stopped meanwhile (a rank already failed, a signal), resolves: `done` says why.
   */
  async start(): Promise<void> {
    const failures: Error[] = [];
    // Remote ranks wait here, not inside a started connection attempt each: 80,000 ranks queued as
    // 80,000 suspended starts cost most of a gigabyte.
    const gate = new Limiter(2 * HANDSHAKES_IN_ALL);
    const begin = (p: RankPlacement): Promise<void> => p.isLocal ? this.startRank(p.rank)
      : gate.run(() => (this.stopping ? Promise.reject(StoppedWhileStarting.quick(`job is stopping; rank ${p.rank} not started`)) : this.startRank(p.rank)));
    const results = await Promise.allSettled(this.spec.placement.ranks.map((p) => begin(p).catch((err: unknown) => {
      if (!(err instanceof StoppedWhileStarting)) {
        failures.push(err as Error);
        void this.stop('start failed', 1);
      }
      throw err;
    })));
    if (failures.length > 0) {
      await this.stop('start failed', 1);
      const notStarted = results.filter((r) => r.status === 'rejected' && r.reason instanceof StoppedWhileStarting).length;
      throw new Error(summarizeStartFailures(failures, notStarted));
    }
  }

  /** A host's SSH target, resolved once per host and port (~/.ssh/config is read each time otherwise). */
  private target(p: RankPlacement): SshTarget {
    const key = `${p.host}:${p.sshPort ?? ''}`;
    let t = this.targets.get(key);
    if (!t) this.targets.set(key, (t = resolveTarget(p.host, p.sshPort, this.spec.ssh)));
    return t;
  }

  /** The argv of one rank. */
  commandFor(p: RankPlacement): string[] {
    return typeof this.spec.command === 'function' ? this.spec.command(p) : this.spec.command;
  }

  /** Variables of one rank, in export order (later wins); env-file values are shell values. */
  rankAssigns(p: RankPlacement): Array<[string, string | ShellValue]> {
    return [
      ...Object.entries(this.carried),
      ...this.fileAssigns.map((a): [string, ShellValue] => [a.key, a.value]),
      ...Object.entries(this.spec.env ?? {}),
      ...Object.entries(rankVars(this.spec.placement, p, this.spec.visibleDevices)),
      [JOB_TOKEN_VAR, this.jobToken],
      ...Object.entries(this.spec.secrets?.(p) ?? {}),
    ];
  }

  /**
   * Environment of one rank, exactly as it is sent (the token and the rank's secrets included);
   * remote env-file values expanded here for display. Local ranks inherit the launcher's environment,
   * except what is the launcher's alone (the API's bearer token): a worker never needs it, and
   * whoever can read a worker's environment must not get it.
   */
  rankEnv(p: RankPlacement): Record<string, string> {
    const inherited = p.isLocal ? Object.fromEntries(Object.entries(process.env)
      .filter((e): e is [string, string] => e[1] !== undefined && !LAUNCHER_ONLY_VARS.includes(e[0]))) : {};
    const own: Record<string, string> = { ...inherited };
    for (const [k, v] of this.rankAssigns(p)) own[k] = typeof v === 'string' ? v : resolveAssigns([{ key: k, value: v, where: '' }], own)[k]!;
    return own;
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
      // DeepSpeed's launch.py stamps once per node, in local time: time.strftime("%Y%m%d%H%M%S").
      let stamp = this.logStamps.get(s.placement.host);
      if (!stamp) this.logStamps.set(s.placement.host, (stamp = localStamp(new Date())));
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
    if (this.stopping) throw StoppedWhileStarting.quick(`job is stopping; rank ${rank} not started`);
    const p = s.placement;
    const log = this.logFor(s);
    const sink = (stream: StreamName, line: string): void => {
      log?.write(line + '\n');
      this.emit('line', { rank, host: p.host, stream, line } satisfies RankLine);
    };
    const cwd = this.spec.cwd ?? process.cwd();
    const command = this.commandFor(p);
    const prelude = this.spec.prelude?.(p);
    const proc = p.isLocal
      ? startLocalRank({ command, cwd, env: this.rankEnv(p), sink, ...(prelude ? { prelude } : {}) })
      : await startRemoteRank({
          host: p.host,
          target: () => this.target(p),
          ssh: this.spec.ssh ?? {},
          command,
          cwd: this.spec.remoteWorkdir ?? cwd,
          env: this.rankAssigns(p),
          sink,
          isStopping: () => this.stopping !== undefined,
          ...(prelude ? { prelude } : {}),
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

function localStamp(d: Date): string {
  const p = (n: number): string => String(n).padStart(2, '0');
  return `${d.getFullYear()}${p(d.getMonth() + 1)}${p(d.getDate())}${p(d.getHours())}${p(d.getMinutes())}${p(d.getSeconds())}`;
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
