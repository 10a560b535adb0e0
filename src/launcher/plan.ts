// World plan: selected hosts → one rank per slot, in hostfile order (DeepSpeed's rank numbering).
import { execFileSync } from 'node:child_process';
import { hostname } from 'node:os';
import type { HostEntry } from './hostfile.js';
import type { SelectedHost } from './select.js';

export interface RankPlacement {
  rank: number;
  host: string;
  nodeRank: number;
  localRank: number;
  localWorldSize: number;
  /** GPU index this rank owns, or null for a CPU worker. */
  gpu: number | null;
  /** Every GPU its node uses, in local-rank order (DeepSpeed's CUDA_VISIBLE_DEVICES); absent for CPU ranks. */
  nodeGpus?: number[];
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
    const nodeGpus = cpu ? undefined : h.slots;
    h.slots.forEach((slot, localRank) => {
      ranks.push({
        rank: ranks.length,
        host: h.host,
        nodeRank,
        localRank,
        localWorldSize: h.slots.length,
        gpu: cpu ? null : slot,
        ...(nodeGpus ? { nodeGpus } : {}),
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

/** GPU ids that CUDA_VISIBLE_DEVICES names, checked against the GPUs nvidia-smi lists. */
export function visibleGpus(visible: string | undefined, gpus: Array<{ index: number; uuid: string }>): number[] {
  const all = gpus.map((g) => g.index);
  if (visible === undefined) return all;
  const v = visible.trim();
  if (v === '') return [];
  const ids: number[] = [];
  for (const item of v.split(',').map((x) => x.trim())) {
    const byUuid = gpus.find((g) => g.uuid !== '' && (g.uuid === item || (item.startsWith('GPU-') && g.uuid.startsWith(item))));
    const id = /^\d+$/.test(item) ? Number(item) : byUuid?.index;
    if (id === undefined || !all.includes(id)) {
      const have = all.length ? `GPUs ${all.join(',')}` : 'no GPU';
      throw new Error(`CUDA_VISIBLE_DEVICES=${visible} names ${/^\d+$/.test(item) ? `GPU ${item}` : `'${item}'`}, but this machine has ${have} (nvidia-smi)`);
    }
    if (ids.includes(id)) throw new Error(`CUDA_VISIBLE_DEVICES=${visible} names GPU ${id} twice`);
    ids.push(id);
  }
  return ids;
}

/** GPU ids usable here: CUDA_VISIBLE_DEVICES (indices or GPU UUIDs) checked against nvidia-smi, else every GPU it lists. */
export function detectLocalGpus(env: NodeJS.ProcessEnv = process.env): number[] {
  let out: string;
  try {
    out = execFileSync('nvidia-smi', ['--query-gpu=index,uuid', '--format=csv,noheader'], { encoding: 'utf8', timeout: 10_000, stdio: ['ignore', 'pipe', 'ignore'], env });
  } catch {
    return [];
  }
  const gpus = out.split('\n').filter((l) => l.trim() !== '').map((l) => {
    const [index, uuid] = l.split(',').map((x) => x.trim());
    return { index: Number(index), uuid: uuid ?? '' };
  }).filter((g) => Number.isInteger(g.index));
  return visibleGpus(env.CUDA_VISIBLE_DEVICES, gpus);
}

/** This machine as one host: every usable GPU, else --num_cpu_workers CPU workers (default 2). */
export function localPool(opts: { numCpuWorkers?: number; gpus?: number[] } = {}): HostEntry[] {
  const gpus = opts.gpus ?? detectLocalGpus();
  if (gpus.length > 0) return [{ host: 'localhost', slots: gpus.length, slotIds: gpus, attrs: {}, line: 0 }];
  const n = opts.numCpuWorkers ?? 2;
  if (!Number.isInteger(n) || n <= 0) throw new Error(`--num_cpu_workers must be a positive integer, got '${n}'`);
  return [{ host: 'localhost', slots: n, attrs: { device: 'cpu' }, line: 0 }];
}

/** No hostfile: localhost with every usable GPU (the first --num_gpus of them), else CPU workers. */
export function defaultLocalHosts(opts: { numGpus?: number; numCpuWorkers?: number; gpus?: number[] } = {}): SelectedHost[] {
  const [pool] = localPool(opts) as [HostEntry];
  const slots = pool.slotIds ?? Array.from({ length: pool.slots }, (_, i) => i);
  if (opts.numGpus !== undefined) {
    if (pool.attrs.device === 'cpu') {
      throw new Error(`--num_gpus ${opts.numGpus}: this machine has no GPU (none from nvidia-smi, or CUDA_VISIBLE_DEVICES is empty); use --num_cpu_workers for CPU ranks`);
    }
    if (!(opts.numGpus > 0)) throw new Error(`--num_gpus must be a positive integer, got '${opts.numGpus}'`);
    if (opts.numGpus > slots.length) throw new Error(`--num_gpus ${opts.numGpus}: this machine has only ${slots.length} usable GPU(s) (${slots.join(',')})`);
  }
  // Sorted as DeepSpeed's --include of the visible list sorts it.
  return [{ host: 'localhost', slots: [...slots].sort((a, b) => a - b).slice(0, opts.numGpus ?? slots.length), attrs: pool.attrs }];
}
