// --bind_cores_to_rank / --bind_core_list: DeepSpeed's core split. A host's cores (the list given, else
// every physical core) are divided evenly between its ranks in order; a rank runs pinned to its share
// with OMP_NUM_THREADS set to the share's size.

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

/** `[0,1,2,5]` → `0-2,5` (numactl/taskset syntax). */
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

/**
 * The shell prelude that pins the rank, run on the rank's own host (only it knows its core count when
 * no list is given): numactl -C with --localalloc where numactl is installed (memory from the rank's
 * own NUMA node, as DeepSpeed's numactl -m does), else util-linux taskset. `$@` is the program.
 */
export function bindCoresScript(list: number[] | undefined, localSize: number, localRank: number): string {
  const lines: string[] = [];
  if (list) {
    const mine = coresForRank(list, localSize, localRank);
    lines.push(`__ns_cores=${formatCoreList(mine)}; __ns_per=${mine.length}`);
  } else {
    // Physical cores (DeepSpeed uses psutil's physical count; Linux numbers the first thread of each core first).
    lines.push(
      `__ns_n=$(lscpu -p=CORE,SOCKET 2>/dev/null | grep -v '^#' | sort -u | wc -l); [ "$__ns_n" -gt 0 ] 2>/dev/null || __ns_n=$(nproc --all)`,
      `__ns_per=$((__ns_n / ${localSize}))`,
      `if [ "$__ns_per" -lt 1 ]; then echo "nodespeed: --bind_cores_to_rank: $__ns_n core(s) cannot give each of ${localSize} rank(s) one" >&2; exit 1; fi`,
      `__ns_cores=$((__ns_per * ${localRank}))-$((__ns_per * ${localRank} + __ns_per - 1))`,
    );
  }
  lines.push(
    'export OMP_NUM_THREADS=$__ns_per',
    'if command -v numactl >/dev/null 2>&1; then set -- numactl -C "$__ns_cores" --localalloc "$@"; else set -- taskset -c "$__ns_cores" "$@"; fi',
  );
  return lines.join('\n');
}
