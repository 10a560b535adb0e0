// Remote ranks over SSH. The environment (job token included) travels as a shell script on the channel's
// stdin, never in argv where `ps` on either host would show it. The script runs under `setsid`, reports
// its process-group id first, then execs the program — so teardown kills exactly this rank's group.
import type { Client as SshClient } from 'ssh2';
import { connect, execCollect, type SshOptions, type SshTarget } from './ssh.js';
import { pipeLines, signalExitCode, type LineSink, type RankExit, type RankProcess } from './rank-process.js';

export interface RemoteSpawn {
  target: SshTarget;
  ssh: SshOptions;
  command: string[];
  cwd: string;
  env: Record<string, string>;
  sink: LineSink;
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

export function remoteScript(command: string[], cwd: string, env: Record<string, string>): string {
  const lines = ['{', `printf '${PGID_MARK}%s\\n' "$$" >&2`];
  for (const [k, v] of Object.entries(env)) lines.push(`export ${k}=${shellQuote(v)}`);
  lines.push(`cd -- ${shellQuote(cwd)} || exit 127`);
  lines.push('exec 3<&0', WATCHDOG);
  lines.push(`exec ${command.map(shellQuote).join(' ')} </dev/null 3<&-`);
  lines.push('}');
  return lines.join('\n') + '\n';
}

/**
 * Each rank has its own connection, but sshd drops unauthenticated connections at random beyond
 * MaxStartups (default 10): at most this many handshakes run against one host at a time.
 */
const HANDSHAKES_PER_HOST = 4;
const handshakes = new Map<string, { active: number; queue: Array<() => void> }>();

async function limitedConnect(t: SshTarget, ssh: SshOptions): Promise<SshClient> {
  const key = `${t.hostName}:${t.port}`;
  const slot = handshakes.get(key) ?? { active: 0, queue: [] };
  handshakes.set(key, slot);
  if (slot.active >= HANDSHAKES_PER_HOST) await new Promise<void>((r) => slot.queue.push(r));
  slot.active++;
  try {
    return await connect(t, ssh);
  } finally {
    slot.active--;
    slot.queue.shift()?.();
    if (slot.active === 0 && slot.queue.length === 0) handshakes.delete(key);
  }
}

export async function startRemoteRank(spec: RemoteSpawn): Promise<RankProcess> {
  const client: SshClient = await limitedConnect(spec.target, spec.ssh);
  client.on('error', () => {}); // a dropped connection surfaces as the channel closing (exit 255)
  let pgid: number | undefined;
  let resolvePgid!: (v: number | undefined) => void;
  const pgidKnown = new Promise<number | undefined>((r) => (resolvePgid = r));
  const channel = await new Promise<import('ssh2').ClientChannel>((resolve, reject) =>
    client.exec(REMOTE_BOOTSTRAP, (err, ch) => (err ? reject(err) : resolve(ch))),
  ).catch((err: Error) => {
    client.end();
    throw new Error(`ssh ${spec.target.host}: cannot start command: ${err.message}`);
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
  channel.write(remoteScript(spec.command, spec.cwd, spec.env));

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
