// `nodespeed run` against a real OpenSSH sshd on 127.0.0.2-4 (three "hosts" × 2 slots).
import { randomUUID } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startSshd, sshdAvailable, type SshdHarness } from '../helpers/sshd.js';
import { leftAfter, PROBE, processesWith, requireBuild, runCli, startCli } from './cli-helpers.js';

const suite = sshdAvailable() ? describe : describe.skip;

suite('nodespeed run over SSH (real sshd)', () => {
  let sshd: SshdHarness;
  let work: string;
  let hostfile: string;
  let env: NodeJS.ProcessEnv;

  beforeAll(async () => {
    requireBuild();
    sshd = await startSshd();
    work = mkdtempSync(join(tmpdir(), 'nodespeed-run-'));
    hostfile = join(work, 'hostfile');
    writeFileSync(hostfile, '# three hosts on one machine\n127.0.0.2 slots=2\n127.0.0.3 slots=2\n127.0.0.4 slots=2\n');
    writeFileSync(join(work, '.nodespeed_env'), '# for every rank\nFROM_ENV_FILE=from cwd\n');
    env = { ...sshd.env, NCCL_DEBUG: 'INFO', LD_LIBRARY_PATH: '/opt/test-lib' };
  });
  afterAll(async () => {
    await sshd?.stop();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  /** A copy of the harness' ssh dir with some files replaced, for failure cases. */
  function sshDirVariant(name: string, edit: (dir: string) => void): string {
    const dir = join(work, name);
    mkdirSync(dir, { recursive: true });
    for (const f of readdirSync(sshd.sshDir)) copyFileSync(join(sshd.sshDir, f), join(dir, f));
    // The client config names the harness' key by absolute path: point it at this copy.
    writeFileSync(join(dir, 'config'), readFileSync(join(dir, 'config'), 'utf8').split(sshd.sshDir).join(dir));
    edit(dir);
    return dir;
  }

  it('starts one process per slot on 3 hosts with each rank\'s environment, prefixed and separated output, per-rank logs', async () => {
    const logs = join(work, 'rank-logs');
    const r = await runCli(['run', '-H', hostfile, '--master_port', '29611', '--enable_each_rank_log', logs, PROBE, 'env'], { env, cwd: work });
    expect(r.code, r.stderr).toBe(0);
    const ranks = r.stdout
      .split('\n')
      .map((l) => /^\[(127\.0\.0\.\d):(\d)\] (\{.*\})$/.exec(l))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => ({ host: m[1]!, prefixRank: Number(m[2]), ...JSON.parse(m[3]!) }))
      .sort((a, b) => a.prefixRank - b.prefixRank);
    expect(ranks).toHaveLength(6);
    const token = ranks[0].env.NODESPEED_JOB_TOKEN as string;
    expect(token).toMatch(/^[0-9a-f]{48}$/);
    ranks.forEach((x, i) => {
      const host = `127.0.0.${2 + Math.floor(i / 2)}`;
      expect(x.host).toBe(host);
      expect(x.env).toEqual({
        RANK: String(i), LOCAL_RANK: String(i % 2), WORLD_SIZE: '6', LOCAL_WORLD_SIZE: '2', NODE_RANK: String(Math.floor(i / 2)),
        // DeepSpeed's launch.py: every rank of a node sees the node's GPUs and picks its own with LOCAL_RANK.
        MASTER_ADDR: '127.0.0.2', MASTER_PORT: '29611', CUDA_VISIBLE_DEVICES: '0,1', CROSS_RANK: String(Math.floor(i / 2)),
        CROSS_SIZE: '3', LOCAL_SIZE: '2', NODESPEED_JOB_TOKEN: token, NCCL_DEBUG: 'INFO', FROM_ENV_FILE: 'from cwd', LD_LIBRARY_PATH: '/opt/test-lib',
        // `run` hands no per-rank secrets, and no rank gets the API's bearer token.
        NODESPEED_JOB_SECRETS: null, NODESPEED_AUTH_TOKEN: null,
      });
      expect(x.cwd).toBe(work);
      expect(x.path).toBe(process.env.PATH);
      expect(x.localRankArg).toBe(String(i % 2));
    });
    // stderr stays on stderr, with the same prefixes
    for (let i = 0; i < 6; i++) expect(r.stderr).toContain(`] stderr of rank ${i}`);
    expect(r.stdout).not.toContain('stderr of rank');
    const files = readdirSync(logs).sort();
    expect(files.map((f) => f.replace(/^\d{14}_/, ''))).toEqual([0, 1, 2, 3, 4, 5].map((i) => `rank${i}.log`));
    expect(readFileSync(join(logs, files[4]!), 'utf8')).toContain('stderr of rank 4');
    // The job token travelled on the SSH channel, never on a command line: sshd logs every command it runs.
    expect(readFileSync(sshd.logFile, 'utf8')).not.toContain(token);
  });

  const launched: Array<ReturnType<typeof startCli>> = [];
  afterEach(() => {
    // A failed assertion must not leave a launcher (and its ranks) running.
    for (const run of launched.splice(0)) if (run.child.exitCode === null && run.child.signalCode === null) run.child.kill('SIGKILL');
  });

  async function startHangingJob(extra: string[] = [], ranks = 6, hf = hostfile) {
    const tag = `tag-${randomUUID()}`;
    const run = startCli(['run', '-H', hf, ...extra, PROBE, 'hang', tag], { env, cwd: work });
    launched.push(run);
    const ready = await run.waitFor(/\] READY rank=\d pid=\d+ child=\d+$/, ranks);
    // launcher + one process per rank + its grandchild in the rank's process group
    // (local ranks' watchdog shells carry the command line too; they are not counted here)
    expect(processesWith(tag).filter((p) => !p.cmdline.startsWith('/bin/sh -c'))).toHaveLength(1 + 2 * ranks);
    const pidOf = (rank: number): number => Number(/pid=(\d+)/.exec(ready.find((l) => l.includes(`READY rank=${rank} `))!)![1]);
    return { tag, run, pidOf };
  }

  it('a failing rank tears down every rank on every host within 5 s and its exit code propagates', async () => {
    const { tag, run, pidOf } = await startHangingJob();
    const t0 = Date.now();
    process.kill(pidOf(3), 'SIGUSR1'); // rank 3 (127.0.0.3) exits 7 on its own
    const { code, endedAt } = await run.done;
    expect(code).toBe(7);
    expect(endedAt - t0).toBeLessThan(5000);
    expect(run.stderr.join('\n')).toContain('rank 3 on 127.0.0.3 exited with code 7');
    expect(processesWith(tag)).toEqual([]);
  });

  it('SIGINT to the launcher tears down every rank on every host within 5 s (exit 130)', async () => {
    const { tag, run } = await startHangingJob();
    const t0 = Date.now();
    run.child.kill('SIGINT');
    const { code, endedAt } = await run.done;
    expect(code).toBe(130);
    expect(endedAt - t0).toBeLessThan(5000);
    expect(processesWith(tag)).toEqual([]);
  });

  it('SIGTERM to the launcher likewise (exit 143)', async () => {
    const { tag, run } = await startHangingJob(['--include', '127.0.0.2@127.0.0.4'], 4);
    run.child.kill('SIGTERM');
    expect((await run.done).code).toBe(143);
    expect(processesWith(tag)).toEqual([]);
  });

  it('SIGKILL of the launcher (no teardown possible) still leaves no rank behind, local or remote', async () => {
    const mixed = join(work, 'hostfile-mixed');
    writeFileSync(mixed, 'localhost slots=1\n127.0.0.2 slots=2\n127.0.0.3 slots=1\n');
    const { tag, run } = await startHangingJob([], 4, mixed);
    run.child.kill('SIGKILL');
    await run.done;
    expect(await leftAfter(tag, 5000)).toEqual([]);
  });

  it('a host with more slots than sshd lets handshake at once (MaxStartups 10) still starts every rank', async () => {
    const hf = join(work, 'hostfile-wide');
    writeFileSync(hf, '127.0.0.2 slots=14\n');
    const r = await runCli(['run', '-H', hf, PROBE, 'exit', '0'], { env, cwd: work });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.split('\n').filter((l) => /^\[127\.0\.0\.2:\d+\] out \d+$/.test(l))).toHaveLength(14);
  });

  it('--include/--exclude pick hosts and slots; CUDA_VISIBLE_DEVICES lists the slots chosen on the node', async () => {
    const r = await runCli(['run', '-H', hostfile, '--include', '127.0.0.3:1@127.0.0.4', PROBE, 'env'], { env, cwd: work });
    expect(r.code, r.stderr).toBe(0);
    const got = r.stdout.split('\n').filter((l) => l.includes('{')).map((l) => [l.slice(0, l.indexOf(' ')), JSON.parse(l.slice(l.indexOf(' ') + 1)).env.CUDA_VISIBLE_DEVICES]).sort();
    expect(got).toEqual([['[127.0.0.3:0]', '1'], ['[127.0.0.4:1]', '0,1'], ['[127.0.0.4:2]', '0,1']]);
  });

  it('~/.ssh/config aliases (HostName/Port/User/IdentityFile) and --remote_workdir are honoured', async () => {
    const dir = sshDirVariant('alias', (d) => {
      writeFileSync(join(d, 'config'), `Host node-b\n  HostName 127.0.0.3\n  Port ${sshd.port}\n  User root\n  IdentityFile ${join(d, 'id_ed25519')}\n`);
    });
    const hf = join(work, 'hostfile-alias');
    writeFileSync(hf, 'node-b slots=1\n');
    const r = await runCli(['run', '-H', hf, '--remote-workdir', '/tmp', PROBE, 'env'], { env: { ...env, NODESPEED_SSH_DIR: dir }, cwd: work });
    expect(r.code, r.stderr).toBe(0);
    const line = r.stdout.split('\n').find((l) => l.startsWith('[node-b:0] {'))!;
    expect(JSON.parse(line.slice(line.indexOf(' ') + 1))).toMatchObject({ cwd: '/tmp', env: { MASTER_ADDR: 'node-b', RANK: '0' } });
  });

  it('keys held by the SSH agent are used when no key file is there', async () => {
    const dir = sshDirVariant('agent-only', (d) => {
      rmSync(join(d, 'id_ed25519'));
      writeFileSync(join(d, 'config'), `Host 127.0.0.*\n  Port ${sshd.port}\n  User root\n`);
    });
    const sock = join(work, 'agent.sock');
    const agentPid = Number(/SSH_AGENT_PID=(\d+)/.exec(execFileSync('ssh-agent', ['-a', sock], { encoding: 'utf8' }))![1]);
    try {
      execFileSync('ssh-add', ['-q', join(sshd.sshDir, 'id_ed25519')], { env: { ...process.env, SSH_AUTH_SOCK: sock }, stdio: 'ignore' });
      const r = await runCli(['run', '-H', hostfile, '--num_nodes', '1', '--num_gpus', '1', PROBE, 'env'], { env: { ...env, NODESPEED_SSH_DIR: dir, SSH_AUTH_SOCK: sock }, cwd: work });
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/^\[127\.0\.0\.2:0\] \{/m);
      const without = await runCli(['run', '-H', hostfile, '--num_nodes', '1', PROBE, 'env'], { env: { ...env, NODESPEED_SSH_DIR: dir, SSH_AUTH_SOCK: '' }, cwd: work });
      expect(without.code).toBe(1);
      expect(without.stderr).toContain('no usable identity');
    } finally {
      process.kill(agentPid, 'SIGTERM');
    }
  });

  it('an unknown host key is refused with a clear message; --ssh-accept-new records it', async () => {
    const dir = sshDirVariant('no-known-hosts', (d) => rmSync(join(d, 'known_hosts')));
    const tag = `tag-${randomUUID()}`;
    const r = await runCli(['run', '-H', hostfile, PROBE, 'hang', tag], { env: { ...env, NODESPEED_SSH_DIR: dir }, cwd: work });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`host key verification failed: unknown host key for [127.0.0.2]:${sshd.port} (ssh-ed25519 SHA256:`);
    expect(r.stderr).toContain('--ssh-accept-new');
    expect(processesWith(tag)).toEqual([]);
    const ok = await runCli(['run', '-H', hostfile, '--ssh-accept-new', '--num_gpus', '1', PROBE, 'env'], { env: { ...env, NODESPEED_SSH_DIR: dir }, cwd: work });
    expect(ok.code, ok.stderr).toBe(0);
    const recorded = readFileSync(join(dir, 'known_hosts'), 'utf8');
    for (const h of sshd.hosts) expect(recorded).toContain(`[${h}]:${sshd.port} ${sshd.hostKeyPub}`);
  });

  it('a changed host key is refused as a possible man-in-the-middle', async () => {
    const dir = sshDirVariant('changed-key', (d) => {
      execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(d, 'other')]);
      const other = readFileSync(join(d, 'other.pub'), 'utf8').split(' ').slice(0, 2).join(' ');
      writeFileSync(join(d, 'known_hosts'), sshd.hosts.map((h) => `[${h}]:${sshd.port} ${other}\n`).join(''));
    });
    const r = await runCli(['run', '-H', hostfile, '--ssh-accept-new', PROBE, 'env'], { env: { ...env, NODESPEED_SSH_DIR: dir }, cwd: work });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/host key for \[127\.0\.0\.\d\]:\d+ has CHANGED .*known_hosts:\d differs\) — possible man-in-the-middle/);
    expect(r.stderr).not.toContain('accept-new');
  });

  it('accept-new never records a key for a host known_hosts lists with a key of another type, and does not suggest accept-new', async () => {
    // The server has only an ed25519 host key; known_hosts lists an RSA key for every host.
    const dir = sshDirVariant('other-type', (d) => {
      execFileSync('ssh-keygen', ['-q', '-t', 'rsa', '-b', '2048', '-N', '', '-f', join(d, 'other-rsa')]);
      const rsa = readFileSync(join(d, 'other-rsa.pub'), 'utf8').split(' ').slice(0, 2).join(' ');
      writeFileSync(join(d, 'known_hosts'), sshd.hosts.map((h) => `[${h}]:${sshd.port} ${rsa}\n`).join(''));
    });
    const before = readFileSync(join(dir, 'known_hosts'), 'utf8');
    const tag = `tag-${randomUUID()}`;
    const r = await runCli(['run', '-H', hostfile, '--ssh-accept-new', PROBE, 'hang', tag], { env: { ...env, NODESPEED_SSH_DIR: dir }, cwd: work });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/host key for \[127\.0\.0\.\d\]:\d+ has CHANGED to another type \(server offers ssh-ed25519 SHA256:\S+; .*known_hosts:\d lists only ssh-rsa for it\) — possible man-in-the-middle/);
    expect(r.stderr).toContain('ssh-keygen -R');
    expect(r.stderr).not.toContain('accept-new');
    expect(readFileSync(join(dir, 'known_hosts'), 'utf8')).toBe(before);
    expect(processesWith(tag)).toEqual([]);
  });

  it('a server with several host keys is asked first for the type known_hosts lists (no refusal, nothing recorded)', async () => {
    const two = await startSshd({ hosts: ['127.0.0.2'], rsaHostKey: true });
    try {
      // known_hosts lists only the RSA key; without asking for RSA first the server would present ed25519.
      writeFileSync(join(two.sshDir, 'known_hosts'), `[127.0.0.2]:${two.port} ${two.rsaHostKeyPub}\n`);
      const hf = join(work, 'hostfile-two-keys');
      writeFileSync(hf, '127.0.0.2 slots=1\n');
      const r = await runCli(['run', '-H', hf, PROBE, 'env'], { env: { ...env, NODESPEED_SSH_DIR: two.sshDir }, cwd: work });
      expect(r.code, r.stderr).toBe(0);
      expect(readFileSync(join(two.sshDir, 'known_hosts'), 'utf8')).toBe(`[127.0.0.2]:${two.port} ${two.rsaHostKeyPub}\n`);
    } finally {
      await two.stop();
    }
  });

  it('a wrong client key fails with an authentication error', async () => {
    const dir = sshDirVariant('wrong-key', (d) => {
      rmSync(join(d, 'id_ed25519'));
      rmSync(join(d, 'id_ed25519.pub'));
      execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(d, 'id_ed25519')]);
    });
    const r = await runCli(['run', '-H', hostfile, PROBE, 'env'], { env: { ...env, NODESPEED_SSH_DIR: dir, SSH_AUTH_SOCK: '' }, cwd: work });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`ssh root@127.0.0.2:${sshd.port}: authentication failed (tried: ${dir}/id_ed25519)`);
  });

  describe('unreachable hosts', () => {
    let silent: Server;
    beforeAll(async () => {
      // Accepts TCP but never speaks SSH: a host that hangs the handshake.
      silent = createServer((socket) => sockets.push(socket));
      await new Promise<void>((r) => silent.listen(sshd.port, '127.0.0.5', r));
    });
    const sockets: Socket[] = [];
    afterAll(() => {
      sockets.forEach((s) => s.destroy());
      return new Promise<void>((r) => silent.close(() => r()));
    });

    it('a silent host fails within the connect timeout, naming the host; the reachable ranks are torn down', async () => {
      const hf = join(work, 'hostfile-silent');
      writeFileSync(hf, '127.0.0.2 slots=1\n127.0.0.5 slots=1\n');
      const tag = `tag-${randomUUID()}`;
      const r = await runCli(['run', '-H', hf, '--ssh_port', String(sshd.port), '--ssh_connect_timeout', '2', PROBE, 'hang', tag], { env, cwd: work });
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`ssh root@127.0.0.5:${sshd.port}: connection timed out after 2000 ms`);
      expect(r.ms).toBeLessThan(2000 + 4000);
      expect(processesWith(tag)).toEqual([]);
    });

    it('a refused connection names the host', async () => {
      const hf = join(work, 'hostfile-refused');
      writeFileSync(hf, '127.0.0.6 slots=1\n');
      const r = await runCli(['run', '-H', hf, '--ssh_port', String(sshd.port), PROBE, 'env'], { env, cwd: work });
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`ssh root@127.0.0.6:${sshd.port}: connection refused`);
    });
  });

  it('hostfile check reports every host in a table and fails when one is down', async () => {
    const ok = await runCli(['hostfile', 'check', '-H', hostfile], { env, cwd: work });
    expect(ok.code, ok.stderr).toBe(0);
    const rows = ok.stdout.split('\n').slice(2);
    expect(rows).toHaveLength(3);
    for (const [i, row] of rows.entries()) expect(row).toMatch(new RegExp(`^127\\.0\\.0\\.${i + 2}\\s+ok\\s+0\\s+${process.version}\\s+yes$`));
    const hf = join(work, 'hostfile-check');
    writeFileSync(hf, '127.0.0.2 slots=1\n127.0.0.6 slots=1\nno-such-host.invalid slots=1\n');
    const bad = await runCli(['hostfile', 'check', '-H', hf, '--ssh_port', String(sshd.port)], { env, cwd: work });
    expect(bad.code).toBe(1);
    expect(bad.stdout).toMatch(/127\.0\.0\.2\s+ok/);
    expect(bad.stdout).toMatch(/127\.0\.0\.6\s+refused: .*connection refused/);
    expect(bad.stdout).toMatch(/no-such-host\.invalid\s+dns: .*cannot resolve host name/);
    expect(bad.stderr).toContain('2 of 3 host(s) failed');
  });
});
