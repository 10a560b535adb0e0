// The launcher's flags, shared by `run`, `launch`, `demo` and `hostfile check`: DeepSpeed's underscore
// spellings with kebab-case aliases, their typed values, and the hostfile → placement step they drive.
// The CLI adds them to its commands; nothing here knows about the CLI.
import { existsSync } from 'node:fs';
import { Command, InvalidArgumentError, Option } from 'commander';
import { loadHostfile, type HostEntry } from './hostfile.js';
import { selectHosts } from './select.js';
import { defaultLocalHosts, localPool, planWorld, type Placement } from './plan.js';
import { parseCoreList } from './cores.js';
import { BACKENDS, type BackendName } from './backends.js';
import { decodeWorldInfo } from './world-info.js';
import type { SshOptions } from './ssh.js';

/** Which commands get a flag: every launcher command, or only `run` (DeepSpeed's script launcher). */
type Scope = 'all' | 'run';

interface FlagDef {
  name: string; // underscore spelling (DeepSpeed's)
  short?: string;
  arg?: string;
  desc?: string;
  scope?: Scope;
  repeat?: boolean;
  extraAliases?: string[];
  /** Accepted so a DeepSpeed command line parses, then refused with this reason. */
  refused?: string;
  /** Internal (one launcher talking to another); not in --help. */
  hidden?: boolean;
}

const FLAGS: FlagDef[] = [
  { name: 'hostfile', short: '-H', arg: '<file>', desc: 'DeepSpeed hostfile (default: ./hostfile if present, else this machine only)' },
  { name: 'include', short: '-i', arg: '<spec>', desc: "hosts/slots to use, DeepSpeed syntax 'host1@host2:0,2'" },
  { name: 'exclude', short: '-e', arg: '<spec>', desc: "hosts/slots to leave out, DeepSpeed syntax 'host1@host2:0,2'" },
  { name: 'num_nodes', arg: '<n>', desc: 'use the first N hosts of the hostfile' },
  { name: 'num_gpus', arg: '<n>', desc: 'use the first N slots of every host', extraAliases: ['num_accelerators'] },
  { name: 'num_cpu_workers', arg: '<n>', desc: 'CPU workers on this machine when there is no hostfile and no GPU (default 2)' },
  { name: 'master_addr', arg: '<addr>', desc: 'MASTER_ADDR for every rank (default: first host)' },
  { name: 'master_port', arg: '<port>', desc: 'MASTER_PORT for every rank (default 29500)' },
  { name: 'ssh_port', arg: '<port>', desc: 'SSH port for every remote host (default: ~/.ssh/config or 22)' },
  { name: 'force_ssh', desc: 'start local hosts through SSH too' },
  { name: 'ssh_accept_new', desc: 'record unknown host keys in known_hosts (StrictHostKeyChecking=accept-new)' },
  { name: 'ssh_dir', arg: '<dir>', desc: 'directory used instead of ~/.ssh (config, known_hosts, id_*); env NODESPEED_SSH_DIR' },
  { name: 'ssh_config', arg: '<file>', desc: 'SSH config file (default <ssh dir>/config)' },
  { name: 'ssh_identity', arg: '<file>', desc: 'private key to try first (repeatable)', repeat: true },
  { name: 'known_hosts', arg: '<file>', desc: 'known_hosts file (default <ssh dir>/known_hosts)' },
  { name: 'ssh_connect_timeout', arg: '<seconds>', desc: 'SSH connect + handshake deadline (default 10)' },
  { name: 'remote_workdir', arg: '<dir>', desc: 'working directory on remote hosts (default: the current one)' },
  { name: 'node', arg: '<path>', desc: 'Node binary that runs .js/.mjs/.cjs programs on every host (default: this one)' },
  { name: 'enable_each_rank_log', arg: '<dir>', desc: "also write each rank's output to <dir>/<yyyymmddHHMMSS>_rank<N>.log (one local-time stamp per node)" },
  { name: 'dry_run', desc: 'print the placement and the exact command per rank, run nothing' },
  { name: 'bind_cores_to_rank', desc: "pin each rank to its share of the host's cores (taskset, else numactl) and set OMP_NUM_THREADS; a worker's CPU threads default to its share" },
  { name: 'bind_core_list', arg: '<list>', desc: 'cores to split with --bind_cores_to_rank, e.g. 0,2-5 (default: every physical core)' },
  // `run` only: DeepSpeed's script-launcher flags.
  { name: 'launcher', arg: '<name>', scope: 'run', desc: `how ranks reach other hosts: ssh (default, built in), ${BACKENDS.join(', ')} (one nodespeed per node through that tool, which must be installed)` },
  { name: 'launcher_args', arg: '<args>', scope: 'run', desc: 'extra arguments for the --launcher tool, as one quoted string', extraAliases: ['launcher_arg'] },
  { name: 'force_multi', scope: 'run', desc: 'multi-node mode even for one host: every host, local names included, through SSH (like --force_ssh)' },
  { name: 'no_ssh', scope: 'run', desc: 'start only the ranks of node --node_rank, on this machine (run the same command on every node)' },
  { name: 'no_ssh_check', scope: 'run', desc: 'accepted for DeepSpeed; nodespeed has no separate SSH pre-check (each rank\'s connection is the check)' },
  { name: 'node_rank', arg: '<n>', scope: 'run', desc: 'with --no_ssh: which node of the hostfile this machine is (default: from SLURM_NODEID, OMPI_COMM_WORLD_RANK, PMI_RANK, PMIX_RANK or MV2_COMM_WORLD_RANK)' },
  { name: 'no_local_rank', scope: 'run', desc: 'do not pass --local_rank=N to the program' },
  { name: 'no_python', scope: 'run', desc: 'execute the program directly, even a .py/.js file' },
  { name: 'module', scope: 'run', desc: "run the program as a Python module ('python -u -m <program>')" },
  { name: 'python', arg: '<path>', scope: 'run', desc: 'Python that runs .py programs and --module on every host (default python3)' },
  { name: 'save_pid', scope: 'run', desc: 'write this launcher\'s pid to /tmp/<pid>.deepspeed while it runs' },
  { name: 'venv_script', arg: '<file>', scope: 'run', desc: 'shell script sourced on every host before the program (e.g. a venv\'s bin/activate)' },
  { name: 'log_level', arg: '<level>', scope: 'run', desc: "launcher messages: debug, info (default), warning, error, critical" },
  { name: 'quiet', short: '-q', scope: 'run', desc: 'the same as --log_level error' },
  { name: 'world_info', arg: '<base64>', scope: 'run', hidden: true, desc: 'the hosts and slots of the job, from the launcher that started this one (--launcher)' },
  { name: 'launch_id', arg: '<id>', scope: 'run', hidden: true, desc: 'marks the nodespeeds one --launcher run started (what its interrupt matches)' },
  { name: 'elastic_training', scope: 'run', refused: 'it runs the program under torch.distributed.elastic, which nodespeed does not embed; `nodespeed launch` heals its own workers (spares, respawn, shrink)' },
  { name: 'min_elastic_nodes', arg: '<n>', scope: 'run', refused: 'it only applies to --elastic_training, which nodespeed does not support' },
  { name: 'max_elastic_nodes', arg: '<n>', scope: 'run', refused: 'it only applies to --elastic_training, which nodespeed does not support' },
  { name: 'autotuning', arg: '<mode>', scope: 'run', refused: "it tunes DeepSpeed's training config (ZeRO stage, micro-batch), which nodespeed does not have" },
];

function camel(s: string): string {
  return s.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
}

const collect = (v: string, prev: string[] | undefined): string[] => [...(prev ?? []), v];

export interface AddFlagsOptions {
  /** Add `run`'s script-launcher flags too. */
  run?: boolean;
  /** Help text a command gives a flag instead of the shared one (its own default, say). */
  descriptions?: Record<string, string>;
}

export function addLauncherOptions(cmd: Command, opts: AddFlagsOptions = {}): Command {
  for (const f of FLAGS) {
    if (f.scope === 'run' && !opts.run) continue;
    const arg = f.arg ? ` ${f.arg}` : '';
    const kebab = f.name.replace(/_/g, '-');
    const desc = f.refused ? `not supported: ${f.refused}` : (opts.descriptions?.[f.name] ?? f.desc ?? '');
    const main = new Option(`${f.short ? `${f.short}, ` : ''}--${f.name}${arg}`, kebab !== f.name ? `${desc} (alias --${kebab})` : desc);
    if (f.repeat) main.argParser(collect);
    if (f.hidden || f.refused) main.hideHelp();
    cmd.addOption(main);
    for (const alias of [...(kebab !== f.name ? [kebab] : []), ...(f.extraAliases ?? []).flatMap((a) => [a, a.replace(/_/g, '-')])]) {
      const o = new Option(`--${alias}${arg}`).hideHelp();
      // `--no-python` spells --no_python, not commander's negation of --python.
      o.negate = false;
      if (f.repeat) o.argParser(collect);
      cmd.addOption(o);
    }
  }
  return cmd;
}

export type LogLevel = 'debug' | 'info' | 'warning' | 'error' | 'critical';
const LOG_LEVELS: LogLevel[] = ['debug', 'info', 'warning', 'error', 'critical'];

export interface LauncherOptions {
  hostfile?: string;
  include?: string;
  exclude?: string;
  numNodes?: number;
  numGpus?: number;
  numCpuWorkers?: number;
  masterAddr?: string;
  masterPort?: number;
  sshPort?: number;
  forceSsh: boolean;
  remoteWorkdir?: string;
  node: string;
  logDir?: string;
  dryRun: boolean;
  /** --bind_cores_to_rank, over --bind_core_list when given (checked: only with it). */
  bindCores: boolean;
  bindCoreList?: number[];
  ssh: SshOptions;
}

/** `run`'s flags on top of the shared ones. */
export interface RunOptions extends LauncherOptions {
  launcher: 'ssh' | BackendName;
  launcherArgs?: string;
  noSsh: boolean;
  nodeRank?: number;
  noLocalRank: boolean;
  noPython: boolean;
  module: boolean;
  python: string;
  savePid: boolean;
  venvScript?: string;
  logLevel: LogLevel;
  worldInfo?: HostEntry[];
}

/** Parses an integer flag value; the error names the flag and the range. */
export function parseIntFlag(flag: string, v: string, min: number, max: number): number {
  const t = v.trim();
  if (!/^[+-]?\d+$/.test(t) || Number(t) < min || Number(t) > max || !Number.isSafeInteger(Number(t))) {
    throw new InvalidArgumentError(`${flag} must be an integer from ${min} to ${max} (got '${v}')`);
  }
  return Number(t);
}

/** Largest value of a uint32 field on the wire. */
export const U32_MAX = 2 ** 32 - 1;
/** Largest delay Node's timers keep (a longer one fires after 1 ms). */
export const MAX_TIMER_MS = 2 ** 31 - 1;

function int(flag: string, v: unknown, min: number, max: number): number | undefined {
  if (v === undefined) return undefined;
  return parseIntFlag(`--${flag}`, String(v), min, max);
}

function lookup(raw: Record<string, unknown>, def: FlagDef): unknown {
  const keys = [def.name, camel(def.name), ...(def.extraAliases ?? []).flatMap((a) => [a, camel(a)])];
  const values = keys.map((k) => raw[k]).filter((v) => v !== undefined);
  if (def.repeat) return values.length ? values.flat() : undefined;
  return values[0];
}

/** Merges the underscore and kebab spellings (and aliases) into typed options. */
export function readLauncherOptions(raw: Record<string, unknown>): LauncherOptions {
  const get = (name: string): unknown => lookup(raw, FLAGS.find((f) => f.name === name)!);
  const str = (name: string): string | undefined => get(name) as string | undefined;
  const timeout = str('ssh_connect_timeout');
  if (timeout !== undefined && !(Number(timeout) > 0 && Number(timeout) * 1000 <= MAX_TIMER_MS)) {
    throw new Error(`--ssh_connect_timeout expects seconds > 0 and at most ${Math.floor(MAX_TIMER_MS / 1000)}, got '${timeout}'`);
  }
  const ssh: SshOptions = { acceptNew: get('ssh_accept_new') === true };
  if (str('ssh_dir')) ssh.sshDir = str('ssh_dir');
  if (str('ssh_config')) ssh.configFile = str('ssh_config');
  if (get('ssh_identity')) ssh.identityFiles = get('ssh_identity') as string[];
  if (str('known_hosts')) ssh.knownHostsFile = str('known_hosts');
  if (timeout !== undefined) ssh.connectTimeoutMs = Math.round(Number(timeout) * 1000);
  const coreList = str('bind_core_list');
  const bindCores = get('bind_cores_to_rank') === true;
  if (coreList !== undefined && !bindCores) throw new Error('--bind_core_list only applies with --bind_cores_to_rank');
  return {
    hostfile: str('hostfile'),
    include: str('include'),
    exclude: str('exclude'),
    numNodes: int('num_nodes', get('num_nodes'), 0, U32_MAX),
    numGpus: int('num_gpus', get('num_gpus'), 0, U32_MAX),
    numCpuWorkers: int('num_cpu_workers', get('num_cpu_workers'), 1, 1024),
    masterAddr: str('master_addr'),
    masterPort: int('master_port', get('master_port'), 1, 65535),
    sshPort: int('ssh_port', get('ssh_port'), 1, 65535),
    forceSsh: get('force_ssh') === true,
    remoteWorkdir: str('remote_workdir'),
    node: str('node') ?? process.execPath,
    logDir: str('enable_each_rank_log'),
    dryRun: get('dry_run') === true,
    bindCores,
    ...(coreList !== undefined ? { bindCoreList: parseCoreList(coreList, '--bind_core_list') } : {}),
    ssh,
  };
}

/** `run`'s options: the shared ones plus the script-launcher flags, each checked. */
export function readRunOptions(raw: Record<string, unknown>): RunOptions {
  for (const f of FLAGS) {
    if (f.refused && lookup(raw, f) !== undefined) throw new Error(`--${f.name} is not supported: ${f.refused}`);
  }
  const get = (name: string): unknown => lookup(raw, FLAGS.find((f) => f.name === name)!);
  const str = (name: string): string | undefined => get(name) as string | undefined;
  const flag = (name: string): boolean => get(name) === true;
  const base = readLauncherOptions(raw);
  const launcher = (str('launcher') ?? 'ssh').toLowerCase();
  if (launcher !== 'ssh' && !(BACKENDS as readonly string[]).includes(launcher)) {
    throw new Error(`--launcher ${str('launcher')}: unknown launcher (choose ssh, ${BACKENDS.join(', ')})`);
  }
  const logLevel = flag('quiet') ? 'error' : (str('log_level') ?? 'info').toLowerCase();
  if (!(LOG_LEVELS as string[]).includes(logLevel)) throw new Error(`--log_level ${str('log_level')}: choose ${LOG_LEVELS.join(', ')}`);
  const noSsh = flag('no_ssh');
  const nodeRank = int('node_rank', get('node_rank'), 0, U32_MAX);
  if (nodeRank !== undefined && !noSsh) {
    throw new Error('--node_rank only applies with --no_ssh (without it this launcher starts every node itself)');
  }
  if (noSsh && launcher !== 'ssh') throw new Error(`--no_ssh and --launcher ${launcher} exclude each other (--no_ssh starts one node's ranks here)`);
  if (flag('no_python') && flag('module')) throw new Error("--no_python and --module exclude each other (a module needs 'python -m')");
  const worldInfo = str('world_info');
  return {
    ...base,
    forceSsh: base.forceSsh || flag('force_multi'),
    launcher: launcher as RunOptions['launcher'],
    ...(str('launcher_args') !== undefined ? { launcherArgs: str('launcher_args') } : {}),
    noSsh,
    ...(nodeRank !== undefined ? { nodeRank } : {}),
    noLocalRank: flag('no_local_rank'),
    noPython: flag('no_python'),
    module: flag('module'),
    python: str('python') ?? 'python3',
    savePid: flag('save_pid'),
    ...(str('venv_script') !== undefined ? { venvScript: str('venv_script') } : {}),
    logLevel: logLevel as LogLevel,
    ...(worldInfo !== undefined ? { worldInfo: decodeWorldInfo(worldInfo) } : {}),
  };
}

/** Hostfile (or this machine) → selection → placement, with every flag applied. */
export function planFromOptions(o: LauncherOptions & { worldInfo?: HostEntry[] }): Placement {
  const planOpts = { masterAddr: o.masterAddr, masterPort: o.masterPort, sshPort: o.sshPort, forceSsh: o.forceSsh };
  const select = { include: o.include, exclude: o.exclude, numNodes: o.numNodes, numGpus: o.numGpus };
  if (o.worldInfo) return planWorld(selectHosts(o.worldInfo), planOpts);
  const hostfile = o.hostfile ?? (existsSync('hostfile') ? 'hostfile' : undefined);
  if (hostfile) return planWorld(selectHosts(loadHostfile(hostfile), select), planOpts);
  // No hostfile: DeepSpeed's rules for this machine alone.
  if (o.numNodes !== undefined && o.numNodes > 1) {
    throw new Error(`--num_nodes ${o.numNodes}: there is no hostfile (-H), so this machine is the only node`);
  }
  if (o.include || o.exclude) return planWorld(selectHosts(localPool({ numCpuWorkers: o.numCpuWorkers }), select), planOpts);
  return planWorld(defaultLocalHosts({ numGpus: o.numGpus, numCpuWorkers: o.numCpuWorkers }), planOpts);
}
