// From replica groups (a deployment file's, or the one group the flags describe) and the launcher's
// placement to the layout: which slot runs which rank of which group, and which slots are spares.
// The launcher's processes are then numbered in layout order (slot i runs layout rank i, the
// spares after), so a rank's RANK is its layout rank at launch.
//
// A slot's device is its hostfile line's `device=` attribute: `device=cpu` marks a CPU-only host
// (its slots are CPU workers), `device=cuda` a GPU host; unmarked slots are GPU slots to a cuda
// group and CPU workers to a cpu group (a hostfile without attributes serves either kind, as
// before). Without a hostfile, a deployment runs on this machine: its GPUs for the cuda groups
// and as many CPU worker processes as the cpu groups (and spares) need.
import { DEFAULT_GROUP, planGroups } from '../coordinator/layout.js';
import type { GroupRequest, GroupServing, Layout, SlotRef } from '../coordinator/layout.js';
import { LayoutError } from '../coordinator/layout.js';
import type { ModelConfig } from '../model/config.js';
import { fp8Refusal } from '../model/precision.js';
import { planShard } from '../model/weights.js';
import type { Placement, RankPlacement } from './plan.js';
import type { SelectedHost } from './select.js';

/** One replica group as the launcher places it. */
export interface GroupOptions {
  name: string;
  tp: number;
  pp: number;
  replicas: number | 'auto';
  serving: GroupServing;
  hosts?: string[];
  /** DeepSpeed's --include syntax over the hostfile's slots: `host1:0,1@host2`. */
  slots?: string;
  /** The cores its workers are pinned to, split between its workers on each host (cores.ts planCoreBindings). */
  cpus?: number[];
}

function slotDevice(r: RankPlacement): 'cpu' | 'cuda' | undefined {
  const d = r.attrs.device;
  return d === 'cpu' || d === 'cuda' ? d : undefined;
}

/** A slot's number on its host as the hostfile counts them (the GPU index; a CPU host's position). */
function slotNumber(r: RankPlacement): number {
  return r.gpu ?? r.localRank;
}

/** `host1:0,1@host2` → the placement indices it names; LayoutError (key `slots`) for a host or slot the placement lacks. */
export function parseSlotSpec(spec: string, p: Placement, group: number, name: string): Set<number> {
  const out = new Set<number>();
  for (const part of spec.split('@')) {
    const colon = part.indexOf(':');
    const host = colon < 0 ? part : part.slice(0, colon);
    const mine = p.ranks.map((r, i) => ({ r, i })).filter(({ r }) => r.host === host);
    if (!host || !mine.length) throw new LayoutError(`group ${name}: slots: no host ${JSON.stringify(host)} among the hosts launched (${[...new Set(p.ranks.map((r) => r.host))].join(', ')})`, group, 'slots');
    if (colon < 0) {
      for (const { i } of mine) out.add(i);
      continue;
    }
    for (const s of part.slice(colon + 1).split(',')) {
      const hit = /^\d+$/.test(s) ? mine.find(({ r }) => slotNumber(r) === Number(s)) : undefined;
      if (!hit) throw new LayoutError(`group ${name}: slots: host ${host} has no slot ${JSON.stringify(s)} (it has ${mine.map(({ r }) => slotNumber(r)).join(',')})`, group, 'slots');
      out.add(hit.i);
    }
  }
  return out;
}

/**
 * This machine for a deployment without a hostfile: `gpus` as cuda slots when a group needs them,
 * and one CPU worker slot per rank of the cpu groups, plus the spares (as CPU workers when no GPU
 * is left over for them).
 */
export function localDeploymentHosts(groups: GroupOptions[], spares: number, gpus: number[]): SelectedHost[] {
  const hosts: SelectedHost[] = [];
  const cuda = groups.filter((g) => g.serving.device === 'cuda');
  if (cuda.length) {
    if (!gpus.length) throw new LayoutError(`group ${cuda[0]!.name}: device cuda, and this machine has no GPU (give a hostfile with GPU hosts)`,
      undefined, 'device');
    hosts.push({ host: 'localhost', slots: gpus, attrs: { device: 'cuda' } });
  }
  let cpu = 0;
  for (const g of groups) {
    if (g.serving.device !== 'cpu') continue;
    if (g.replicas === 'auto') throw new LayoutError(`group ${g.name}: replicas auto needs a hostfile (without one, say how many CPU replicas to start)`, undefined, 'replicas');
    cpu += g.replicas * g.tp * g.pp;
  }
  const gpusUsed = cuda.reduce((n, g) => n + (g.replicas === 'auto' ? gpus.length : g.replicas * g.tp * g.pp), 0);
  cpu += Math.max(0, spares - Math.max(0, gpus.length - gpusUsed) * Number(cuda.length > 0));
  if (cpu > 0) hosts.push({ host: 'localhost', slots: Array.from({ length: cpu }, (_, i) => i), attrs: { device: 'cpu' } });
  if (!hosts.length) throw new LayoutError('no replica group to place');
  return hosts;
}

/**
 * Places the groups on the placement's slots and sets `spares` slots aside (the free slots after
 * the groups, in order; with `replicas: auto`, a group counts its replicas after setting them
 * aside, as long as one replica still fits). When the free slots run short and every slot is local,
 * the missing spares are extra local CPU worker processes (they can take the rank of a cpu group);
 * otherwise that is an error naming --spares. Returns the layout and the placement of the job:
 * layout ranks first (slot i runs rank i), then the spares.
 */
export function planDeployment(config: ModelConfig, placement: Placement, groups: GroupOptions[], spares: number,
  allowTpAcrossHosts: boolean): { layout: Layout; placement: Placement } {
  if (!Number.isInteger(spares) || spares < 0) throw new Error(`--spares must be an integer >= 0 (got ${spares})`);
  const slots: SlotRef[] = placement.ranks.map((r) => {
    const device = slotDevice(r);
    return { host: r.host, localRank: r.localRank, ...(device ? { device } : {}) };
  });
  const requests: GroupRequest[] = groups.map((g, gi) => ({
    name: g.name, tp: g.tp, pp: g.pp, replicas: g.replicas, serving: g.serving, allowTpAcrossHosts, reserve: spares,
    ...(g.hosts ? { hosts: g.hosts } : {}), ...(g.slots ? { slots: parseSlotSpec(g.slots, placement, gi, g.name) } : {}),
  }));
  for (const [gi, g] of groups.entries())
    for (const h of g.hosts ?? [])
      if (!placement.ranks.some((r) => r.host === h))
        throw new LayoutError(`group ${g.name}: hosts: no host ${JSON.stringify(h)} among the hosts launched (${[...new Set(placement.ranks.map((r) => r.host))].join(', ')})`, gi, 'hosts');
  const { layout, slotOf } = planGroups(config, slots, requests);
  const taken = new Set(slotOf);
  const free = placement.ranks.map((_, i) => i).filter((i) => !taken.has(i));
  const ranks: RankPlacement[] = [...slotOf, ...free.slice(0, spares)].map((i) => ({ ...placement.ranks[i]! }));
  if (free.length < spares) {
    const local = placement.ranks.every((r) => r.isLocal) && groups.some((g) => g.serving.device === 'cpu');
    if (!local)
      throw new Error(`--spares ${spares}: the hosts have ${placement.ranks.length} slots and the layout uses ${layout.world}, so only ${free.length} ` +
        'are free for spares (extra spare processes are only added when every worker is a local CPU worker)');
    const cpuRanks = ranks.filter((r) => r.gpu === null);
    const last = cpuRanks[cpuRanks.length - 1] ?? { ...ranks[ranks.length - 1]!, gpu: null, attrs: { ...ranks[ranks.length - 1]!.attrs, device: 'cpu' } };
    for (let i = free.length; i < spares; i++) ranks.push({ ...last, localRank: last.localRank + 1 + (i - free.length) });
    const n = ranks.filter((r) => r.gpu === null && r.host === last.host).length;
    for (const r of ranks) if (r.gpu === null && r.host === last.host) r.localWorldSize = n;
  }
  ranks.forEach((r, i) => (r.rank = i));
  return { layout, placement: { ...placement, ranks, worldSize: ranks.length, numNodes: new Set(ranks.map((r) => r.host)).size } };
}

/**
 * Refuses what a group's workers would refuse: fp8 on CPU workers (weights or KV cache), a
 * --quantize that contradicts a pre-quantized checkpoint or a layout its quantized shards cannot take.
 */
export function checkGroupPrecision(config: ModelConfig, g: GroupOptions): void {
  const s = g.serving;
  const named = g.name === DEFAULT_GROUP ? '' : `group ${g.name}: `;
  const refusal = fp8Refusal(config, s.device, s.quantize, s.kvCacheDtype);
  if (refusal) throw new Error(`${named}${refusal}`);
  try {
    planShard(config, { tpRank: 0, tpSize: g.tp, layerStart: 0, layerEnd: config.numLayers }, { quantize: s.quantize });
  } catch (err) {
    throw new Error(`${named}${(err as Error).message}`);
  }
}
