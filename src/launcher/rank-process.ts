// What the supervisor needs from a running rank, whether started locally or over SSH.
import type { Readable } from 'node:stream';

export type StreamName = 'stdout' | 'stderr';

export interface RankExit {
  /** Exit code; 128+N when killed by signal N (shell convention), 255 when the SSH connection was lost. */
  code: number;
  signal: string | null;
}

export interface RankProcess {
  /** Process id (local) or process-group id on the remote host. */
  readonly pid: number | undefined;
  /** Sends a signal to the rank's whole process group. */
  kill(signal: NodeJS.Signals): Promise<void>;
  /** SIGKILLs whatever is left of the rank's process group and releases the connection. */
  sweep(): Promise<void>;
  readonly exited: Promise<RankExit>;
}

/** A rank that was not started because its job began stopping first. */
export class StoppedWhileStarting extends Error {
  override name = 'StoppedWhileStarting';

  /** Without a stack trace: a stopped 80,000-rank job makes one per rank not yet started. */
  static quick(message: string): StoppedWhileStarting {
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    try {
      return new StoppedWhileStarting(message);
    } finally {
      Error.stackTraceLimit = limit;
    }
  }
}

export type LineSink = (stream: StreamName, line: string) => void;

/** Feeds complete lines to `sink`; a trailing partial line is flushed at end of stream. */
export function pipeLines(stream: Readable, name: StreamName, sink: LineSink, filter?: (line: string) => boolean): Promise<void> {
  let pending = '';
  stream.setEncoding('utf8');
  const emit = (line: string): void => {
    if (!filter || filter(line)) sink(name, line);
  };
  stream.on('data', (chunk: string) => {
    pending += chunk;
    let nl: number;
    while ((nl = pending.indexOf('\n')) >= 0) {
      emit(pending.slice(0, nl).replace(/\r$/, ''));
      pending = pending.slice(nl + 1);
    }
  });
  return new Promise((resolve) => {
    const done = (): void => {
      if (pending !== '') emit(pending);
      pending = '';
      resolve();
    };
    stream.once('end', done);
    stream.once('close', done);
  });
}

const SIGNALS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGABRT: 6, SIGKILL: 9, SIGSEGV: 11, SIGPIPE: 13, SIGALRM: 14, SIGTERM: 15 };

export function signalExitCode(signal: string): number {
  const name = signal.startsWith('SIG') ? signal : `SIG${signal}`;
  return 128 + (SIGNALS[name] ?? 0);
}
