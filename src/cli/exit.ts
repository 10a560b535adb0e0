// Ending the process without losing output: process.exit() drops whatever stdout/stderr still hold
// when they are pipes (asynchronous in Node), so `nodespeed run prog | tee log` lost lines. Every
// command ends through here: wait until both streams have handed everything to the kernel, then exit.
import type { Writable } from 'node:stream';

/** Resolves once every byte written to `s` so far is flushed (or the reader is gone). */
export function flushed(s: Writable): Promise<void> {
  return new Promise((resolve) => {
    if (s.destroyed || s.writableEnded) return resolve();
    // A reader that went away (EPIPE) has nothing left to receive.
    s.once('error', () => resolve());
    // Writes complete in order: this empty write's callback runs after every earlier one has.
    s.write('', () => resolve());
  });
}

export async function flushAndExit(code: number): Promise<never> {
  await Promise.all([flushed(process.stdout), flushed(process.stderr)]);
  process.exit(code);
}
