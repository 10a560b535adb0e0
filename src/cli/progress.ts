// The load progress bar, with the terminal restored on every way out. cli-progress hides the cursor
// and turns line wrap off while it draws, and gives both back only in stop(): a Ctrl-C, an error or
// process.exit() while it drew left the shell without a cursor and without wrapping.
import { writeSync } from 'node:fs';
import cliProgress from 'cli-progress';

const RESTORE = '\x1b[?25h\x1b[?7h';

export interface LoadBar {
  update(done: number, total: number): void;
  /** Stops drawing and restores the terminal; safe to call more than once. */
  stop(): void;
}

export function loadBar(stream: NodeJS.WriteStream = process.stderr): LoadBar | undefined {
  if (!stream.isTTY) return undefined;
  const bar = new cliProgress.SingleBar({ format: 'loading {bar} {percentage}% | {doneMiB}/{totalMiB} MiB of weights, all ranks', stream, hideCursor: true },
    cliProgress.Presets.shades_classic);
  let drawing = false;
  // 'exit' handlers run synchronously on every exit, process.exit() included: write directly to the fd.
  const onExit = (): void => {
    if (drawing) writeSync((stream as unknown as { fd: number }).fd ?? 2, `${RESTORE}\n`);
  };
  process.on('exit', onExit);
  return {
    update(done, total) {
      // Each rank reports the bytes of its shard; the bar sums every rank's.
      const mib = { doneMiB: (done / 2 ** 20).toFixed(1), totalMiB: (total / 2 ** 20).toFixed(1) };
      if (!drawing) {
        bar.start(total, 0, mib);
        drawing = true;
      }
      bar.setTotal(total);
      bar.update(done, mib);
    },
    stop() {
      if (drawing) bar.stop();
      drawing = false;
      process.off('exit', onExit);
    },
  };
}
