// Which rank does what: world = replicas x pp x tp, ranks numbered host by host in hostfile order
// (the launcher's order), replica-major, then stage, then TP rank, so a TP group is a run of
// consecutive ranks and stays on one host whenever the host's slots allow it. Pipeline stages get
// contiguous layers balanced by the parameters each stage holds (embedding and LM head included).
import type { ModelConfig } from '../model/config.js';

export interface HostSlots {
  host: string;
  slots: number;
}

export interface LayoutOptions {
  tp: number;
  pp: number;
  /** 'auto': as many replicas as the slots hold. */
  replicas: number | 'auto';
  /** Allow a TP group to span hosts (slow: every layer all-reduces over the network). */
  allowTpAcrossHosts?: boolean;
}

export interface StagePlan {
  layerStart: number;
  layerEnd: number;
  /** Parameters the stage holds (all its TP ranks together). */
  params: number;
}

export interface RankPlan {
  rank: number;
  host: string;
  localRank: number;
  replica: number;
  stage: number;
  tpRank: number;
  layerStart: number;
  layerEnd: number;
}

export interface Layout {
  tp: number;
  pp: number;
  replicas: number;
  world: number;
  stages: StagePlan[];
  ranks: RankPlan[];
}

export class LayoutError extends Error {}

/** Parameters of one decoder layer (all TP ranks together). */
export function layerParams(c: ModelConfig): number {
  const q = c.hiddenSize * c.numHeads * c.headDim;
  const kv = 2 * c.hiddenSize * c.numKvHeads * c.headDim;
  const o = c.numHeads * c.headDim * c.hiddenSize;
  const mlp = 3 * c.hiddenSize * c.intermediateSize;
  return q + kv + o + mlp + 2 * c.hiddenSize;
}

export function embeddingParams(c: ModelConfig): number {
  return c.vocabSize * c.hiddenSize;
}

/** LM head and final norm (a tied head still occupies its own copy on the last stage under PP). */
export function headParams(c: ModelConfig): number {
  return c.vocabSize * c.hiddenSize + c.hiddenSize;
}

/**
 * Contiguous layer ranges for `pp` stages minimizing the largest stage (linear partition, exact DP:
 * layer counts are small). Stage 0 also holds the embedding, the last stage the LM head.
 */
export function balanceStages(c: ModelConfig, pp: number): StagePlan[] {
  const L = c.numLayers;
  if (!Number.isInteger(pp) || pp < 1) throw new LayoutError(`--pp must be an integer >= 1 (got ${pp})`);
  if (pp > L) throw new LayoutError(`--pp ${pp}: the model has only ${L} layers (each stage needs at least one)`);
  const per = layerParams(c);
  const cost = (s: number, a: number, b: number) =>
    (b - a) * per + (s === 0 ? embeddingParams(c) : 0) + (s === pp - 1 ? headParams(c) : 0);
  // best[s][e]: the smallest possible max cost when stages 0..s cover layers [0, e).
  const best: number[][] = Array.from({ length: pp }, () => new Array<number>(L + 1).fill(Infinity));
  const cut: number[][] = Array.from({ length: pp }, () => new Array<number>(L + 1).fill(0));
  for (let e = 1; e <= L; e++) best[0]![e] = cost(0, 0, e);
  for (let s = 1; s < pp; s++)
    for (let e = s + 1; e <= L; e++)
      for (let b = s; b < e; b++) {
        const v = Math.max(best[s - 1]![b]!, cost(s, b, e));
        if (v < best[s]![e]!) {
          best[s]![e] = v;
          cut[s]![e] = b;
        }
      }
  const stages: StagePlan[] = [];
  let e = L;
  for (let s = pp - 1; s >= 0; s--) {
    const b = s === 0 ? 0 : cut[s]![e]!;
    stages.unshift({ layerStart: b, layerEnd: e, params: cost(s, b, e) });
    e = b;
  }
  return stages;
}

export function checkTpDivides(c: ModelConfig, tp: number): void {
  if (!Number.isInteger(tp) || tp < 1) throw new LayoutError(`--tp must be an integer >= 1 (got ${tp})`);
  if (c.numHeads % tp) throw new LayoutError(`--tp ${tp} does not divide the model's ${c.numHeads} attention heads`);
  if (c.numKvHeads % tp && tp % c.numKvHeads)
    throw new LayoutError(`--tp ${tp}: the model's ${c.numKvHeads} KV heads can be neither split nor replicated evenly`);
  if (c.intermediateSize % tp) throw new LayoutError(`--tp ${tp} does not divide the intermediate size ${c.intermediateSize}`);
}

export function planLayout(c: ModelConfig, hosts: HostSlots[], o: LayoutOptions): Layout {
  checkTpDivides(c, o.tp);
  const stages = balanceStages(c, o.pp);
  const slots = hosts.reduce((n, h) => n + h.slots, 0);
  const perReplica = o.tp * o.pp;
  let replicas: number;
  if (o.replicas === 'auto') {
    replicas = Math.floor(slots / perReplica);
    if (replicas < 1)
      throw new LayoutError(`--tp ${o.tp} x --pp ${o.pp} needs ${perReplica} worker slots, the hosts have ${slots}`);
  } else {
    replicas = o.replicas;
    if (!Number.isInteger(replicas) || replicas < 1) throw new LayoutError(`--replicas must be an integer >= 1 or auto (got ${replicas})`);
  }
  const world = replicas * perReplica;
  if (world > slots)
    throw new LayoutError(`--replicas ${replicas} x --pp ${o.pp} x --tp ${o.tp} = ${world} workers, the hosts have ${slots} slots`);
  const ranks: RankPlan[] = [];
  let h = 0;
  let local = 0;
  for (let rank = 0; rank < world; rank++) {
    while (local >= hosts[h]!.slots) {
      h++;
      local = 0;
    }
    const replica = Math.floor(rank / perReplica);
    const inReplica = rank % perReplica;
    const stage = Math.floor(inReplica / o.tp);
    const st = stages[stage]!;
    ranks.push({ rank, host: hosts[h]!.host, localRank: local, replica, stage, tpRank: inReplica % o.tp,
      layerStart: st.layerStart, layerEnd: st.layerEnd });
    local++;
  }
  if (!o.allowTpAcrossHosts) {
    for (let r = 0; r < world; r += o.tp) {
      const group = ranks.slice(r, r + o.tp);
      const spread = new Set(group.map((g) => g.host));
      if (spread.size > 1)
        throw new LayoutError(`the TP group of replica ${group[0]!.replica} stage ${group[0]!.stage} (ranks ${r}-${r + o.tp - 1}) ` +
          `would span hosts ${[...spread].join(', ')}; give each host a multiple of --tp ${o.tp} slots, ` +
          'or pass --allow-tp-across-hosts');
    }
  }
  return { tp: o.tp, pp: o.pp, replicas, world, stages, ranks };
}

/** One line per replica: "replica 0: stage 0 layers 0-2 ranks 0,1 @host-a | stage 1 ...". */
export function describeLayout(l: Layout): string[] {
  const lines = [`world ${l.world} = ${l.replicas} replica(s) x pp ${l.pp} x tp ${l.tp}`];
  // Grouped in one pass (a filter per replica and stage was quadratic: 12 s for 80,000 ranks).
  const byPlace = new Map<string, RankPlan[]>();
  for (const x of l.ranks) {
    const k = `${x.replica}/${x.stage}`;
    const g = byPlace.get(k);
    if (g) g.push(x);
    else byPlace.set(k, [x]);
  }
  for (let r = 0; r < l.replicas; r++) {
    const parts: string[] = [];
    for (let s = 0; s < l.pp; s++) {
      const rs = byPlace.get(`${r}/${s}`) ?? [];
      const st = l.stages[s]!;
      parts.push(`stage ${s} layers ${st.layerStart}-${st.layerEnd - 1}: ` +
        rs.map((x) => `rank ${x.rank} (tp ${x.tpRank}) @${x.host}`).join(', '));
    }
    lines.push(`replica ${r}: ${parts.join(' | ')}`);
  }
  return lines;
}
