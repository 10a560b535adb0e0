// Failover's recovery (c) (failover.ts): a lost replica whose respawn could not restart every rank (a host no
// longer answers) is re-formed on the ranks that did restart, with a smaller layout of the same
// model: fewer TP ranks and/or fewer pipeline stages (tp 2 -> tp 1, pp 2 -> pp 1, tp 2 x pp 2 ->
// tp 2 or tp 1, ...), the largest one whose ranks fit their memory by the estimate of memory.ts
// (per GPU for cuda; for cpu, the host's RAM shared with the other ranks on that host, as at launch).
//
//   - Candidates: tp' <= tp, pp' <= pp, tp' x pp' <= the survivors; most ranks first, then the
//     larger TP (fewer pipeline stages). tp' must split the model's heads as at launch, a TP group
//     stays on one host unless --allow-tp-across-hosts, and the survivors keep their order (the old
//     driver, if it survived, drives again).
//   - Applying it: a new epoch (fresh communicators, new unique id), each kept rank's plan
//     (stage, TP rank, layers) replaced, the ranks left out dropped from the layout (their slots then
//     hold no rank), and the ranks that joined meanwhile get their new assignment: each loads its
//     new shard. Failover replays the replica's requests as in any recovery, and the ranks left out
//     that still run are started again as spares (failover.ts).
//   - Nothing fits (no survivor, heads that do not split, too little memory): the replica is retired.
import type { ModelConfig } from '../model/config.js';
import { LayoutError, balanceStages, checkTpDivides, groupOf } from './layout.js';
import type { GroupPlan, RankPlan, StagePlan } from './layout.js';
import { estimateMemory, memoryOptionsOf } from './memory.js';
import type { MemoryOptions } from './memory.js';
import type { Membership, Replica } from './membership.js';

/** A rank of the replica whose process could be (re)started: it can take a rank of the smaller layout. */
export interface Survivor {
  rank: number;
  host: string;
  localRank: number;
  /** GPU memory (bytes) its process reported when it joined; 0 or absent: unknown (not checked). */
  gpuMemory?: number;
}

export interface ShrinkInput {
  config: ModelConfig;
  replica: number;
  /** The replica's shape before the loss. */
  tp: number;
  pp: number;
  /** In the replica's rank order (stage, then TP rank). */
  survivors: Survivor[];
  memory: MemoryOptions;
  allowTpAcrossHosts: boolean;
}

export interface ShrinkPlan {
  tp: number;
  pp: number;
  stages: StagePlan[];
  /** The new plan of each rank kept, in (stage, TP rank) order (the driver first). */
  ranks: RankPlan[];
  /** Survivors the smaller layout leaves out. */
  surplus: number[];
}

export interface ShrinkChoice {
  plan?: ShrinkPlan;
  /** Each larger candidate and why it was refused, e.g. "tp 2 x pp 1: rank 0 on gpu-a needs ~9.1 GiB, a GPU offers 7.2 GiB". */
  refused: string[];
}

export function shape(tp: number, pp: number): string {
  return `tp ${tp} x pp ${pp}`;
}

/** The shapes to try, best first: most ranks, then the larger TP. */
export function candidates(tp: number, pp: number, survivors: number): Array<[tp: number, pp: number]> {
  const out: Array<[number, number]> = [];
  for (let t = tp; t >= 1; t--) for (let p = pp; p >= 1; p--) if (t * p <= survivors) out.push([t, p]);
  return out.sort((a, b) => b[0] * b[1] - a[0] * a[1] || b[0] - a[0]);
}

/** The survivors of each stage's TP group, in order; a group on one host unless `across`. */
function place(survivors: Survivor[], tp: number, pp: number, across: boolean): Survivor[][] | string {
  const left = [...survivors];
  const groups: Survivor[][] = [];
  for (let s = 0; s < pp; s++) {
    const host = across ? undefined : left.find((x) => left.filter((y) => y.host === x.host).length >= tp)?.host;
    const group = across ? left.slice(0, tp) : left.filter((x) => x.host === host).slice(0, tp);
    if (group.length < tp) return `stage ${s} has no ${tp} ranks left on one host (--allow-tp-across-hosts lets a TP group span hosts)`;
    for (const g of group) left.splice(left.indexOf(g), 1);
    groups.push(group);
  }
  return groups;
}

/** The largest smaller layout the survivors can hold, or none (then the replica is retired). */
export function chooseShrink(i: ShrinkInput): ShrinkChoice {
  const refused: string[] = [];
  for (const [tp, pp] of candidates(i.tp, i.pp, i.survivors.length)) {
    const name = shape(tp, pp);
    let stages: StagePlan[];
    try {
      checkTpDivides(i.config, tp);
      stages = balanceStages(i.config, pp);
    } catch (err) {
      if (!(err instanceof LayoutError)) throw err;
      refused.push(`${name}: ${err.message.replace(/^--tp \d+:? ?/, '')}`);
      continue;
    }
    const groups = place(i.survivors, tp, pp, i.allowTpAcrossHosts);
    if (typeof groups === 'string') {
      refused.push(`${name}: ${groups}`);
      continue;
    }
    const ranks: RankPlan[] = groups.flatMap((g, stage) => g.map((x, tpRank) => ({
      rank: x.rank, host: x.host, localRank: x.localRank, replica: i.replica, stage, tpRank,
      layerStart: stages[stage]!.layerStart, layerEnd: stages[stage]!.layerEnd,
    })));
    const layout = { tp, pp, ranks };
    const gpus = groups.flat().map((x) => x.gpuMemory ?? 0).filter((m) => m > 0);
    const mem = estimateMemory(i.config, layout, { ...i.memory, ...(gpus.length ? { gpuMemory: Math.min(...gpus) } : {}) });
    if (mem.problems.length) {
      refused.push(`${name}: ${mem.problems.join('; ')}`);
      continue;
    }
    const kept = new Set(ranks.map((r) => r.rank));
    return { plan: { tp, pp, stages, ranks, surplus: i.survivors.filter((x) => !kept.has(x.rank)).map((x) => x.rank) }, refused };
  }
  if (!i.survivors.length) refused.push('no rank of the replica could be restarted');
  return { refused };
}

/** What the coordinator knows for chooseShrink beyond the replica and its group (from the launch). */
export interface ShrinkContext {
  config: ModelConfig;
  allowTpAcrossHosts: boolean;
}

/** The memory estimate's options for a replica of `group` (its device, precision and KV blocks). */
function memoryOf(g: GroupPlan, kvBlockSize: number): MemoryOptions {
  return { ...memoryOptionsOf(g.serving), kvBlockSize: kvBlockSize || 16 };
}

/**
 * chooseShrink for `replica` of a running membership: `restarted` are its ranks whose processes were
 * started again. On cpu the other CPU replicas' ranks count against their hosts' RAM.
 */
export function planShrink(m: Membership, replica: Replica, restarted: Set<number>, gpuMemoryOf: (rank: number) => number,
  c: ShrinkContext): ShrinkChoice {
  const group = groupOf(m.layout, replica.id);
  const memory = memoryOf(group, replica.kvBlockSize);
  if (group.serving.device === 'cpu') {
    const used = new Map<string, number>();
    for (const r of m.replicas) {
      // Every other CPU replica that serves or will again (a retired one is lost and not re-forming).
      const g = groupOf(m.layout, r.id);
      if (r === replica || g.serving.device !== 'cpu' || (r.state === 'lost' && !r.reforming)) continue;
      const ranks = r.ranks.map((x) => m.layout.ranks[x]!);
      const est = estimateMemory(c.config, { tp: r.tp, pp: r.pp, ranks }, memoryOf(g, r.kvBlockSize));
      for (const x of est.ranks) used.set(x.host, (used.get(x.host) ?? 0) + x.totalBytes);
    }
    memory.hostUsedBytes = used;
  }
  const survivors = replica.ranks.filter((r) => restarted.has(r)).map((r) => {
    const p = m.layout.ranks[r]!;
    return { rank: r, host: p.host, localRank: p.localRank, gpuMemory: gpuMemoryOf(r) };
  });
  return chooseShrink({ config: c.config, replica: replica.id, tp: replica.tp, pp: replica.pp, survivors, memory,
    allowTpAcrossHosts: c.allowTpAcrossHosts });
}

/**
 * Re-forms the replica with `plan` in a new epoch: the ranks it leaves out are dropped from the
 * layout (a connection of theirs is marked lost, their slots hold no rank), the kept ranks get their
 * new plans, and those that joined already get their assignment (the others get it when they join).
 * Returns the epoch and the ranks dropped.
 */
export function applyShrink(m: Membership, replica: Replica, plan: ShrinkPlan): { epoch: string; dropped: number[] } {
  const epoch = m.newEpoch(replica);
  const kept = plan.ranks.map((p) => p.rank);
  const dropped = replica.ranks.filter((r) => !kept.includes(r));
  for (const r of dropped) {
    const w = m.workers.get(r);
    if (w && w.state !== 'lost') {
      w.state = 'lost';
      w.lostReason = `left out of replica ${replica.id}'s smaller layout in generation ${epoch}`;
    }
    m.workers.delete(r);
    m.slots.release(r);
  }
  for (const p of plan.ranks) m.layout.ranks[p.rank] = p;
  replica.ranks = kept;
  replica.tp = plan.tp;
  replica.pp = plan.pp;
  m.release(replica);
  return { epoch, dropped };
}
