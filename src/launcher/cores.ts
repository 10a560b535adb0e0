// Core binding, DeepSpeed's --bind_cores_to_rank / --bind_core_list and a deployment group's `cpus`.
// A rank is pinned where it starts: its shell prelude runs it under util-linux `taskset -c LIST`, or
// where taskset is missing `numactl --all -C LIST --localalloc`. taskset comes first because it sets
// the mask whatever mask the launcher itself runs under, where numactl refuses cores outside its own
// (a launcher started under `taskset -c 0-9` could not give a worker 13-15: "libnuma: cpu argument
// 13-15 is out of range"; --all lifts that on numactl 2.0.10 and later). Memory needs no flag: the
// kernel's default policy places a page on the node of the CPU that first touches it, the rank's own,
// which is what --localalloc (and DeepSpeed's numactl -m) asks for. Every thread the process ever has (V8's, libuv's, the native CPU
// pool started later) inherits the mask, so nothing has to be walked or re-pinned afterwards, the
// rank is bound before its first instruction, and a rank respawned on the same slot is bound again.
// A host's cores (the list given, else every physical core) are divided evenly between the ranks
// that share them, in order, the remainder unused; the rank gets OMP_NUM_THREADS (DeepSpeed's) and
// NODESPEED_BOUND_CORES (a worker's CPU threads default to it) set to its share's size.
import { readFileSync } from 'node:fs';
import { cpus } from 'node:os';

import { LayoutError } from '../coordinator/layout.js';
import { shellQuote } from './remote.js';

/**
 * Parses `0,2-4,6` into [0, 2, 3, 4, 6] with DeepSpeed's rules: items are a number or an inclusive
 * `a-b` range, in ascending order, not overlapping, no spaces.
 */
export function parseCoreList(spec: string, flag = 'core list'): number[] {
  const out: number[] = [];
  let last = -1;
  for (const item of spec.split(',')) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(item);
    if (!m) throw new Error(`${flag} '${spec}': '${item}' is not a core number or a range a-b`);
    const a = Number(m[1]);
    const b = m[2] === undefined ? a : Number(m[2]);
    if (a > b) throw new Error(`${flag} '${spec}': range '${item}' ends before it starts`);
    if (a <= last) throw new Error(`${flag} '${spec}': ranges must be in ascending order and must not overlap ('${item}')`);
    if (b - a > 65535) throw new Error(`${flag} '${spec}': range '${item}' is larger than any machine`);
    for (let c = a; c <= b; c++) out.push(c);
    last = b;
  }
  return out;
}

/** `[0,1,2,5]` → `0-2,5` (taskset/numactl syntax). */
export function formatCoreList(cores: number[]): string {
  const parts: string[] = [];
  for (let i = 0; i < cores.length; ) {
    let j = i;
    while (j + 1 < cores.length && cores[j + 1] === cores[j]! + 1) j++;
    parts.push(j === i ? String(cores[i]) : `${cores[i]}-${cores[j]}`);
    i = j + 1;
  }
  return parts.join(',');
}

/** The share of `cores` that local rank `localRank` of `localSize` gets (DeepSpeed: an even split, remainder unused). */
export function coresForRank(cores: number[], localSize: number, localRank: number): number[] {
  const per = Math.floor(cores.length / localSize);
  if (per < 1) throw new Error(`--bind_cores_to_rank: ${cores.length} core(s) cannot give each of ${localSize} rank(s) one`);
  return cores.slice(per * localRank, per * (localRank + 1));
}

/** What pins one rank: `what` names the flag or key in errors; the cores are a list, or a share of the host's physical cores counted there. */
export type CoreBinding = { what: string; cores: number[] } | { what: string; share: { size: number; index: number } };

/**
 * The shell prelude that pins the rank, run on the rank's own host (only it knows its cores): a core
 * the host does not have is refused there, naming `what`. `$@` is the program.
 */
export function bindingScript(b: CoreBinding): string {
  // The flag or key (a deployment file's path in it) as a shell word, never as shell text.
  const lines: string[] = [`__ns_what=${shellQuote(b.what)}`];
  if ('cores' in b) {
    lines.push(`__ns_cores=${formatCoreList(b.cores)}; __ns_per=${b.cores.length}; __ns_max=${b.cores[b.cores.length - 1]}`);
  } else {
    const { size, index } = b.share;
    // Physical cores (DeepSpeed uses psutil's physical count; Linux numbers the first thread of each core first).
    lines.push(
      `__ns_n=$(lscpu -p=CORE,SOCKET 2>/dev/null | grep -v '^#' | sort -u | wc -l); [ "$__ns_n" -gt 0 ] 2>/dev/null || __ns_n=$(nproc --all)`,
      `__ns_per=$((__ns_n / ${size}))`,
      `if [ "$__ns_per" -lt 1 ]; then echo "nodespeed: $__ns_what: $__ns_n core(s) cannot give each of ${size} rank(s) one" >&2; exit 1; fi`,
      `__ns_cores=$((__ns_per * ${index}))-$((__ns_per * ${index} + __ns_per - 1)); __ns_max=$((__ns_per * ${index} + __ns_per - 1))`,
    );
  }
  lines.push(
    `__ns_all=$(nproc --all); if [ "$__ns_max" -ge "$__ns_all" ]; then echo "nodespeed: $__ns_what: core $__ns_max cannot be used: $(hostname) has cores 0-$((__ns_all - 1))" >&2; exit 1; fi`,
    'export OMP_NUM_THREADS=$__ns_per NODESPEED_BOUND_CORES=$__ns_per',
    'if command -v taskset >/dev/null 2>&1; then set -- taskset -c "$__ns_cores" "$@"; ' +
      'elif command -v numactl >/dev/null 2>&1; then set -- numactl --all -C "$__ns_cores" --localalloc "$@"; ' +
      'else echo "nodespeed: $__ns_what: $(hostname) has neither taskset (util-linux) nor numactl to pin the rank with" >&2; exit 1; fi',
  );
  return lines.join('\n');
}

/** `run --bind_cores_to_rank`: local rank `localRank` of `localSize` gets its share of `list`, else of the host's physical cores. */
export function bindCoresScript(list: number[] | undefined, localSize: number, localRank: number): string {
  return bindingScript(list ? { what: '--bind_cores_to_rank', cores: coresForRank(list, localSize, localRank) }
    : { what: '--bind_cores_to_rank', share: { size: localSize, index: localRank } });
}

/**
 * The cores processes may use on this machine: the cgroup's cpuset (a container's) when there is one,
 * else the online ones (else 0..cpus()-1). Not this process's own mask: the launcher may itself run
 * pinned and still give its workers other cores.
 */
export function onlineCores(): number[] {
  for (const file of ['/sys/fs/cgroup/cpuset.cpus.effective', '/sys/devices/system/cpu/online']) {
    try {
      const text = readFileSync(file, 'utf8').trim();
      if (text) return parseCoreList(text, file);
    } catch {
      /* absent: the next source */
    }
  }
  return Array.from({ length: cpus().length }, (_, i) => i);
}

/** One slot of a launch: its host, whether it is this machine, and the group whose rank it runs at launch (none: a spare). */
export interface BindSlot {
  host: string;
  isLocal: boolean;
  group?: number;
}

/** A group's `cpus` (absent: not pinned by the group); `what` names the key in a host's refusal (default `group NAME cpus`). */
export interface BindGroup {
  name: string;
  cpus?: number[];
  what?: string;
}

/**
 * Every slot's binding for `launch`: the ranks of a group with `cpus` split that list per host (in
 * slot order); with `bindCores`, every other slot of a host (spares included) gets its share of
 * `bindCoreList`, else of the host's physical cores, as `run --bind_cores_to_rank` does. A list too
 * short for its ranks, or naming a core this machine lacks for a local slot, is a LayoutError
 * (key `cpus`, the group's index) or an Error naming the flag. Remote hosts check their own cores.
 */
export function planCoreBindings(slots: BindSlot[], groups: BindGroup[], bind: { bindCores: boolean; bindCoreList?: number[] },
  online: number[] = onlineCores()): Array<CoreBinding | undefined> {
  const out: Array<CoreBinding | undefined> = slots.map(() => undefined);
  const sharers = new Map<string, number[]>();
  slots.forEach((s, i) => {
    const g = s.group === undefined ? undefined : groups[s.group];
    const key = g?.cpus ? `${s.group}\0${s.host}` : bind.bindCores ? `\0${s.host}` : undefined;
    if (key !== undefined) sharers.set(key, [...(sharers.get(key) ?? []), i]);
  });
  const have = new Set(online);
  for (const [key, idx] of sharers) {
    const [gs, host] = key.split('\0') as [string, string];
    const g = gs === '' ? undefined : groups[Number(gs)];
    const list = g ? g.cpus : bind.bindCoreList;
    const fail = (problem: string): never => {
      if (g) throw new LayoutError(`group ${g.name}: ${problem}`, Number(gs), 'cpus');
      throw new Error(`${bind.bindCoreList ? '--bind_core_list' : '--bind_cores_to_rank'}: ${problem}`);
    };
    if (list && slots[idx[0]!]!.isLocal) {
      const missing = list.find((c) => !have.has(c));
      if (missing !== undefined) fail(`core ${missing} is not a core of this machine (${host}: ${formatCoreList(online)})`);
    }
    const what = g ? (g.what ?? `group ${g.name} cpus`) : '--bind_cores_to_rank';
    idx.forEach((slot, k) => {
      if (!list) {
        out[slot] = { what, share: { size: idx.length, index: k } };
        return;
      }
      const per = Math.floor(list.length / idx.length);
      if (per < 1) fail(`${list.length} core(s) cannot give each of the ${idx.length} rank(s) ${g ? 'of the group ' : ''}on ${host} one`);
      out[slot] = { what, cores: list.slice(per * k, per * (k + 1)) };
    });
  }
  return out;
}
