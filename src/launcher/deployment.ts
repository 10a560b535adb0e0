// The deployment file of `nodespeed launch --config deploy.yaml`: the model, the hostfile, one or
// more replica groups (device, layout, replicas, precision, KV cache dtype, threads, the cores its
// workers are pinned to, the hosts or slots each may use, engine limits), the request classes (the groups each may use in order of preference, a
// TTFT target, a stream interval, exclusive prefill, the priority its name stands for) and the spares. Read with the `yaml` package and
// checked key by key: every error names the file, the line and the key (`deploy.yaml:7:
// groups[1].tp: ...`); an unknown key is an error (with the closest known key when one is near).
// Paths in the file (model, hostfile) are relative to the file's folder.
//
//   model: /models/llama-3.1-8b
//   hostfile: ./hostfile        # optional
//   groups:
//     - name: gpu
//       device: cuda
//       tp: 2
//       replicas: 1
//       precision: bf16
//     - name: cpu
//       device: cpu
//       replicas: 2
//       precision: int8
//       threads: 8
//       cpus: 8-15                # optional: split between the group's workers on each host (4 each)
//   classes:
//     realtime: { groups: [gpu], ttft_p99_ms: 300, exclusive_prefill: true }   # optional: a first prompt chunk's step leaves less urgent classes out
//     standard: { groups: [gpu, cpu] }
//     batch: { groups: [cpu, gpu], stream_interval_ms: 50 }   # optional: a stream message per 50 ms at most
//   spares: 0
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';

import { LineCounter, isMap, isPair, isScalar, isSeq, parseDocument } from 'yaml';
import type { Node, Pair, YAMLMap } from 'yaml';

import { DEFAULT_CLASS_PRIORITY } from '../coordinator/classes.js';
import type { ClassSpec } from '../coordinator/classes.js';
import type { KvCacheDtypeChoice } from '../model/precision.js';
import type { QuantizeChoice } from '../model/quantization.js';
import { CLASS_NAME } from '../protocol/priority.js';
import { parseCoreList } from './cores.js';

/**
 * The precisions a group may name: its weights as stored, one of the float dtypes (CPU: the
 * storage, computing in f32; CUDA: the compute dtype), or quantized as the workers load a float
 * checkpoint (int8: W8A16 on CPU and CUDA; fp8: W8A8 on CUDA) -- `--dtype` and `--quantize` of a
 * launch without a deployment file.
 */
export const PRECISIONS = ['auto', 'f32', 'bf16', 'f16', 'int8', 'fp8'] as const;
export type GroupPrecision = (typeof PRECISIONS)[number];

/** A group's precision as the workers take it: a float dtype, or a quantization of the checkpoint as stored. */
export function weightsOf(p: GroupPrecision): { dtype: string; quantize: QuantizeChoice } {
  return p === 'int8' || p === 'fp8' ? { dtype: 'auto', quantize: p } : { dtype: p, quantize: 'none' };
}

export interface DeploymentGroup {
  name: string;
  device: 'auto' | 'cpu' | 'cuda';
  tp: number;
  pp: number;
  replicas: number | 'auto';
  precision: GroupPrecision;
  /** fp8: the KV cache in fp8 (CUDA, `--kv-cache-dtype`); auto: the compute dtype. */
  kvCacheDtype: KvCacheDtypeChoice;
  threads: number;
  /**
   * The cores the group's workers are pinned to (`cpus: 8-15`, DeepSpeed's --bind_core_list syntax),
   * split evenly between the group's workers on each host, like --bind_cores_to_rank.
   */
  cpus?: number[];
  /** Only these hosts of the hostfile. */
  hosts?: string[];
  /** Only these slots, DeepSpeed's --include syntax: `host1:0,1@host2`. */
  slots?: string;
  kvBlocks?: number;
  maxBatchTokens?: number;
  maxSeqs?: number;
}

export interface Deployment {
  file: string;
  model?: string;
  hostfile?: string;
  groups: DeploymentGroup[];
  /** Absent: realtime, standard and batch over every group. */
  classes?: ClassSpec[];
  spares?: number;
  /** The line of a key (`groups[1].tp`, `classes.batch.groups[0]`), or of the nearest enclosing one that is in the file. */
  lineOf(path: string): number;
}

export class DeploymentError extends Error {
  constructor(readonly file: string, readonly line: number, readonly path: string, problem: string) {
    super(`${file}${line > 0 ? `:${line}` : ''}: ${path ? `${path}: ` : ''}${problem}`);
    this.name = 'DeploymentError';
  }
}

const TOP_KEYS = ['model', 'hostfile', 'groups', 'classes', 'spares'];
const GROUP_KEYS = ['name', 'device', 'tp', 'pp', 'replicas', 'precision', 'kv_cache_dtype', 'threads', 'cpus', 'hosts', 'slots', 'kv_blocks',
  'max_batch_tokens', 'max_seqs'];
const CLASS_KEYS = ['groups', 'ttft_p99_ms', 'stream_interval_ms', 'exclusive_prefill', 'priority'];

/** The longest stream interval a class may have: a client still hears from its stream every 10 s. */
export const MAX_STREAM_INTERVAL_MS = 10_000;

/** Levenshtein distance, to suggest the key a typo meant. */
function distance(a: string, b: string): number {
  const d = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = d[0]!;
    d[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = d[j]!;
      d[j] = Math.min(d[j]! + 1, d[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = cur;
    }
  }
  return d[b.length]!;
}

function unknownKey(key: string, known: string[]): string {
  const near = known.filter((k) => distance(k, key) <= 2).sort((a, b) => distance(a, key) - distance(b, key))[0];
  // gpus is one letter from cpus, and means the layout.
  const alias: Record<string, string> = { count: 'replicas', dtype: 'precision', quantize: 'precision', kv_cache: 'kv_cache_dtype', host: 'hosts',
    ttft_ms: 'ttft_p99_ms', gpus: 'tp or replicas', cores: 'cpus', stream_interval: 'stream_interval_ms', exclusive: 'exclusive_prefill' };
  const hint = alias[key] ?? near;
  return hint ? `unknown key (did you mean ${hint}?)` : `unknown key; the keys here are ${known.join(', ')}`;
}

class Reader {
  readonly lines = new Map<string, number>();
  constructor(readonly file: string, private readonly lc: LineCounter) {}

  line(n: Node | Pair | null | undefined): number {
    if (!n) return 0;
    const range = isPair(n) ? (n.key as Node | null)?.range : n.range;
    return range ? this.lc.linePos(range[0]).line : 0;
  }

  fail(path: string, n: Node | Pair | null | undefined, problem: string): never {
    throw new DeploymentError(this.file, this.line(n) || this.lines.get(path) || 0, path, problem);
  }

  /** The map's pairs by key, each key's line recorded under `path.key`; unknown keys refused. */
  map(node: Node | null | undefined, path: string, known: string[]): Map<string, Pair<Node, Node | null>> {
    if (!isMap(node)) this.fail(path, node, `must be a mapping of ${known.join(', ')}`);
    const out = new Map<string, Pair<Node, Node | null>>();
    for (const p of (node as YAMLMap<Node, Node | null>).items) {
      const key = isScalar(p.key) ? String(p.key.value) : '';
      const at = path ? `${path}.${key}` : key;
      this.lines.set(at, this.line(p.key));
      if (!known.includes(key)) this.fail(at, p.key, unknownKey(key, known));
      out.set(key, p);
    }
    return out;
  }

  string(p: Pair<Node, Node | null>, path: string): string {
    const v = isScalar(p.value) ? p.value.value : undefined;
    if (typeof v !== 'string' || v === '') this.fail(path, p, 'must be a non-empty string');
    return v as string;
  }

  int(p: Pair<Node, Node | null>, path: string, min: number, orAuto = false, max = Infinity): number | 'auto' {
    const v = isScalar(p.value) ? p.value.value : undefined;
    if (orAuto && v === 'auto') return 'auto';
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
      const range = max === Infinity ? `>= ${min}` : `from ${min} to ${max}`;
      this.fail(path, p, `must be an integer ${range}${orAuto ? ' or auto' : ''} (got ${isScalar(p.value) ? JSON.stringify(p.value.value) : 'a collection'})`);
    }
    return v as number;
  }

  number(p: Pair<Node, Node | null>, path: string): number {
    const v = isScalar(p.value) ? p.value.value : undefined;
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) this.fail(path, p, `must be a number > 0 (got ${isScalar(p.value) ? JSON.stringify(v) : 'a collection'})`);
    return v as number;
  }

  boolean(p: Pair<Node, Node | null>, path: string): boolean {
    const v = isScalar(p.value) ? p.value.value : undefined;
    if (typeof v !== 'boolean') this.fail(path, p, `must be true or false (got ${isScalar(p.value) ? JSON.stringify(v) : 'a collection'})`);
    return v as boolean;
  }

  oneOf<T extends string>(p: Pair<Node, Node | null>, path: string, choices: readonly T[]): T {
    const v = isScalar(p.value) ? p.value.value : undefined;
    if (typeof v !== 'string' || !choices.includes(v as T)) this.fail(path, p, `must be one of ${choices.join(', ')} (got ${JSON.stringify(v)})`);
    return v as T;
  }

  strings(p: Pair<Node, Node | null>, path: string): { values: string[]; lines: number[] } {
    if (!isSeq(p.value) || !p.value.items.length) this.fail(path, p, 'must be a non-empty list');
    const values: string[] = [];
    const lines: number[] = [];
    (p.value as { items: Node[] }).items.forEach((n, i) => {
      const v = isScalar(n) ? n.value : undefined;
      this.lines.set(`${path}[${i}]`, this.line(n));
      if (typeof v !== 'string' || v === '') this.fail(`${path}[${i}]`, n, 'must be a non-empty string');
      if (values.includes(v as string)) this.fail(`${path}[${i}]`, n, `${JSON.stringify(v)} is listed twice`);
      values.push(v as string);
      lines.push(this.line(n));
    });
    return { values, lines };
  }
}

function group(r: Reader, node: Node, path: string): DeploymentGroup {
  const m = r.map(node, path, GROUP_KEYS);
  const get = (k: string) => m.get(k);
  const name = get('name');
  if (!name) r.fail(path, node, 'needs a name');
  const n = r.string(name, `${path}.name`);
  if (!CLASS_NAME.test(n)) r.fail(`${path}.name`, name, `must start with a letter and hold only letters, digits, '_' and '-' (got ${JSON.stringify(n)})`);
  const g: DeploymentGroup = { name: n, device: 'auto', tp: 1, pp: 1, replicas: 1, precision: 'auto', kvCacheDtype: 'auto', threads: 0 };
  const p = (k: string) => `${path}.${k}`;
  const dev = get('device');
  if (dev) g.device = r.oneOf(dev, p('device'), ['auto', 'cpu', 'cuda'] as const);
  for (const [k, field] of [['tp', 'tp'], ['pp', 'pp']] as const) {
    const v = get(k);
    if (v) g[field] = r.int(v, p(k), 1) as number;
  }
  const rep = get('replicas');
  if (rep) g.replicas = r.int(rep, p('replicas'), 1, true);
  const prec = get('precision');
  if (prec) g.precision = r.oneOf(prec, p('precision'), PRECISIONS);
  const kv = get('kv_cache_dtype');
  if (kv) g.kvCacheDtype = r.oneOf(kv, p('kv_cache_dtype'), ['auto', 'fp8'] as const);
  const threads = get('threads');
  if (threads) {
    g.threads = r.int(threads, p('threads'), 0) as number;
    if (g.device === 'cuda' && g.threads > 0) r.fail(p('threads'), threads, 'applies to cpu groups (a cuda worker computes on its GPU)');
  }
  const cpus = get('cpus');
  if (cpus) {
    const v = isScalar(cpus.value) ? cpus.value.value : undefined;
    if ((typeof v !== 'string' && typeof v !== 'number') || v === '')
      r.fail(p('cpus'), cpus, `must be a core list such as 0-3,8 (got ${isScalar(cpus.value) ? JSON.stringify(v) : 'a collection'})`);
    try {
      g.cpus = parseCoreList(String(v), 'cpus');
    } catch (err) {
      r.fail(p('cpus'), cpus, (err as Error).message.replace(/^cpus '.*?': /, ''));
    }
  }
  const hosts = get('hosts');
  const slots = get('slots');
  if (hosts && slots) r.fail(p('slots'), slots, 'give hosts or slots, not both');
  if (hosts) g.hosts = r.strings(hosts, p('hosts')).values;
  if (slots) g.slots = r.string(slots, p('slots'));
  for (const [k, field, min] of [['kv_blocks', 'kvBlocks', 0], ['max_batch_tokens', 'maxBatchTokens', 1], ['max_seqs', 'maxSeqs', 1]] as const) {
    const v = get(k);
    if (v) g[field] = r.int(v, p(k), min) as number;
  }
  return g;
}

function classes(r: Reader, node: Node | null, groups: DeploymentGroup[]): ClassSpec[] {
  if (!isMap(node) || !node.items.length) r.fail('classes', node, 'must be a mapping of class names (realtime, standard, batch, ...) to their settings');
  const out: ClassSpec[] = [];
  const priorityLine = new Map<number, string>();
  for (const pair of (node as YAMLMap<Node, Node | null>).items) {
    const name = isScalar(pair.key) ? String(pair.key.value) : '';
    const path = `classes.${name}`;
    r.lines.set(path, r.line(pair.key));
    if (!CLASS_NAME.test(name)) r.fail(path, pair.key, `a class name must start with a letter and hold only letters, digits, '_' and '-'`);
    const m = r.map(pair.value, path, CLASS_KEYS);
    const gs = m.get('groups');
    if (!gs) r.fail(path, pair, 'needs groups: the replica groups it may use, in order of preference');
    const list = r.strings(gs, `${path}.groups`);
    list.values.forEach((g, i) => {
      if (!groups.some((x) => x.name === g))
        throw new DeploymentError(r.file, list.lines[i]!, `${path}.groups[${i}]`, `no group named ${JSON.stringify(g)} (groups: ${groups.map((x) => x.name).join(', ')})`);
    });
    const spec: ClassSpec = { name, priority: DEFAULT_CLASS_PRIORITY[name] ?? NaN, groups: list.values };
    const ttft = m.get('ttft_p99_ms');
    if (ttft) spec.ttftP99Ms = r.number(ttft, `${path}.ttft_p99_ms`);
    const interval = m.get('stream_interval_ms');
    if (interval) spec.streamIntervalMs = r.int(interval, `${path}.stream_interval_ms`, 0, false, MAX_STREAM_INTERVAL_MS) as number;
    const excl = m.get('exclusive_prefill');
    if (excl) spec.exclusivePrefill = r.boolean(excl, `${path}.exclusive_prefill`);
    const pr = m.get('priority');
    if (pr) {
      const v = isScalar(pr.value) ? pr.value.value : undefined;
      if (typeof v !== 'number' || !Number.isInteger(v) || Math.abs(v) > 2 ** 31 - 1) r.fail(`${path}.priority`, pr, `must be a 32-bit integer (got ${JSON.stringify(v)})`);
      spec.priority = v as number;
    } else if (Number.isNaN(spec.priority)) {
      r.fail(path, pair, `needs a priority (an integer; lower is more urgent: realtime is ${DEFAULT_CLASS_PRIORITY.realtime}, standard ${DEFAULT_CLASS_PRIORITY.standard}, batch ${DEFAULT_CLASS_PRIORITY.batch})`);
    }
    const same = priorityLine.get(spec.priority);
    if (same) r.fail(pr ? `${path}.priority` : path, pr ?? pair, `priority ${spec.priority} is ${same}'s too: each class needs its own`);
    priorityLine.set(spec.priority, name);
    out.push(spec);
  }
  return out;
}

/** Parses and checks deployment text (`file` names it in errors; relative paths resolve against `baseDir`). */
export function parseDeployment(text: string, file: string, baseDir = dirname(resolve(file))): Deployment {
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, uniqueKeys: true, prettyErrors: false });
  if (doc.errors.length) {
    const e = doc.errors[0]!;
    throw new DeploymentError(file, lc.linePos(e.pos[0]).line, '', `not valid YAML: ${e.message.split('\n')[0]}`);
  }
  const r = new Reader(file, lc);
  if (doc.contents === null) throw new DeploymentError(file, 0, '', 'is empty');
  const top = r.map(doc.contents, '', TOP_KEYS);
  const gs = top.get('groups');
  if (!gs) throw new DeploymentError(file, 0, 'groups', 'missing: a deployment needs at least one replica group');
  if (!isSeq(gs.value) || !gs.value.items.length) r.fail('groups', gs, 'must be a non-empty list of groups');
  const groups: DeploymentGroup[] = [];
  (gs.value as { items: Node[] }).items.forEach((n, i) => {
    r.lines.set(`groups[${i}]`, r.line(n));
    const g = group(r, n, `groups[${i}]`);
    const twin = groups.findIndex((x) => x.name === g.name);
    if (twin >= 0) r.fail(`groups[${i}].name`, undefined, `${JSON.stringify(g.name)} is groups[${twin}]'s name too`);
    groups.push(g);
  });
  const d: Deployment = { file, groups, lineOf: (path) => lineOf(r.lines, path) };
  const model = top.get('model');
  if (model) d.model = resolve(baseDir, r.string(model, 'model'));
  const hostfile = top.get('hostfile');
  if (hostfile) d.hostfile = resolve(baseDir, r.string(hostfile, 'hostfile'));
  const spares = top.get('spares');
  if (spares) d.spares = r.int(spares, 'spares', 0) as number;
  const cls = top.get('classes');
  if (cls) d.classes = classes(r, cls.value, groups);
  return d;
}

/** The line of `path`, or of the nearest enclosing key that is in the file. */
function lineOf(lines: Map<string, number>, path: string): number {
  for (let p = path; p; p = p.replace(/(\.[^.[\]]+|\[\d+\])$/, '')) {
    const l = lines.get(p);
    if (l) return l;
    if (!/(\.[^.[\]]+|\[\d+\])$/.test(p)) break;
  }
  return 0;
}

export function loadDeployment(path: string): Deployment {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new DeploymentError(path, 0, '', code === 'ENOENT' ? 'no such file' : `cannot read (${code})`);
  }
  return parseDeployment(text, path);
}
