// Ctrl-C while `nodespeed launch` draws its progress bar, in a real terminal: util-linux `script`
// gives the launch a pty (so stderr is a TTY and the bar draws, hiding the cursor and turning line
// wrap off), and the test types Ctrl-C into it (the pty's line discipline turns it into SIGINT for
// the launch, as a keyboard would). `script` is in every Debian base system; node-pty would need a
// native build through an install script for the same thing.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readdirSync, readFileSync } from 'node:fs';
import { CLI, requireBuild } from '../launcher/cli-helpers.js';

/** Worker processes whose environment carries `tag`. */
function workersTagged(tag: string): number[] {
  return readdirSync('/proc').filter((d) => /^\d+$/.test(d)).flatMap((d) => {
    try {
      const cmd = readFileSync(`/proc/${d}/cmdline`, 'utf8');
      return cmd.includes('dist/worker/main.js') && readFileSync(`/proc/${d}/environ`, 'utf8').includes(`PTY_TEST_TAG=${tag}`) ? [Number(d)] : [];
    } catch {
      return [];
    }
  });
}

const HIDE_CURSOR = '\x1b[?25l';
const SHOW_CURSOR = '\x1b[?25h';
const WRAP_OFF = '\x1b[?7l';
const WRAP_ON = '\x1b[?7h';

const haveScript = spawnSync('sh', ['-c', 'command -v script']).status === 0;

(haveScript ? describe : describe.skip)('the terminal after Ctrl-C during loading (pty via script)', () => {
  let dir: string;
  let model: string;
  beforeAll(() => {
    requireBuild();
    dir = mkdtempSync(join(tmpdir(), 'nodespeed-pty-'));
    // Big enough that loading takes a while on CPU workers (~190 MiB of bf16 weights).
    model = join(dir, 'm100');
    const init = spawnSync(process.execPath, [CLI, 'model', 'init', '--preset', '100m', model], { encoding: 'utf8' });
    expect(init.status, init.stderr).toBe(0);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('restores the cursor and line wrap, exits 130 and leaves no worker behind', async () => {
    const tag = `pty-${process.pid}`;
    const cmd = `exec ${process.execPath} ${CLI} launch --model ${model} --num_cpu_workers 2 --tp 2 --port 0 --bind 127.0.0.1`;
    // Local workers inherit the launch's environment: the tag finds them in /proc/PID/environ.
    const child = spawn('script', ['-qfec', cmd, '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, TERM: 'xterm', PTY_TEST_TAG: tag } });
    let out = '';
    const drawing = new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`the bar never drew:\n${JSON.stringify(out)}`)), 60_000);
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString('latin1');
        // cli-progress hides the cursor and turns wrap off in two writes, which may reach the pty
        // in two reads: the bar has drawn once both are in.
        if (out.includes(HIDE_CURSOR) && out.includes(WRAP_OFF)) {
          clearTimeout(t);
          resolve();
        }
      });
    });
    const exited = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
    await drawing;
    const drawnAt = out.length;
    child.stdin!.write('\x03');
    const code = await exited;
    expect(code).toBe(130);
    // Still loading when Ctrl-C arrived: the ready line never came.
    expect(out).not.toContain('nodespeed ready');
    const after = out.slice(out.lastIndexOf(HIDE_CURSOR));
    expect(out.slice(0, drawnAt)).toContain(WRAP_OFF);
    expect(after).toContain(SHOW_CURSOR);
    expect(after.slice(after.lastIndexOf(WRAP_OFF) + 1)).toContain(WRAP_ON);
    expect(after).toContain('nodespeed: SIGINT while starting, shutting down');
    const t0 = Date.now();
    while (workersTagged(tag).length > 0 && Date.now() - t0 < 10_000) await new Promise((r) => setTimeout(r, 100));
    expect(workersTagged(tag)).toEqual([]);
  });
});
