// `hostfile check`: connect to every host in parallel and report reachability (or the exact reason),
// GPUs, Node version and whether this project's install path exists there.
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { isLocalHost } from './plan.js';
import { Limiter, shellQuote } from './remote.js';
import { connect, execCollect, resolveTarget, SshError, type SshOptions } from './ssh.js';
import { headTail, table } from './format.js';

export interface HostCheck {
  host: string;
  ok: boolean;
  /** ok, reachable (but no node / no install), or the SSH failure's kind: dns, refused, timeout, auth, ... */
  kind: string;
  status: string;
  gpus: string[];
  node: string;
  installPath: string;
  installed: boolean;
}

/** This project's root on this machine; remote hosts are expected to have it at the same path. */
export const INSTALL_PATH = fileURLToPath(new URL('../..', import.meta.url)).replace(/\/$/, '');

function probeScript(node: string, installPath: string): string {
  return [
    `if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | sed 's/^/GPU:/'; fi`,
    `if [ -x ${shellQuote(node)} ]; then echo "NODE:$(${shellQuote(node)} --version)"; elif command -v node >/dev/null 2>&1; then echo "NODE:$(node --version) (from PATH)"; else echo "NODE:"; fi`,
    `if [ -d ${shellQuote(installPath)} ]; then echo INSTALL:yes; else echo INSTALL:no; fi`,
  ].join('\n');
}

function readProbe(host: string, out: string, installPath: string): HostCheck {
  const lines = out.split('\n');
  const pick = (tag: string): string[] => lines.filter((l) => l.startsWith(tag)).map((l) => l.slice(tag.length).trim());
  const node = pick('NODE:')[0] ?? '';
  const installed = pick('INSTALL:')[0] === 'yes';
  const problems = [...(node ? [] : ['no node']), ...(installed ? [] : [`no ${installPath}`])];
  return { host, ok: problems.length === 0, kind: problems.length ? 'reachable' : 'ok', status: problems.length ? `reachable; ${problems.join(', ')}` : 'ok', gpus: pick('GPU:'), node: node || '-', installPath, installed };
}

export async function checkHost(host: string, opts: { ssh?: SshOptions; sshPort?: number; forceSsh?: boolean; node?: string; installPath?: string } = {}): Promise<HostCheck> {
  const node = opts.node ?? process.execPath;
  const installPath = opts.installPath ?? INSTALL_PATH;
  const script = probeScript(node, installPath);
  if (!opts.forceSsh && isLocalHost(host)) {
    const r = await execa('sh', ['-c', script], { reject: false });
    return readProbe(host, r.stdout, installPath);
  }
  try {
    const client = await connect(resolveTarget(host, opts.sshPort, opts.ssh), opts.ssh);
    try {
      const r = await execCollect(client, 'sh -s', script);
      return readProbe(host, r.stdout, installPath);
    } finally {
      client.end();
    }
  } catch (err) {
    const kind = err instanceof SshError ? err.kind : 'error';
    return { host, ok: false, kind, status: `${kind}: ${(err as Error).message}`, gpus: [], node: '-', installPath, installed: false };
  }
}

export type CheckOptions = Parameters<typeof checkHost>[1];

/** Checks every host, at most `concurrency` at a time, results in hostfile order. */
export async function checkHosts(hosts: string[], opts: CheckOptions, concurrency = 64): Promise<HostCheck[]> {
  const limit = new Limiter(concurrency);
  return Promise.all(hosts.map((h) => limit.run(() => checkHost(h, opts))));
}

/**
 * The report: every host's row for a small hostfile; past `limit` hosts, the failed hosts' rows (head and
 * tail) and one count per outcome, so 10,000 hosts read as a screen.
 */
export function checkReport(results: HostCheck[], limit = 64): string {
  if (results.length <= limit) return checkTable(results);
  const failed = results.filter((r) => !r.ok);
  const counts = new Map<string, number>();
  for (const r of results) counts.set(r.kind, (counts.get(r.kind) ?? 0) + 1);
  const summary = `${results.length} hosts: ${[...counts].sort((a, b) => b[1] - a[1]).map(([k, n]) => `${n} ${k}`).join(', ')}`;
  if (failed.length === 0) return summary;
  const shown = headTail(failed, limit, () => null);
  const rows = checkTable(shown.filter((r): r is HostCheck => r !== null));
  return `${rows}${failed.length > shown.length - 1 ? `\n(${failed.length - (shown.length - 1)} more failed host(s) not listed; --all lists every host)` : ''}\n${summary}`;
}

export function checkTable(results: HostCheck[]): string {
  return table(
    ['HOST', 'STATUS', 'GPUS', 'NODE', 'INSTALL'],
    results.map((r) => [r.host, r.status, r.gpus.length ? `${r.gpus.length}: ${[...new Set(r.gpus)].join(', ')}` : '0', r.node, r.installed ? 'yes' : 'no']),
  );
}
