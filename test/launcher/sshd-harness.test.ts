// The sshd harness others reuse: it must really serve the three hosts and leave nothing behind.
import { existsSync } from 'node:fs';
import { createConnection } from 'node:net';
import { describe, expect, it } from 'vitest';
import { descendants, sshdAvailable, startSshd } from '../helpers/sshd.js';
import { connect, resolveTarget } from '../../src/launcher/ssh.js';
import { execCollect } from '../../src/launcher/ssh.js';

const refused = (host: string, port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const s = createConnection({ host, port });
    s.once('connect', () => (s.destroy(), resolve(false)));
    s.once('error', () => resolve(true));
  });

(sshdAvailable() ? describe : describe.skip)('test/helpers/sshd.ts', () => {
  it('serves 127.0.0.2-4 as distinct hosts with its own keys, and stop() removes sshd, sessions and the temp dir', async () => {
    const sshd = await startSshd();
    const ssh = { sshDir: sshd.sshDir };
    for (const host of sshd.hosts) {
      const client = await connect(resolveTarget(host, undefined, ssh), ssh);
      const r = await execCollect(client, 'echo "$SSH_CONNECTION"; echo "$HOME"');
      const [conn, home] = r.stdout.trim().split('\n');
      expect(conn!.split(' ').slice(2)).toEqual([host, String(sshd.port)]);
      expect(home).toBe(`${sshd.dir}/home`);
      client.end();
    }
    // a session left open must not survive stop()
    const lingering = await connect(resolveTarget('127.0.0.3', undefined, ssh), ssh);
    lingering.on('error', () => {});
    lingering.exec('sleep 600', () => {});
    await new Promise((r) => setTimeout(r, 300));
    const sshdPid = Number(process.pid); // the harness' sshd is a child of this process
    expect(descendants(sshdPid).length).toBeGreaterThan(0);
    await sshd.stop();
    expect(existsSync(sshd.dir)).toBe(false);
    for (const host of sshd.hosts) expect(await refused(host, sshd.port)).toBe(true);
    lingering.end();
    await sshd.stop(); // idempotent
  });
});
