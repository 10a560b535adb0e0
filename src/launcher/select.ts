// Resource selection with DeepSpeed's semantics (runner.py parse_resource_filter / parse_inclusion_exclusion):
// `--include`/`--exclude` take `host1@host2:0,2`, are mutually exclusive, name unknown hosts or slots as errors,
// drop hosts left without slots, keep hostfile order; `--num_nodes`/`--num_gpus` cannot be combined with them.
import type { HostEntry } from './hostfile.js';

export interface SelectedHost {
  host: string;
  /** Slot indices (GPU indices for GPU hosts), ascending. */
  slots: number[];
  attrs: Record<string, string>;
}

export interface SelectOptions {
  include?: string;
  exclude?: string;
  numNodes?: number;
  numGpus?: number;
}

export class SelectionError extends Error {
  override name = 'SelectionError';
}

/** Splits `host[:slots]`; a whole entry that names a host wins, so IPv6 hosts (`fe80::1`, `fe80::1:0,1`) work. */
function splitEntry(part: string, available: Map<string, number[]>): [string, string | undefined] {
  if (available.has(part)) return [part, undefined];
  const colon = part.lastIndexOf(':');
  return colon < 0 ? [part, undefined] : [part.slice(0, colon), part.slice(colon + 1)];
}

/**
 * DeepSpeed's parse_node_config_list: a host named several times gets the union of its slot lists, and
 * a bare host adds no slots, so `w@w:1` means slot 1 of w (only a host named without any slots means
 * all of it).
 */
function parseFilter(spec: string, flag: string, available: Map<string, number[]>): Map<string, number[] | 'all'> {
  const named = new Map<string, number[]>();
  for (const part of spec.split('@')) {
    if (part === '') throw new SelectionError(`${flag}: empty host entry in '${spec}'`);
    const [host, slotSpec] = splitEntry(part, available);
    const slotsOfHost = available.get(host);
    if (!slotsOfHost) throw new SelectionError(`${flag}: host '${host}' not found in hostfile`);
    const slots = slotSpec === undefined ? [] : slotSpec.split(',').map((s) => {
      if (!/^\d+$/.test(s)) throw new SelectionError(`${flag}: slot '${s}' of host '${host}' is not a non-negative integer`);
      const n = Number(s);
      if (!slotsOfHost.includes(n)) throw new SelectionError(`${flag}: no slot ${n} on host '${host}' (it has slots ${slotsOfHost.join(',')})`);
      return n;
    });
    named.set(host, [...(named.get(host) ?? []), ...slots]);
  }
  return new Map([...named].map(([host, slots]) => [host, slots.length ? slots : 'all']));
}

export function selectHosts(hosts: HostEntry[], opts: SelectOptions = {}): SelectedHost[] {
  const { include, exclude, numNodes, numGpus } = opts;
  if (include && exclude) throw new SelectionError('--include and --exclude are mutually exclusive');
  if ((include || exclude) && (numNodes !== undefined || numGpus !== undefined)) {
    throw new SelectionError('--num_nodes/--num_gpus cannot be combined with --include/--exclude');
  }
  const available = new Map(hosts.map((h) => [h.host, h.slotIds ?? Array.from({ length: h.slots }, (_, i) => i)]));
  let chosen = new Map(available);
  if (include) {
    const filter = parseFilter(include, '--include', available);
    chosen = new Map();
    for (const [host, slots] of filter) chosen.set(host, slots === 'all' ? available.get(host)! : slots);
  } else if (exclude) {
    for (const [host, slots] of parseFilter(exclude, '--exclude', available)) {
      chosen.set(host, slots === 'all' ? [] : chosen.get(host)!.filter((s) => !slots.includes(s)));
    }
  }
  let result: SelectedHost[] = hosts
    .filter((h) => (chosen.get(h.host)?.length ?? 0) > 0)
    .map((h) => ({ host: h.host, slots: [...new Set(chosen.get(h.host)!)].sort((a, b) => a - b), attrs: { ...h.attrs } }));
  if (numNodes !== undefined) {
    if (!Number.isInteger(numNodes) || numNodes <= 0) throw new SelectionError(`--num_nodes must be a positive integer, got '${numNodes}'`);
    if (numNodes > result.length) throw new SelectionError(`--num_nodes ${numNodes} asks for more hosts than the hostfile has (${result.length})`);
    result = result.slice(0, numNodes);
  }
  if (numGpus !== undefined) {
    if (!Number.isInteger(numGpus) || numGpus <= 0) throw new SelectionError(`--num_gpus must be a positive integer, got '${numGpus}'`);
    for (const h of result) {
      if (h.slots.length < numGpus) throw new SelectionError(`--num_gpus ${numGpus}: host '${h.host}' has only ${h.slots.length} slots`);
      h.slots = h.slots.slice(0, numGpus);
    }
  }
  if (result.length === 0) throw new SelectionError('no hosts left after --include/--exclude');
  return result;
}
