// Remote ranks over SSH. The environment (job token included) travels as a shell script on the channel's
// stdin, never in argv where `ps` on either host would show it. The script runs under `setsid`, reports
// its process-group id first, then execs the program — so teardown kills exactly this rank's group.
import type { Client as SshClient } from 'ssh2';
import { connect, execCollect, SshError, type SshOptions, type SshTarget } from './ssh.js';
import { pipeLines, signalExitCode, StoppedWhileStarting, type LineSink, type RankExit, type RankProcess } from './rank-process.js';
import type { ShellValue } from './env.js';

export interface RemoteSpawn {
  /** The host name as written in the hostfile, and how to resolve it (~/.ssh/config), done once a handshake slot is free. */
  host: string;
  target: () => SshTarget;
  ssh: SshOptions;
  command: string[];
  cwd: string;
  /** Exported in this order; a shell value's `$NAME` references expand on the remote host. */
  env: Array<[string, string | ShellValue]>;
  sink: LineSink;
  /** Shell lines run just before the program (`"$@"` there). */
  prelude?: string;
  /** Checked when a handshake slot frees up: a stopping job starts nothing more. */
  isStopping?: () => boolean;
}

const PGID_MARK = '__NODESPEED_PGID__=';
/**
 * Several commands so the login shell forks: `setsid` then never needs to fork itself and `$?` carries
 * 128+signal. The login shell's own stderr goes to /dev/null (bash would print "Terminated" after a kill);
 * the rank's stderr is the channel's, kept on fd 3.
 */
export const REMOTE_BOOTSTRAP = 'exec 3>&2 2>/dev/null; setsid -w /bin/sh -s 2>&3 3>&-; exit $?';

export function shellQuote(s: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * A watchdog in the rank's process group holds the channel's stdin, which the launcher never closes while
 * it lives: if the launcher dies without a teardown (SIGKILL, lost connection), stdin reaches EOF and the
 * watchdog SIGKILLs the group. The whole script is one brace group so the shell has parsed all of it before
 * the watchdog starts reading the same stdin.
 */
export const WATCHDOG = '( while read -r _ <&3; do :; done; kill -s KILL -- -$$ ) </dev/null >/dev/null 2>&1 &';

/** A value as a shell word: literal parts single-quoted, references as "${NAME}". */
export function shellWord(v: string | ShellValue): string {
  if (typeof v === 'string') return shellQuote(v);
  return v.map((p) => ('text' in p ? (p.text === '' ? '' : shellQuote(p.text)) : `"\${${p.ref}}"`)).join('') || "''";
}

export function remoteScript(command: string[], cwd: string, env: Array<[string, string | ShellValue]>, prelude?: string): string {
  const lines = ['{', `printf '${PGID_MARK}%s\\n' "$$" >&2`];
  for (const [k, v] of env) lines.push(`export ${k}=${shellWord(v)}`);
  lines.push(`cd -- ${shellQuote(cwd)} || exit 127`);
  lines.push('exec 3<&0', WATCHDOG);
  lines.push(`set -- ${command.map(shellQuote).join(' ')}`);
  if (prelude) lines.push(prelude);
  lines.push('exec "$@" </dev/null 3<&-');
  lines.push('}');
  return lines.join('\n') + '\n';
}

/**
 * Each rank has its own connection, but sshd drops unauthenticated connections at random beyond
 * MaxStartups (default 10): at most this many handshakes run against one host at a time.
 */
const HANDSHAKES_PER_HOST = 4;
/**
 * And at most this many in all (pdsh's default fan-out is 32; DeepSpeed raises it to 1024): a
 * 10,000-host job neither opens 40,000 sockets and DNS lookups at once nor waits on them one by one.
 */
export const HANDSHAKES_IN_ALL = 128;

/** A FIFO counting semaphore (O(1) per waiter: 80,000 ranks may queue). */
export class Limiter {
  private active = 0;
  private queue: Array<() => void> = [];
  private head = 0;
  constructor(readonly limit: number) {}

  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.active >= this.limit) await new Promise<void>((r) => this.queue.push(r));
    this.active++;
    try {
      return await fn();
    } finally {
      this.active--;
      this.next();
    }
  }

  private next(): void {
    if (this.head < this.queue.length) {
      const wake = this.queue[this.head]!;
      this.queue[this.head++] = undefined as unknown as () => void;
      if (this.head > 1024 && this.head * 2 > this.queue.length) {
        this.queue = this.queue.slice(this.head);
        this.head = 0;
      }
      wake();
    }
  }

  get idle(): boolean {
    return this.active === 0 && this.head >= this.queue.length;
  }
}

const perHost = new Map<string, Limiter>();
const inAll = new Limiter(HANDSHAKES_IN_ALL);

async function limitedConnect(name: string, target: () => SshTarget, ssh: SshOptions, isStopping?: () => boolean): Promise<{ client: SshClient; t: SshTarget }> {
  const host = perHost.get(name) ?? new Limiter(HANDSHAKES_PER_HOST);
  perHost.set(name, host);
  try {
    return await host.run(() => inAll.run(async () => {
      if (isStopping?.()) throw StoppedWhileStarting.quick(`job stopped before rank on ${name} connected`);
      const t = target();
      return { client: await connect(t, ssh), t };
    }));
  } finally {
    if (host.idle) perHost.delete(name);
  }
}

/**
 * One message for the ranks that could not start: each failure once; past a handful, counts per cause
 * (dns, refused, timeout, auth, ...) with a few host names each, so 10,000 unreachable hosts read as a
 * few lines.
 */
export function summarizeStartFailures(failures: Error[], notStarted = 0): string {
  const unique = [...new Map(failures.map((e) => [e.message, e])).values()];
  const tail = notStarted > 0 ? `\n(${notStarted} other rank(s) were not started: the job stopped at the first failure)` : '';
  if (unique.length <= 8) return unique.map((e) => e.message).join('\n') + tail;
  const byKind = new Map<string, Array<{ host: string; message: string }>>();
  for (const e of unique) {
    const kind = e instanceof SshError ? e.kind : 'other';
    const host = e instanceof SshError ? e.host : '';
    byKind.set(kind, [...(byKind.get(kind) ?? []), { host, message: e.message }]);
  }
  const lines = [`${unique.length} host(s) could not start their ranks:`];
  for (const [kind, list] of [...byKind].sort((a, b) => b[1].length - a[1].length)) {
    const hosts = list.map((x) => x.host).filter((h) => h !== '');
    lines.push(`  ${kind}: ${list.length} (${hosts.slice(0, 5).join(', ')}${hosts.length > 5 ? `, ... ${hosts.length - 5} more` : ''}), e.g. ${list[0]!.message}`);
  }
  return lines.join('\n') + tail;
}

export async function startRemoteRank(spec: RemoteSpawn): Promise<RankProcess> {
  const { client, t: target } = await limitedConnect(spec.host, spec.target, spec.ssh, spec.isStopping);
  client.on('error', () => {}); // a dropped connection surfaces as the channel closing (exit 255)
  let pgid: number | undefined;
  let resolvePgid!: (v: number | undefined) => void;
  const pgidKnown = new Promise<number | undefined>((r) => (resolvePgid = r));
  const channel = await new Promise<import('ssh2').ClientChannel>((resolve, reject) =>
    client.exec(REMOTE_BOOTSTRAP, (err, ch) => (err ? reject(err) : resolve(ch))),
  ).catch((err: Error) => {
    client.end();
    throw new Error(`ssh ${target.host}: cannot start command: ${err.message}`);
  });
  let exit: RankExit = { code: 255, signal: null };
  channel.on('exit', (code: number | null, signal?: string) => {
    exit = code !== null && code !== undefined ? { code, signal: null } : { code: signal ? signalExitCode(signal) : 255, signal: signal ?? null };
  });
  const streams = Promise.all([
    pipeLines(channel, 'stdout', spec.sink),
    pipeLines(channel.stderr, 'stderr', spec.sink, (line) => {
      if (pgid === undefined && line.startsWith(PGID_MARK)) {
        pgid = Number(line.slice(PGID_MARK.length));
        resolvePgid(pgid);
        return false;
      }
      return true;
    }),
  ]);
  const exited = new Promise<RankExit>((resolve) => channel.on('close', () => resolve(exit))).then(async (e) => {
    await streams;
    resolvePgid(pgid);
    return e;
  });
  // stdin stays open: closing it is the watchdog's signal that the launcher is gone.
  channel.write(remoteScript(spec.command, spec.cwd, spec.env, spec.prelude));

  const signalGroup = async (signal: string): Promise<void> => {
    const id = await pgidKnown;
    if (id === undefined || !Number.isInteger(id) || id <= 1) return;
    await execCollect(client, `kill -s ${signal.replace(/^SIG/, '')} -- -${id} 2>/dev/null; true`).catch(() => {});
  };
  return {
    get pid() {
      return pgid;
    },
    exited,
    kill: (signal) => signalGroup(signal),
    sweep: async () => {
      await signalGroup('KILL');
      client.end();
    },
  };
}
