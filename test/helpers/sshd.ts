// A real OpenSSH sshd for integration tests: runs as root in the foreground (-D) on a random high port,
// listening on several loopback addresses that act as distinct hosts. Everything (host key, client key,
// authorized_keys, known_hosts, client ssh config) lives in a temp dir; point the launcher at it with
// NODESPEED_SSH_DIR=<harness.sshDir> so the real ~/.ssh is never read or written.
//
//   const sshd = await startSshd();            // hosts 127.0.0.2-4
//   ... env: { ...process.env, ...sshd.env }  // or SshOptions { sshDir: sshd.sshDir }
//   await sshd.stop();                         // also registered for process exit
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const SSHD_BIN = '/usr/sbin/sshd';

export interface SshdHarness {
  /** Temp root (server files, logs). */
  dir: string;
  /** Client-side ssh dir: config, known_hosts, id_ed25519 (+ .pub). Use as NODESPEED_SSH_DIR. */
  sshDir: string;
  port: number;
  hosts: string[];
  /** `ssh-ed25519 AAAA...` of the server. */
  hostKeyPub: string;
  /** `ssh-rsa AAAA...` with `rsaHostKey`: the server's second host key. */
  rsaHostKeyPub?: string;
  env: { NODESPEED_SSH_DIR: string };
  logFile: string;
  /** Kills sshd and every process still under it, removes the temp dir. Idempotent. */
  stop(): Promise<void>;
}

export interface SshdOptions {
  hosts?: string[];
  /** Write a known_hosts entry for every host (default true). */
  knownHosts?: boolean;
  /** Write <sshDir>/config with Port/User/IdentityFile for the hosts (default true). */
  clientConfig?: boolean;
  /** Give the server an RSA host key besides its ed25519 one (known_hosts still lists the ed25519 key). */
  rsaHostKey?: boolean;
}

export function sshdAvailable(): boolean {
  return existsSync(SSHD_BIN) && process.getuid?.() === 0;
}

function keygen(file: string, comment: string, type = 'ed25519'): void {
  execFileSync('ssh-keygen', ['-q', '-t', type, '-N', '', '-C', comment, '-f', file], { stdio: 'ignore' });
}

function portOpen(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createConnection({ host, port });
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });
}

/** Descendants of pid, deepest first, read from /proc (sessions sshd forked for clients). */
export function descendants(pid: number): number[] {
  const children = new Map<number, number[]>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(name)]);
    } catch {
      /* process vanished */
    }
  }
  const out: number[] = [];
  const walk = (p: number): void => {
    for (const c of children.get(p) ?? []) {
      walk(c);
      out.push(c);
    }
  };
  walk(pid);
  return out;
}

async function launch(dir: string, port: number, hosts: string[], hostKeys: string[]): Promise<ChildProcess | null> {
  const config = join(dir, `sshd_config`);
  writeFileSync(
    config,
    [
      `Port ${port}`,
      ...hosts.map((h) => `ListenAddress ${h}`),
      ...hostKeys.map((k) => `HostKey ${join(dir, k)}`),
      `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`,
      'PidFile none',
      'UsePAM no',
      'StrictModes no',
      'PermitRootLogin prohibit-password',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'PubkeyAuthentication yes',
      'LogLevel VERBOSE',
      // Sessions get a HOME of their own: bash run by sshd sources ~/.bashrc, and this machine's (pyenv
      // init, rehash lock) is slow, or hangs for 60 s when a killed session left its lock behind.
      `SetEnv HOME=${join(dir, 'home')}`,
      '',
    ].join('\n'),
  );
  mkdirSync(join(dir, 'home'), { recursive: true });
  mkdirSync('/run/sshd', { recursive: true }); // privilege-separation dir Debian's sshd insists on
  const child = spawn(SSHD_BIN, ['-D', '-f', config, '-E', join(dir, 'sshd.log')], { stdio: 'ignore' });
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) return null; // port taken (or bad config): caller retries
    const up = await Promise.all(hosts.map((h) => portOpen(h, port)));
    if (up.every(Boolean)) return child;
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill('SIGKILL');
  return null;
}

export async function startSshd(opts: SshdOptions = {}): Promise<SshdHarness> {
  if (!sshdAvailable()) throw new Error(`${SSHD_BIN} missing or not root: apt-get install -y openssh-server (see .ci/run)`);
  const hosts = opts.hosts ?? ['127.0.0.2', '127.0.0.3', '127.0.0.4'];
  const dir = mkdtempSync(join(tmpdir(), 'nodespeed-sshd-'));
  const sshDir = join(dir, 'client');
  mkdirSync(sshDir, { mode: 0o700 });
  keygen(join(dir, 'host_ed25519'), 'nodespeed-test-host');
  keygen(join(sshDir, 'id_ed25519'), 'nodespeed-test-client');
  writeFileSync(join(dir, 'authorized_keys'), readFileSync(join(sshDir, 'id_ed25519.pub')));
  const pub = (f: string) => readFileSync(join(dir, f), 'utf8').trim().split(/\s+/).slice(0, 2).join(' ');
  const hostKeyPub = pub('host_ed25519.pub');
  const hostKeys = ['host_ed25519'];
  if (opts.rsaHostKey) {
    keygen(join(dir, 'host_rsa'), 'nodespeed-test-host', 'rsa');
    hostKeys.push('host_rsa');
  }

  let child: ChildProcess | null = null;
  let port = 0;
  for (let attempt = 0; attempt < 5 && !child; attempt++) {
    port = 20000 + Math.floor(Math.random() * 40000);
    child = await launch(dir, port, hosts, hostKeys);
  }
  if (!child) {
    const log = existsSync(join(dir, 'sshd.log')) ? readFileSync(join(dir, 'sshd.log'), 'utf8') : '';
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`sshd did not start on ${hosts.join(', ')}:\n${log}`);
  }
  if (opts.knownHosts !== false) writeFileSync(join(sshDir, 'known_hosts'), hosts.map((h) => `[${h}]:${port} ${hostKeyPub}\n`).join(''));
  if (opts.clientConfig !== false) {
    writeFileSync(join(sshDir, 'config'), `Host ${hosts.join(' ')}\n  Port ${port}\n  User root\n  IdentityFile ${join(sshDir, 'id_ed25519')}\n`);
  }

  const sshdPid = child.pid!;
  let stopped = false;
  const killAll = (): void => {
    if (stopped) return;
    stopped = true;
    for (const pid of descendants(sshdPid)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    try {
      process.kill(sshdPid, 'SIGKILL');
    } catch {
      /* gone */
    }
    rmSync(dir, { recursive: true, force: true });
  };
  // A failing test or a crashed runner must not leave sshd listening or keys on disk: 'exit' covers a normal
  // end, and a guard process holding a pipe from us covers a runner killed by a signal (its stdin hits EOF).
  process.once('exit', killAll);
  const guard = spawn('/bin/sh', ['-c', 'read _; pkill -KILL -P "$1"; kill -KILL "$1"; rm -rf "$2"', 'nodespeed-sshd-guard', String(sshdPid), dir], {
    stdio: ['pipe', 'ignore', 'ignore'],
    detached: true,
  });
  guard.unref();
  (guard.stdin as unknown as { unref?: () => void }).unref?.();
  return {
    dir,
    sshDir,
    port,
    hosts,
    hostKeyPub,
    ...(opts.rsaHostKey ? { rsaHostKeyPub: pub('host_rsa.pub') } : {}),
    env: { NODESPEED_SSH_DIR: sshDir },
    logFile: join(dir, 'sshd.log'),
    stop: async () => {
      guard.kill('SIGKILL');
      const exited = child!.exitCode !== null || child!.signalCode !== null ? Promise.resolve() : new Promise<void>((r) => child!.once('exit', () => r()));
      killAll();
      await exited;
      process.off('exit', killAll);
    },
  };
}
