// The coordinator's liveness responder answers from its own thread: while the process's event
// loop is blocked it still answers (with the job key's MAC), a stopped process does not, and a
// wrong key gets no valid answer.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { LivenessResponder } from '../../src/coordinator/liveness.js';
import { probeLiveness } from '../../src/protocol/liveness.js';

const root = join(import.meta.dirname, '..', '..');

describe('coordinator liveness', () => {
  it('answers with the job key, not with another', async () => {
    const key = randomBytes(32);
    const r = await LivenessResponder.start('127.0.0.1', key);
    try {
      expect(await probeLiveness('127.0.0.1', r.port, key, 2000)).toBe(true);
      expect(await probeLiveness('127.0.0.1', r.port, randomBytes(32), 2000)).toBe(false);
    } finally {
      await r.stop();
    }
    expect(await probeLiveness('127.0.0.1', r.port, key, 500)).toBe(false);
  });

  it('a process whose event loop is blocked still answers; a stopped one does not', async () => {
    const key = randomBytes(32).toString('hex');
    // A child starts the responder, reports its port, then blocks its event loop for 4 s.
    const script = `
      const { LivenessResponder } = await import(${JSON.stringify(join(root, 'dist', 'coordinator', 'liveness.js'))});
      const r = await LivenessResponder.start('127.0.0.1', Buffer.from(process.env.KEY, 'hex'));
      console.log('port ' + r.port);
      setTimeout(() => { const end = Date.now() + 4000; while (Date.now() < end) {} console.log('unblocked'); }, 100);
      setInterval(() => {}, 1000);`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { env: { ...process.env, KEY: key }, stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      let out = '';
      const port = await new Promise<number>((res) => child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        const m = /port (\d+)/.exec(out);
        if (m) res(Number(m[1]));
      }));
      await new Promise((r) => setTimeout(r, 600));  // inside the 4 s block
      const t0 = performance.now();
      expect(await probeLiveness('127.0.0.1', port, Buffer.from(key, 'hex'), 2000)).toBe(true);
      const ms = performance.now() - t0;
      expect(out).not.toContain('unblocked');
      console.log(`answered in ${ms.toFixed(1)} ms while the event loop was blocked`);
      child.kill('SIGSTOP');
      expect(await probeLiveness('127.0.0.1', port, Buffer.from(key, 'hex'), 1000)).toBe(false);
      child.kill('SIGCONT');
    } finally {
      child.kill('SIGKILL');
    }
  });
});
