// Local ranks: a child process in its own process group (detached), so a kill reaches its children too.
import { execa } from 'execa';
import { pipeLines, signalExitCode, type LineSink, type RankExit, type RankProcess } from './rank-process.js';

export interface LocalSpawn {
  command: string[];
  cwd: string;
  env: Record<string, string>;
  sink: LineSink;
}

function killGroup(pid: number | undefined, signal: NodeJS.Signals): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, signal);
  } catch {
    /* group already gone */
  }
}

export function startLocalRank({ command, cwd, env, sink }: LocalSpawn): RankProcess {
  const [file, ...args] = command as [string, ...string[]];
  const child = execa(file, args, { cwd, env, extendEnv: false, detached: true, stdin: 'ignore', buffer: false, reject: false, cleanup: false });
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
    sweep: async () => killGroup(child.pid, 'SIGKILL'),
  };
}

/** Synchronous last resort for process 'exit': nothing async can run there. */
export function killLocalGroupSync(pid: number | undefined): void {
  killGroup(pid, 'SIGKILL');
}
