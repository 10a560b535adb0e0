// Human output: the placement table, the exact per-rank command (--dry-run), and prefixed rank lines.
import { REMOTE_BOOTSTRAP, shellQuote } from './remote.js';
import { resolveTarget, type SshOptions } from './ssh.js';
import type { Placement } from './plan.js';
import type { Job, RankLine } from './supervisor.js';

export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const fmt = (r: string[]): string => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  return [fmt(header), fmt(widths.map((w) => '-'.repeat(w))), ...rows.map(fmt)].join('\n');
}

export function placementTable(p: Placement): string {
  const rows = p.ranks.map((r) => [String(r.rank), r.host, String(r.nodeRank), String(r.localRank), r.gpu === null ? 'cpu' : String(r.gpu), r.isLocal ? 'local' : 'ssh']);
  return (
    table(['RANK', 'HOST', 'NODE_RANK', 'LOCAL_RANK', 'GPU', 'VIA'], rows) +
    `\nworld size ${p.worldSize} on ${p.numNodes} node(s), MASTER_ADDR=${p.masterAddr} MASTER_PORT=${p.masterPort}`
  );
}

/** The exact command of every rank; the job token and the rank's secrets are masked, as they only exist once the job starts. */
export function dryRunCommands(job: Job, ssh: SshOptions, cwd: string, remoteWorkdir: string | undefined): string {
  const lines: string[] = [];
  for (const r of job.spec.placement.ranks) {
    const env = { ...job.rankEnv(r), ...Object.fromEntries(job.secretNames(r).map((k) => [k, '<secret, generated per job>'])) };
    const shown = r.isLocal ? Object.fromEntries(Object.entries(env).filter(([k]) => k in job.rankEnv({ ...r, isLocal: false }))) : env;
    const assigns = Object.entries(shown).map(([k, v]) => `${k}=${shellQuote(v)}`).join(' ');
    const run = `cd ${shellQuote(r.isLocal ? cwd : (remoteWorkdir ?? cwd))} && ${assigns} ${job.spec.command.map(shellQuote).join(' ')}`;
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
