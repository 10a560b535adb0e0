// Local ranks: a child process in its own process group (detached), so a kill reaches its children too.
import { execa } from 'execa';
import { WATCHDOG } from './remote.js';
import { pipeLines, signalExitCode, type LineSink, type RankExit, type RankProcess } from './rank-process.js';

export interface LocalSpawn {
  command: string[];
  cwd: string;
  env: Record<string, string>;
  sink: LineSink;
  /** Shell lines run just before the program (`"$@"` there). */
  prelude?: string;
}

function killGroup(pid: number | undefined, signal: NodeJS.Signals): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, signal);
  } catch {
    /* group already gone */
  }
}

/** Same watchdog as remote ranks: our stdin pipe closing (launcher killed) SIGKILLs the rank's group. */
const localWrapper = (prelude = ''): string => `exec 3<&0; ${WATCHDOG}\n${prelude}\nexec "$@" </dev/null 3<&-`;

export function startLocalRank({ command, cwd, env, sink, prelude }: LocalSpawn): RankProcess {
  const file = command[0]!;
  const child = execa('/bin/sh', ['-c', localWrapper(prelude), 'nodespeed-rank', ...command], {
    cwd, env, extendEnv: false, detached: true, stdin: 'pipe', buffer: false, reject: false, cleanup: false,
  });
  const streams = Promise.all([pipeLines(child.stdout!, 'stdout', sink), pipeLines(child.stderr!, 'stderr', sink)]);
  const exited: Promise<RankExit> = child.then(async (result) => {
    await streams;
    if (result.signal) return { code: signalExitCode(result.signal), signal: result.signal };
    if (result.exitCode === undefined) {
      const code = (result as { code?: string }).code;
      sink('stderr', `nodespeed: cannot start '${file}' in ${cwd}: ${code ?? result.shortMessage}`);
      return { code: code === 'ENOENT' ? 127 : 126, signal: null };
    }
    return { code: result.exitCode, signal: null };
  });
  return {
    pid: child.pid,
    exited,
    kill: async (signal) => killGroup(child.pid, signal),
    sweep: async () => {
      killGroup(child.pid, 'SIGKILL');
      child.stdin?.destroy();
    },
  };
}

/** Synchronous last resort for process 'exit': nothing async can run there. */
export function killLocalGroupSync(pid: number | undefined): void {
  killGroup(pid, 'SIGKILL');
}
