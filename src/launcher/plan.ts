// World plan: selected hosts → one rank per slot, in hostfile order (DeepSpeed's rank numbering).
import { execFileSync } from 'node:child_process';
import { hostname } from 'node:os';
import type { SelectedHost } from './select.js';

export interface RankPlacement {
  rank: number;
  host: string;
  nodeRank: number;
  localRank: number;
  localWorldSize: number;
  /** GPU index this rank owns (CUDA_VISIBLE_DEVICES), or null for a CPU worker. */
  gpu: number | null;
  /** Started directly (execa) rather than over SSH. */
  isLocal: boolean;
  /** SSH port override (--ssh_port); otherwise ~/.ssh/config or 22. */
  sshPort?: number;
  attrs: Record<string, string>;
}

export interface Placement {
  ranks: RankPlacement[];
  worldSize: number;
  numNodes: number;
  masterAddr: string;
  masterPort: number;
}

export interface PlanOptions {
  masterAddr?: string;
  masterPort?: number;
  sshPort?: number;
  /** Send local hosts through SSH too. */
  forceSsh?: boolean;
}

const LOCAL_NAMES = new Set(['localhost', '127.0.0.1', '::1']);

/** Local means "this machine by a name that cannot mean another one"; 127.0.0.2 is deliberately remote. */
export function isLocalHost(host: string): boolean {
  const me = hostname();
  return LOCAL_NAMES.has(host) || host === me || host === me.split('.')[0];
}

export function planWorld(hosts: SelectedHost[], opts: PlanOptions = {}): Placement {
  const masterPort = opts.masterPort ?? 29500;
  if (!Number.isInteger(masterPort) || masterPort <= 0 || masterPort > 65535) {
    throw new Error(`--master_port must be a port number (1-65535), got '${opts.masterPort}'`);
  }
  const ranks: RankPlacement[] = [];
  hosts.forEach((h, nodeRank) => {
    const isLocal = !opts.forceSsh && isLocalHost(h.host);
    const cpu = h.attrs.device === 'cpu';
    h.slots.forEach((slot, localRank) => {
      ranks.push({
        rank: ranks.length,
        host: h.host,
        nodeRank,
        localRank,
        localWorldSize: h.slots.length,
        gpu: cpu ? null : slot,
        isLocal,
        ...(opts.sshPort !== undefined && !isLocal ? { sshPort: opts.sshPort } : {}),
        attrs: h.attrs,
      });
    });
  });
  // DeepSpeed defaults MASTER_ADDR to the first host. A local name like "localhost" is unreachable from
  // other hosts, so a job that spans remote hosts gets this machine's hostname instead.
  const first = hosts[0]!.host;
  const spansRemote = ranks.some((r) => !r.isLocal);
  const masterAddr = opts.masterAddr ?? (isLocalHost(first) && spansRemote ? hostname() : first);
  return { ranks, worldSize: ranks.length, numNodes: hosts.length, masterAddr, masterPort };
}

/** GPU indices visible here: CUDA_VISIBLE_DEVICES when it lists indices, else what nvidia-smi reports. */
export function detectLocalGpus(env: NodeJS.ProcessEnv = process.env): number[] {
  let count = 0;
  try {
    const out = execFileSync('nvidia-smi', ['--query-gpu=index', '--format=csv,noheader'], { encoding: 'utf8', timeout: 10_000, stdio: ['ignore', 'pipe', 'ignore'], env });
    count = out.split('\n').filter((l) => l.trim() !== '').length;
  } catch {
    return [];
  }
  const visible = env.CUDA_VISIBLE_DEVICES;
  if (visible !== undefined && /^\d+(,\d+)*$/.test(visible.trim())) return visible.trim().split(',').map(Number);
  return Array.from({ length: count }, (_, i) => i);
}

/** No hostfile: localhost with every visible GPU, or --num_cpu_workers CPU workers (default 2). */
export function defaultLocalHosts(opts: { numGpus?: number; numCpuWorkers?: number; gpus?: number[] } = {}): SelectedHost[] {
  const gpus = opts.gpus ?? detectLocalGpus();
  if (gpus.length > 0) {
    if (opts.numGpus !== undefined && opts.numGpus > gpus.length) {
      throw new Error(`--num_gpus ${opts.numGpus}: this machine has only ${gpus.length} visible GPUs`);
    }
    return [{ host: 'localhost', slots: gpus.slice(0, opts.numGpus ?? gpus.length), attrs: {} }];
  }
  const n = opts.numCpuWorkers ?? 2;
  if (!Number.isInteger(n) || n <= 0) throw new Error(`--num_cpu_workers must be a positive integer, got '${n}'`);
  return [{ host: 'localhost', slots: Array.from({ length: n }, (_, i) => i), attrs: { device: 'cpu' } }];
}
