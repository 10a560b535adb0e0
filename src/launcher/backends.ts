// --launcher pdsh|openmpi|mpich|impi|mvapich|slurm: instead of one SSH connection per rank, that tool
// starts one `nodespeed run --no_ssh` per node, which starts the node's ranks itself (DeepSpeed's
// pdsh runner works the same way with its launch.py). The per-node nodespeed learns its node from
// --node_rank (pdsh's %n) or the tool's rank variable, and the job's hosts and slots from --world_info,
// so every tool gives the ranks the same variables and --include/--exclude work with all of them.
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { SelectedHost } from './select.js';
import { encodeWorldInfo } from './world-info.js';
import { shellQuote } from './remote.js';

export const BACKENDS = ['pdsh', 'openmpi', 'mpich', 'impi', 'mvapich', 'slurm'] as const;
export type BackendName = (typeof BACKENDS)[number];

/** The binary each tool needs (DeepSpeed checks the same ones). */
const BINARY: Record<BackendName, string> = {
  pdsh: 'pdsh', openmpi: 'ompi_info', mpich: 'mpirun', impi: 'mpirun', mvapich: 'mpiname', slurm: 'sinfo',
};

/** Variables that name this process's node when the tool started one process per node, in the order tried. */
export const NODE_RANK_VARS = ['SLURM_NODEID', 'OMPI_COMM_WORLD_RANK', 'PMIX_RANK', 'PMI_RANK', 'MV2_COMM_WORLD_RANK'];

/**
 * This node's index among `hosts`: Slurm's node name when it is one of them (srun numbers nodes in its
 * own order, not the hostfile's), else the first rank variable set (mpirun starts rank i on the i-th
 * host it was given).
 */
export function nodeRankFromEnv(hosts: string[], env: NodeJS.ProcessEnv = process.env): number | undefined {
  const slurmName = env.SLURMD_NODENAME;
  if (slurmName !== undefined && hosts.includes(slurmName)) return hosts.indexOf(slurmName);
  for (const k of NODE_RANK_VARS) {
    const v = env[k];
    if (v !== undefined && /^\d+$/.test(v)) return Number(v);
  }
  return undefined;
}

/** This project's bin/nodespeed, expected at the same path on every host (as `hostfile check` verifies). */
export const NODESPEED_BIN = fileURLToPath(new URL('../../bin/nodespeed', import.meta.url));

export function backendBinary(b: BackendName): string {
  return BINARY[b];
}

export function backendInstalled(b: BackendName, env: NodeJS.ProcessEnv = process.env): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${BINARY[b]}`], { stdio: 'ignore', env });
    return true;
  } catch {
    return false;
  }
}

export interface BackendJob {
  hosts: SelectedHost[];
  /** The per-node nodespeed's flags (everything but the node rank, world info and program). */
  nodeFlags: string[];
  /** Random per launch, in every per-node command line: what the pdsh kill command matches. */
  launchId: string;
  /** The program and its arguments. */
  program: string[];
  node: string;
  cwd: string;
  /** Exported on every node, as DeepSpeed's runners export them. */
  exports: Record<string, string>;
  launcherArgs: string[];
  sshPort?: number;
}

export interface BackendCommand {
  argv: string[];
  /** Variables the tool itself reads (pdsh's rcmd type and ssh arguments). */
  env: Record<string, string>;
  /**
   * pdsh only: run on interrupt to end the per-node nodespeeds (an ssh session without a terminal
   * does not pass the hangup on; DeepSpeed's pdsh runner kills the same way). mpirun and srun pass
   * SIGINT/SIGTERM to their processes themselves.
   */
  kill?: string[];
}

/** The command line that starts one nodespeed per node through the tool. */
export function backendCommand(b: BackendName, j: BackendJob): BackendCommand {
  const world = encodeWorldInfo(j.hosts);
  const names = j.hosts.map((h) => h.host);
  const n = String(names.length);
  // Without --node_rank the per-node nodespeed reads the tool's rank variable (NODE_RANK_VARS).
  const perNode = (nodeRank?: string): string[] =>
    [j.node, NODESPEED_BIN, 'run', '--no_ssh', ...(nodeRank !== undefined ? [`--node_rank=${nodeRank}`] : []), `--world_info=${world}`,
      `--launch_id=${j.launchId}`, ...j.nodeFlags, '--', ...j.program];
  switch (b) {
    case 'pdsh': {
      // pdsh runs one remote shell command per host and replaces %n with the host's index in -w.
      const exports = Object.entries(j.exports).map(([k, v]) => `export ${k}=${shellQuote(v)};`);
      const remote = [...exports, `cd ${shellQuote(j.cwd)};`, ...perNode('%n').map(shellQuote)].join(' ');
      // -S: exit with the largest remote status; -N: no "host: " prefix (the ranks' lines carry [host:rank]).
      const env = { PDSH_RCMD_TYPE: 'ssh', ...(j.sshPort !== undefined ? { PDSH_SSH_ARGS_APPEND: `${process.env.PDSH_SSH_ARGS_APPEND ?? ''} -p ${j.sshPort}`.trim() } : {}) };
      const hosts = ['-f', '1024', '-w', names.join(',')];
      return {
        argv: ['pdsh', '-S', '-N', ...hosts, ...j.launcherArgs, remote],
        env,
        kill: ['pdsh', ...hosts, ...j.launcherArgs, `pkill -TERM -f -- ${shellQuote(`--launch_id=${j.launchId}`)}`],
      };
    }
    case 'openmpi':
      return {
        argv: ['mpirun', '-n', n, '--host', names.join(','), '--map-by', 'node', '--wdir', j.cwd,
          ...Object.entries(j.exports).flatMap(([k, v]) => ['-x', `${k}=${v}`]), ...j.launcherArgs, ...perNode()],
        env: {},
      };
    case 'mpich':
    case 'impi':
      return {
        argv: ['mpirun', '-n', n, '-ppn', '1', '-hosts', names.join(','), '-wdir', j.cwd,
          ...Object.entries(j.exports).flatMap(([k, v]) => ['-genv', k, v]), ...j.launcherArgs, ...perNode()],
        env: {},
      };
    case 'mvapich':
      return {
        argv: ['mpirun_rsh', '-np', n, ...names, ...j.launcherArgs,
          ...Object.entries(j.exports).map(([k, v]) => `${k}=${v}`), 'sh', '-c', `cd ${shellQuote(j.cwd)} && exec "$@"`, 'sh', ...perNode()],
        env: {},
      };
    case 'slurm':
      return {
        argv: ['srun', '-N', n, '--ntasks-per-node=1', `--nodelist=${names.join(',')}`, `--chdir=${j.cwd}`,
          `--export=ALL${Object.entries(j.exports).map(([k, v]) => `,${k}=${v}`).join('')}`, ...j.launcherArgs, ...perNode()],
        env: {},
      };
  }
}

/** --launcher_args as a shell would split it (quotes group, backslash escapes). */
export function splitArgs(s: string): string[] {
  const out: string[] = [];
  let cur: string | undefined;
  let q: '"' | "'" | undefined;
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (q) {
      if (c === q) q = undefined;
      else if (c === '\\' && q === '"' && i + 1 < s.length) cur = (cur ?? '') + s[++i];
      else cur = (cur ?? '') + c;
    } else if (c === '"' || c === "'") {
      q = c;
      cur ??= '';
    } else if (c === '\\' && i + 1 < s.length) cur = (cur ?? '') + s[++i];
    else if (/\s/.test(c)) {
      if (cur !== undefined) out.push(cur);
      cur = undefined;
    } else cur = (cur ?? '') + c;
  }
  if (q) throw new Error(`--launcher_args: unterminated ${q} quote in '${s}'`);
  if (cur !== undefined) out.push(cur);
  return out;
}
