// Which rank does what. A deployment is one or more replica groups (`launch --config`: the
// deployment file's `groups`; with flags only: one group named "default"), each of its own layout
// (tp x pp), device, precision and engine settings, with as many replicas as asked. Every group's
// ranks are numbered replica-major, then stage, then TP rank, in the group's order (the groups in
// their file order), each group placed on the launcher slots it may use in hostfile order, so a TP
// group is a run of consecutive slots and stays on one host whenever the host's slots allow it.
// Pipeline stages get contiguous layers balanced by the parameters each stage holds (embedding
// and LM head included).
import type { ModelConfig } from '../model/config.js';
import { precisionOf, precisionTag } from '../model/precision.js';
import type { KvCacheDtypeChoice, Precision } from '../model/precision.js';
import type { QuantizeChoice } from '../model/quantization.js';

export interface HostSlots {
  host: string;
  slots: number;
}

/** One launcher slot as the planner sees it: where it is and, when the hostfile says so, its device. */
export interface SlotRef {
  host: string;
  localRank: number;
  /** `device=cpu` / `device=cuda` in the hostfile; absent: not marked (a GPU slot, or a CPU worker for a cpu group). */
  device?: 'cpu' | 'cuda';
}

/** What every replica of a group runs with (the worker's Assignment and the driver's scheduler). */
export interface GroupServing {
  device: 'cpu' | 'cuda';
  /** auto (as stored) | f32 | bf16 | f16: CPU weight storage, CUDA compute dtype. */
  dtype: string;
  /** A float checkpoint's linear layers quantized as the workers load them. */
  quantize: QuantizeChoice;
  kvCacheDtype: KvCacheDtypeChoice;
  /** CPU threads per worker; 0: the backend decides. */
  threads: number;
  /** KV blocks per rank; 0: the backend sizes its cache. */
  kvBlocks: number;
  maxBatchTokens: number;
  /** Most sequences in a replica's batch; 0: only the KV cache limits it. */
  maxSeqs: number;
}

export interface LayoutOptions {
  tp: number;
  pp: number;
  /** 'auto': as many replicas as the slots hold. */
  replicas: number | 'auto';
  /** Allow a TP group to span hosts (slow: every layer all-reduces over the network). */
  allowTpAcrossHosts?: boolean;
}

/** One group to place: its layout, how many replicas, what it runs with, and which slots it may use. */
export interface GroupRequest extends LayoutOptions {
  name: string;
  serving: GroupServing;
  /** Only slots on these hosts. */
  hosts?: string[];
  /** Only these slots (indices into the planner's slot list). */
  slots?: Set<number>;
  /** Slots set aside for spares when counting `replicas: auto` (as long as one replica still fits). */
  reserve?: number;
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

/** A replica group as planned: its layout, its replicas' ids, what they run with. */
export interface GroupPlan {
  name: string;
  tp: number;
  pp: number;
  stages: StagePlan[];
  replicas: number[];
  serving: GroupServing;
  /** What its replicas compute with, resolved against the checkpoint. */
  precision: Precision;
}

export interface Layout {
  groups: GroupPlan[];
  /** Replicas of every group (ids 0..replicas-1, group after group). */
  replicas: number;
  /** replicaGroup[replica]: the index of its group in `groups`. */
  replicaGroup: number[];
  world: number;
  ranks: RankPlan[];
}

/**
 * A layout the planner refuses. `group` and `key` say what it is about (a deployment file reports
 * the key's line): a group's index and its `tp`, `pp`, `replicas`, `hosts` or `slots`.
 */
export class LayoutError extends Error {
  constructor(message: string, readonly group?: number, readonly key?: string) {
    super(message);
    this.name = 'LayoutError';
  }
}

/** How errors name a group's settings: the flags for the one group of a flags-only launch, else its keys after `group NAME: `. */
function namer(g: GroupRequest, single: boolean): { name: (key: string) => string; prefix: string } {
  return single && g.name === DEFAULT_GROUP ? { name: (key) => `--${key}`, prefix: '' } : { name: (key) => key, prefix: `group ${g.name}: ` };
}

/** The name of the one group a launch without a deployment file has. */
export const DEFAULT_GROUP = 'default';


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
  if (!Number.isInteger(pp) || pp < 1) throw new LayoutError(`--pp must be an integer >= 1 (got ${pp})`, undefined, 'pp');
  if (pp > L) throw new LayoutError(`--pp ${pp}: the model has only ${L} layers (each stage needs at least one)`, undefined, 'pp');
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
  const bad = (m: string) => new LayoutError(m, undefined, 'tp');
  if (!Number.isInteger(tp) || tp < 1) throw bad(`--tp must be an integer >= 1 (got ${tp})`);
  if (c.numHeads % tp) throw bad(`--tp ${tp} does not divide the model's ${c.numHeads} attention heads`);
  if (c.numKvHeads % tp && tp % c.numKvHeads) throw bad(`--tp ${tp}: the model's ${c.numKvHeads} KV heads can be neither split nor replicated evenly`);
  if (c.intermediateSize % tp) throw bad(`--tp ${tp} does not divide the intermediate size ${c.intermediateSize}`);
}

/** Whether a group of `device` may use `slot`: cuda groups never take `device=cpu` slots, cpu groups never `device=cuda` ones. */
function usable(slot: SlotRef, device: 'cpu' | 'cuda'): boolean {
  return device === 'cuda' ? slot.device !== 'cpu' : slot.device !== 'cuda';
}

/**
 * Places every group on the slots, in the groups' order: each takes its replicas' ranks one after
 * another from the free slots it may use (its device's; for a cpu group the `device=cpu` slots
 * before unmarked ones; only `hosts` / `slots` when given), in slot order. Returns the layout and,
 * per layout rank, the slot (index into `slots`) it runs in.
 */
export function planGroups(c: ModelConfig, slots: SlotRef[], groups: GroupRequest[]): { layout: Layout; slotOf: number[] } {
  if (!groups.length) throw new LayoutError('no replica group to place');
  const used = new Set<number>();
  const ranks: RankPlan[] = [];
  const slotOf: number[] = [];
  const plans: GroupPlan[] = [];
  const replicaGroup: number[] = [];
  let replicaId = 0;
  groups.forEach((g, gi) => {
    const { name, prefix } = namer(g, groups.length === 1);
    const withGroup = (err: unknown): never => {
      if (err instanceof LayoutError) throw new LayoutError(prefix + err.message.replace(/--(tp|pp)\b/g, (_, k: string) => name(k)), gi, err.key);
      throw err;
    };
    let stages: StagePlan[] = [];
    try {
      checkTpDivides(c, g.tp);
      stages = balanceStages(c, g.pp);
    } catch (err) {
      withGroup(err);
    }
    const hosts = g.hosts && new Set(g.hosts);
    const mine = slots.map((s, i) => ({ s, i })).filter(({ s, i }) => !used.has(i) && usable(s, g.serving.device) &&
      (!hosts || hosts.has(s.host)) && (!g.slots || g.slots.has(i)));
    // cpu groups: slots the hostfile marks device=cpu first, unmarked ones after.
    if (g.serving.device === 'cpu') mine.sort((a, b) => Number(a.s.device !== 'cpu') - Number(b.s.device !== 'cpu') || a.i - b.i);
    const perReplica = g.tp * g.pp;
    const where = g.hosts ? ` on hosts ${g.hosts.join(', ')}` : g.slots ? ' in its slots' : '';
    let n: number;
    if (g.replicas === 'auto') {
      const reserve = g.reserve ?? 0;
      n = Math.floor((mine.length - reserve >= perReplica ? mine.length - reserve : mine.length) / perReplica);
      if (n < 1)
        throw new LayoutError(`${prefix}${name('tp')} ${g.tp} x ${name('pp')} ${g.pp} needs ${perReplica} worker slots, the hosts have ${mine.length}` +
          `${groups.length > 1 || g.name !== DEFAULT_GROUP ? ` free for ${g.serving.device}${where}` : ''}`, gi, 'replicas');
    } else {
      n = g.replicas;
      if (!Number.isInteger(n) || n < 1) throw new LayoutError(`${prefix}${name('replicas')} must be an integer >= 1 or auto (got ${n})`, gi, 'replicas');
    }
    if (n * perReplica > mine.length)
      throw new LayoutError(`${prefix}${name('replicas')} ${n} x ${name('pp')} ${g.pp} x ${name('tp')} ${g.tp} = ${n * perReplica} workers, the hosts have ` +
        `${mine.length} slots${groups.length > 1 || g.name !== DEFAULT_GROUP ? ` free for ${g.serving.device}${where}` : ''}`, gi, 'replicas');
    const first = ranks.length;
    const ids: number[] = [];
    for (let k = 0; k < n * perReplica; k++) {
      const { s, i } = mine[k]!;
      const replica = replicaId + Math.floor(k / perReplica);
      const inReplica = k % perReplica;
      const stage = Math.floor(inReplica / g.tp);
      const st = stages[stage]!;
      if (inReplica === 0) {
        ids.push(replica);
        replicaGroup.push(gi);
      }
      ranks.push({ rank: ranks.length, host: s.host, localRank: s.localRank, replica, stage, tpRank: inReplica % g.tp,
        layerStart: st.layerStart, layerEnd: st.layerEnd });
      slotOf.push(i);
      used.add(i);
    }
    if (!g.allowTpAcrossHosts) {
      for (let r = first; r < ranks.length; r += g.tp) {
        const group = ranks.slice(r, r + g.tp);
        const spread = new Set(group.map((x) => x.host));
        if (spread.size > 1)
          throw new LayoutError(`${prefix}the TP group of replica ${group[0]!.replica} ` +
            `stage ${group[0]!.stage} (ranks ${r}-${r + g.tp - 1}) would span hosts ${[...spread].join(', ')}; give each host a multiple of ` +
            `${name('tp')} ${g.tp} slots, or pass --allow-tp-across-hosts`, gi, 'tp');
      }
    }
    replicaId += n;
    plans.push({ name: g.name, tp: g.tp, pp: g.pp, stages, replicas: ids, serving: { ...g.serving }, precision: precisionOf(c, g.serving) });
  });
  return { layout: { groups: plans, replicas: replicaId, replicaGroup, world: ranks.length, ranks }, slotOf };
}

/** The serving settings of a layout planned without any (tests, tools): CPU, as stored, backend defaults. */
export const DEFAULT_SERVING: GroupServing = { device: 'cpu', dtype: 'auto', quantize: 'none', kvCacheDtype: 'auto', threads: 0, kvBlocks: 0,
  maxBatchTokens: 256, maxSeqs: 0 };

/** One group ("default") over hosts given as slot counts, ranks numbered host by host. */
export function planLayout(c: ModelConfig, hosts: HostSlots[], o: LayoutOptions & { serving?: GroupServing }): Layout {
  const slots = hosts.flatMap((h) => Array.from({ length: h.slots }, (_, localRank) => ({ host: h.host, localRank })));
  return planGroups(c, slots, [{ ...o, name: DEFAULT_GROUP, serving: o.serving ?? DEFAULT_SERVING }]).layout;
}

/** The group replica `replica` belongs to. */
export function groupOf(l: Layout, replica: number): GroupPlan {
  const g = l.groups[l.replicaGroup[replica] ?? -1];
  if (!g) throw new Error(`layout: replica ${replica} is in no group`);
  return g;
}

/**
 * What a group's numbers are: its device and precision (weights, matrix-product inputs, KV cache).
 * Replicas of equal numerics produce the same tokens after a replay; the layout (tp, pp) is not part of it.
 */
export function numericsOf(g: GroupPlan): string {
  return `${g.serving.device} ${precisionTag(g.precision)}`;
}

/** "cuda bf16/bf16/bf16", "cpu int8/f32/f32, 8 threads" (weights / matrix-product inputs / KV cache): how a group computes. */
export function describeGroup(g: GroupPlan): string {
  const s = g.serving, p = g.precision;
  return `${s.device} ${p.weights}/${p.activations}/${p.kvCache}${s.device === 'cpu' && s.threads ? `, ${s.threads} thread${s.threads === 1 ? '' : 's'}` : ''}`;
}

/**
 * The layout, one line per replica ("replica 0: stage 0 layers 0-2: rank 0 (tp 0) @host-a | stage
 * 1 ..."), after a head line per group (one group of the flags: "world 4 = 1 replica(s) x pp 2 x tp 2");
 * `cut` shortens a group's replica lines (a dry run of thousands).
 */
export function describeLayout(l: Layout, cut: (replicaLines: string[]) => string[] = (x) => x): string[] {
  const single = l.groups.length === 1 && l.groups[0]!.name === DEFAULT_GROUP;
  const lines = single ? [] : [`world ${l.world} in ${l.groups.length} group(s)`];
  // Grouped in one pass (a filter per replica and stage was quadratic: 12 s for 80,000 ranks).
  const byPlace = new Map<string, RankPlan[]>();
  for (const x of l.ranks) {
    const k = `${x.replica}/${x.stage}`;
    const g = byPlace.get(k);
    if (g) g.push(x);
    else byPlace.set(k, [x]);
  }
  for (const g of l.groups) {
    const shape = `${g.replicas.length} replica(s) x pp ${g.pp} x tp ${g.tp}`;
    lines.push(single ? `world ${l.world} = ${shape}` : `group ${g.name} (${describeGroup(g)}): ${shape}`);
    const replicaLines: string[] = [];
    for (const r of g.replicas) {
      const parts: string[] = [];
      for (let s = 0; s < g.pp; s++) {
        const rs = byPlace.get(`${r}/${s}`) ?? [];
        const st = g.stages[s]!;
        parts.push(`stage ${s} layers ${st.layerStart}-${st.layerEnd - 1}: ` + rs.map((x) => `rank ${x.rank} (tp ${x.tpRank}) @${x.host}`).join(', '));
      }
      replicaLines.push(`replica ${r}${single ? '' : ` [${g.name}]`}: ${parts.join(' | ')}`);
    }
    for (const x of cut(replicaLines)) lines.push(x);
  }
  return lines;
}
