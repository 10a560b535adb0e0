// `nodespeed run [launcher flags] <program> [args...]`: the generic launcher, like `deepspeed script.py`.
import { randomBytes } from 'node:crypto';
import { existsSync, unlinkSync, writeFileSync } from 'node:fs';
import { Command } from 'commander';
import { execa } from 'execa';
import { backendBinary, backendCommand, backendInstalled, nodeRankFromEnv, splitArgs, type BackendName } from '../launcher/backends.js';
import { bindCoresScript } from '../launcher/cores.js';
import { rankCommand } from '../launcher/command.js';
import { carriedEnv } from '../launcher/env.js';
import { attachConsole, dryRunCommands, placementTable } from '../launcher/format.js';
import { addLauncherOptions, planFromOptions, readRunOptions, type LogLevel, type RunOptions } from '../launcher/flags.js';
import { shellQuote } from '../launcher/remote.js';
import { Job } from '../launcher/supervisor.js';
import type { Placement, RankPlacement } from '../launcher/plan.js';

export function register(program: Command): void {
  // Needed so options after <program> belong to the program, not to us (passThroughOptions).
  program.enablePositionalOptions();
  const cmd = program
    .command('run')
    .description('start <program> once per slot on every host of the hostfile (local hosts directly, others over SSH), as `deepspeed` does: ' +
      '.py through python3 -u, .js/.mjs/.cjs through Node, `--local_rank=N` after the program unless --no_local_rank')
    .argument('<program>', 'program to run')
    .argument('[args...]', 'arguments passed to the program')
    .passThroughOptions();
  addLauncherOptions(cmd, { run: true }).action(async (prog: string, args: string[], raw: Record<string, unknown>) => {
    process.exitCode = await runCommand(prog, args, raw);
  });
}

const LEVELS: LogLevel[] = ['debug', 'info', 'warning', 'error', 'critical'];

function logger(level: LogLevel) {
  return (at: LogLevel, line: string): void => {
    if (LEVELS.indexOf(at) >= LEVELS.indexOf(level)) process.stderr.write(`${line}\n`);
  };
}

/** /tmp/<pid>.deepspeed holding this launcher's pid while it runs (DeepSpeed's --save_pid file). */
function savePid(): () => void {
  const file = `/tmp/${process.pid}.deepspeed`;
  if (existsSync(file)) throw new Error(`--save_pid: ${file} exists already`);
  writeFileSync(file, String(process.pid));
  const remove = (): void => {
    try {
      unlinkSync(file);
    } catch {
      /* gone */
    }
  };
  process.once('exit', remove);
  return remove;
}

/** The ranks of one node, started here (--no_ssh): what DeepSpeed's launch.py does on each node. */
function ownNode(p: Placement, o: RunOptions): Placement {
  const hosts = [...new Set(p.ranks.map((r) => r.host))];
  const nodeRank = o.nodeRank ?? nodeRankFromEnv(hosts);
  if (nodeRank === undefined) {
    throw new Error('--no_ssh needs --node_rank N (or SLURM_NODEID, OMPI_COMM_WORLD_RANK, PMIX_RANK, PMI_RANK, MV2_COMM_WORLD_RANK set by the tool that started it)');
  }
  if (nodeRank >= p.numNodes) throw new Error(`--node_rank ${nodeRank}: the job has ${p.numNodes} node(s) (0-${p.numNodes - 1})`);
  return { ...p, ranks: p.ranks.filter((r) => r.nodeRank === nodeRank).map((r) => ({ ...r, isLocal: true })) };
}

function prelude(o: RunOptions): ((r: RankPlacement) => string | undefined) | undefined {
  if (!o.venvScript && !o.bindCores) return undefined;
  const venv = o.venvScript ? `. ${shellQuote(o.venvScript.includes('/') ? o.venvScript : `./${o.venvScript}`)} || exit 1` : undefined;
  return (r) => [venv, o.bindCores ? bindCoresScript(o.bindCoreList, r.localWorldSize, r.localRank) : undefined].filter(Boolean).join('\n');
}

async function runCommand(prog: string, args: string[], raw: Record<string, unknown>): Promise<number> {
  let job: Job;
  let log: ReturnType<typeof logger>;
  try {
    const o = readRunOptions(raw);
    log = logger(o.logLevel);
    if (o.launcher !== 'ssh') return await runThroughBackend(o.launcher, o, prog, args, log);
    let placement = planFromOptions(o);
    if (o.noSsh) placement = ownNode(placement, o);
    // Each rank's prelude now, so a core list too short for a node is an error before anything starts.
    const preludes = prelude(o);
    const perRank = preludes ? new Map(placement.ranks.map((r) => [r.rank, preludes(r)])) : undefined;
    job = new Job({
      placement, command: rankCommand(prog, args, { node: o.node, python: o.python, noPython: o.noPython, module: o.module, localRankArg: !o.noLocalRank }),
      cwd: process.cwd(), remoteWorkdir: o.remoteWorkdir, ssh: o.ssh, logDir: o.logDir, visibleDevices: 'node',
      ...(perRank ? { prelude: (r: RankPlacement) => perRank.get(r.rank) } : {}),
    });
    if (o.dryRun) {
      process.stdout.write(`${placementTable(placement)}\n${dryRunCommands(job, o.ssh, process.cwd(), o.remoteWorkdir)}\n`);
      return 0;
    }
    if (o.savePid) savePid();
    log('info', `nodespeed: starting ${placement.ranks.length} rank(s) on ${new Set(placement.ranks.map((r) => r.host)).size} host(s)` +
      (o.noSsh ? ` (node ${placement.ranks[0]!.nodeRank} of ${placement.numNodes}, world size ${placement.worldSize})` : ''));
  } catch (err) {
    process.stderr.write(`nodespeed run: ${(err as Error).message}\n`);
    return 1;
  }
  attachConsole(job);
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals): void => {
    signals++;
    if (signals > 1) log('warning', `nodespeed: ${sig} again, teardown already in progress`);
    void job.stop(`received ${sig}`, sig === 'SIGINT' ? 130 : 143);
  };
  // A reader that went away (`nodespeed run prog | head`): stop as a writer killed by SIGPIPE would.
  const onStdoutError = (err: NodeJS.ErrnoException): void => {
    if (err.code === 'EPIPE') void job.stop('stdout closed', 141);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.stdout.on('error', onStdoutError);
  try {
    await job.start();
  } catch (err) {
    const res = await job.done;
    process.stderr.write(`nodespeed run: ${res.reason === 'start failed' ? (err as Error).message : res.reason}\n`);
    return res.code;
  }
  const res = await job.done;
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);
  if (res.code !== 0 && res.reason !== 'stdout closed') log('error', `nodespeed: ${res.reason}; all ranks stopped`);
  return res.code;
}

/**
 * --launcher pdsh|openmpi|...: the tool starts `nodespeed run --no_ssh` on every node; this process
 * waits for it, forwards its output and status, and passes SIGINT/SIGTERM on (the tools end their
 * remote processes on them).
 */
async function runThroughBackend(b: BackendName, o: RunOptions, prog: string, args: string[], log: ReturnType<typeof logger>): Promise<number> {
  const placement = planFromOptions(o);
  const hosts: Array<{ host: string; slots: number[]; attrs: Record<string, string> }> = [];
  for (const r of placement.ranks) {
    const last = hosts[hosts.length - 1];
    if (last && last.host === r.host) last.slots.push(r.gpu ?? r.localRank);
    else hosts.push({ host: r.host, slots: [r.gpu ?? r.localRank], attrs: r.attrs });
  }
  const nodeFlags = [
    `--master_addr=${placement.masterAddr}`, `--master_port=${placement.masterPort}`, `--node=${o.node}`, `--python=${o.python}`,
    `--log_level=${o.logLevel}`,
    ...(o.noLocalRank ? ['--no_local_rank'] : []), ...(o.noPython ? ['--no_python'] : []), ...(o.module ? ['--module'] : []),
    ...(o.logDir ? [`--enable_each_rank_log=${o.logDir}`] : []), ...(o.bindCores ? ['--bind_cores_to_rank'] : []),
    ...(o.bindCoreList ? [`--bind_core_list=${o.bindCoreList.join(',')}`] : []), ...(o.venvScript ? [`--venv_script=${o.venvScript}`] : []),
  ];
  const { argv, env, kill } = backendCommand(b, {
    hosts, nodeFlags, launchId: randomBytes(8).toString('hex'), program: [prog, ...args], node: o.node, cwd: o.remoteWorkdir ?? process.cwd(), exports: carriedEnv(),
    launcherArgs: o.launcherArgs ? splitArgs(o.launcherArgs) : [], ...(o.sshPort !== undefined ? { sshPort: o.sshPort } : {}),
  });
  if (o.dryRun) {
    process.stdout.write(`${placementTable(placement)}\n${Object.entries(env).map(([k, v]) => `${k}=${shellQuote(v)} `).join('')}${argv.map(shellQuote).join(' ')}\n`);
    return 0;
  }
  if (!backendInstalled(b)) {
    throw new Error(`--launcher ${b}: '${backendBinary(b)}' is not installed on this machine (use --launcher ssh, the built-in one, or install ${b})`);
  }
  if (o.savePid) savePid();
  log('info', `nodespeed: starting ${placement.worldSize} rank(s) on ${placement.numNodes} host(s) through ${b}`);
  const child = execa(argv[0]!, argv.slice(1), { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'], reject: false, buffer: false });
  child.stdout!.pipe(process.stdout, { end: false });
  child.stderr!.pipe(process.stderr, { end: false });
  let killed = false;
  const forward = (sig: NodeJS.Signals): void => {
    child.kill(sig);
    if (kill && !killed) {
      killed = true;
      void execa(kill[0]!, kill.slice(1), { env: { ...process.env, ...env }, stdio: 'ignore', reject: false });
    }
  };
  process.on('SIGINT', forward);
  process.on('SIGTERM', forward);
  const r = await child;
  process.off('SIGINT', forward);
  process.off('SIGTERM', forward);
  if (r.exitCode === undefined) {
    process.stderr.write(`nodespeed run: ${argv[0]} failed: ${r.shortMessage}\n`);
    return 1;
  }
  return r.exitCode;
}
