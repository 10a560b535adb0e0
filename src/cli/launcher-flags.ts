// The launcher's flags, shared by `run` and `launch`: DeepSpeed's underscore spellings with kebab-case aliases.
import { existsSync } from 'node:fs';
import { Command, Option } from 'commander';
import { loadHostfile } from '../launcher/hostfile.js';
import { selectHosts } from '../launcher/select.js';
import { defaultLocalHosts, planWorld, type Placement } from '../launcher/plan.js';
import type { SshOptions } from '../launcher/ssh.js';

interface FlagDef {
  name: string; // underscore spelling (DeepSpeed's)
  short?: string;
  arg?: string;
  desc: string;
  repeat?: boolean;
  extraAliases?: string[];
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
  { name: 'enable_each_rank_log', arg: '<dir>', desc: 'also write each rank\'s output to <dir>/<timestamp>_rank<N>.log' },
  { name: 'dry_run', desc: 'print the placement and the exact command per rank, run nothing' },
];

function camel(s: string): string {
  return s.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
}

const collect = (v: string, prev: string[] | undefined): string[] => [...(prev ?? []), v];

export function addLauncherOptions(cmd: Command): Command {
  for (const f of FLAGS) {
    const arg = f.arg ? ` ${f.arg}` : '';
    const kebab = f.name.replace(/_/g, '-');
    const main = new Option(`${f.short ? `${f.short}, ` : ''}--${f.name}${arg}`, kebab !== f.name ? `${f.desc} (alias --${kebab})` : f.desc);
    if (f.repeat) main.argParser(collect);
    cmd.addOption(main);
    for (const alias of [...(kebab !== f.name ? [kebab] : []), ...(f.extraAliases ?? []).flatMap((a) => [a, a.replace(/_/g, '-')])]) {
      const o = new Option(`--${alias}${arg}`).hideHelp();
      if (f.repeat) o.argParser(collect);
      cmd.addOption(o);
    }
  }
  return cmd;
}

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
  ssh: SshOptions;
}

function int(flag: string, v: unknown): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || !/^\d+$/.test(v)) throw new Error(`--${flag} expects a non-negative integer, got '${String(v)}'`);
  return Number(v);
}

/** Merges the underscore and kebab spellings (and aliases) into typed options. */
export function readLauncherOptions(raw: Record<string, unknown>): LauncherOptions {
  const get = (name: string): unknown => {
    const def = FLAGS.find((f) => f.name === name)!;
    const keys = [name, camel(name), ...(def.extraAliases ?? []).flatMap((a) => [a, camel(a)])];
    const values = keys.map((k) => raw[k]).filter((v) => v !== undefined);
    if (def.repeat) return values.length ? values.flat() : undefined;
    return values[0];
  };
  const str = (name: string): string | undefined => get(name) as string | undefined;
  const timeout = str('ssh_connect_timeout');
  if (timeout !== undefined && !(Number(timeout) > 0)) throw new Error(`--ssh_connect_timeout expects seconds > 0, got '${timeout}'`);
  const ssh: SshOptions = { acceptNew: get('ssh_accept_new') === true };
  if (str('ssh_dir')) ssh.sshDir = str('ssh_dir');
  if (str('ssh_config')) ssh.configFile = str('ssh_config');
  if (get('ssh_identity')) ssh.identityFiles = get('ssh_identity') as string[];
  if (str('known_hosts')) ssh.knownHostsFile = str('known_hosts');
  if (timeout !== undefined) ssh.connectTimeoutMs = Math.round(Number(timeout) * 1000);
  return {
    hostfile: str('hostfile'),
    include: str('include'),
    exclude: str('exclude'),
    numNodes: int('num_nodes', get('num_nodes')),
    numGpus: int('num_gpus', get('num_gpus')),
    numCpuWorkers: int('num_cpu_workers', get('num_cpu_workers')),
    masterAddr: str('master_addr'),
    masterPort: int('master_port', get('master_port')),
    sshPort: int('ssh_port', get('ssh_port')),
    forceSsh: get('force_ssh') === true,
    remoteWorkdir: str('remote_workdir'),
    node: str('node') ?? process.execPath,
    logDir: str('enable_each_rank_log'),
    dryRun: get('dry_run') === true,
    ssh,
  };
}

/** Hostfile (or this machine) → selection → placement, with every flag applied. */
export function planFromOptions(o: LauncherOptions): Placement {
  const hostfile = o.hostfile ?? (existsSync('hostfile') ? 'hostfile' : undefined);
  let hosts;
  if (hostfile) {
    hosts = selectHosts(loadHostfile(hostfile), { include: o.include, exclude: o.exclude, numNodes: o.numNodes, numGpus: o.numGpus });
  } else {
    if (o.include || o.exclude) throw new Error('--include/--exclude need a hostfile (-H/--hostfile)');
    hosts = defaultLocalHosts({ numGpus: o.numGpus, numCpuWorkers: o.numCpuWorkers });
  }
  return planWorld(hosts, { masterAddr: o.masterAddr, masterPort: o.masterPort, sshPort: o.sshPort, forceSsh: o.forceSsh });
}
