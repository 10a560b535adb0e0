// Human output: the placement table, the exact per-rank command (--dry-run), and prefixed rank lines.
import { REMOTE_BOOTSTRAP, shellQuote, shellWord } from './remote.js';
import { resolveTarget, type SshOptions } from './ssh.js';
import type { Placement } from './plan.js';
import type { Job, RankLine } from './supervisor.js';

export function table(header: string[], rows: string[][]): string {
  // No Math.max(...rows): a spread of 100,000 rows overflows the stack.
  const widths = header.map((h, i) => rows.reduce((w, r) => Math.max(w, (r[i] ?? '').length), h.length));
  const fmt = (r: string[]): string => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  return [fmt(header), fmt(widths.map((w) => '-'.repeat(w))), ...rows.map(fmt)].join('\n');
}

/** Rows beyond which a listing shows its head and tail and says how many it left out. */
export const LIST_LIMIT = 64;

/** The first and last `limit / 2` items, with a line saying how many were left out between. */
export function headTail<T>(items: T[], limit: number, gap: (left: number) => T): T[] {
  if (items.length <= limit) return items;
  const half = Math.floor(limit / 2);
  return [...items.slice(0, half), gap(items.length - 2 * half), ...items.slice(items.length - half)];
}

export function placementTable(p: Placement, limit = LIST_LIMIT): string {
  const rows = headTail(p.ranks, limit, () => null).map((r) =>
    r ? [String(r.rank), r.host, String(r.nodeRank), String(r.localRank), r.gpu === null ? 'cpu' : String(r.gpu), r.isLocal ? 'local' : 'ssh'] : ['...']);
  const left = p.ranks.length - rows.length + 1;
  const summary = p.ranks.length > limit ? ` (${left} rank(s) not listed; --dry_run lists every command)` : '';
  return (
    table(['RANK', 'HOST', 'NODE_RANK', 'LOCAL_RANK', 'GPU', 'VIA'], rows) +
    `\nworld size ${p.worldSize} on ${p.numNodes} node(s), MASTER_ADDR=${p.masterAddr} MASTER_PORT=${p.masterPort}${summary}`
  );
}

/** The exact command of every rank; the job token and the rank's secrets are masked, as they only exist once the job starts. */
export function dryRunCommands(job: Job, ssh: SshOptions, cwd: string, remoteWorkdir: string | undefined): string {
  const lines: string[] = [];
  for (const r of job.spec.placement.ranks) {
    // What the launcher sets (a local rank also inherits the rest of this environment); env-file values as
    // the rank's shell gets them, so `$HOME` shows as the reference it is.
    const own = new Map(job.rankAssigns(r));
    for (const k of job.secretNames(r)) own.set(k, '<secret, generated per job>');
    const assigns = [...own].map(([k, v]) => `${k}=${shellWord(v)}`).join(' ');
    const prelude = job.spec.prelude?.(r);
    const run = `cd ${shellQuote(r.isLocal ? cwd : (remoteWorkdir ?? cwd))} && ${assigns}${prelude ? ` { ${prelude.replace(/\n/g, '; ')}; }` : ''} ` +
      `${job.commandFor(r).map(shellQuote).join(' ')}`;
    if (r.isLocal) {
      lines.push(`[${r.host}:${r.rank}] local: ${run}`);
    } else {
      const t = resolveTarget(r.host, r.sshPort, ssh);
      lines.push(`[${r.host}:${r.rank}] ssh ${t.user}@${t.hostName} -p ${t.port} ${shellQuote(REMOTE_BOOTSTRAP)} <<< (script on stdin) ${run}`);
    }
  }
  return lines.join('\n');
}

/** Streams rank output with `[host:rank]` prefixes, stdout to stdout and stderr to stderr. */
export function attachConsole(job: Job, out: NodeJS.WritableStream = process.stdout, err: NodeJS.WritableStream = process.stderr): void {
  job.on('line', (l: RankLine) => (l.stream === 'stdout' ? out : err).write(`[${l.host}:${l.rank}] ${l.line}\n`));
}
