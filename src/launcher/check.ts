// `hostfile check`: connect to every host in parallel and report reachability (or the exact reason),
// GPUs, Node version and whether this project's install path exists there.
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { isLocalHost } from './plan.js';
import { shellQuote } from './remote.js';
import { connect, execCollect, resolveTarget, SshError, type SshOptions } from './ssh.js';
import { table } from './format.js';

export interface HostCheck {
  host: string;
  ok: boolean;
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
  return { host, ok: problems.length === 0, status: problems.length ? `reachable; ${problems.join(', ')}` : 'ok', gpus: pick('GPU:'), node: node || '-', installPath, installed };
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
    return { host, ok: false, status: `${kind}: ${(err as Error).message}`, gpus: [], node: '-', installPath, installed: false };
  }
}

export function checkTable(results: HostCheck[]): string {
  return table(
    ['HOST', 'STATUS', 'GPUS', 'NODE', 'INSTALL'],
    results.map((r) => [r.host, r.status, r.gpus.length ? `${r.gpus.length}: ${[...new Set(r.gpus)].join(', ')}` : '0', r.node, r.installed ? 'yes' : 'no']),
  );
}
