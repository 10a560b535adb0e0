// DeepSpeed parity over a real sshd on 127.0.0.2-3: env-file values expanded by the remote rank's own
// shell, --launcher pdsh (the real pdsh over OpenSSH) starting one nodespeed per node, and `hostfile
// check` on names that do not resolve.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSshd, sshdAvailable, type SshdHarness } from '../helpers/sshd.js';
import { leftAfter, PROBE, requireBuild, runCli, startCli } from './cli-helpers.js';

const suite = sshdAvailable() ? describe : describe.skip;

function havePdsh(): boolean {
  try {
    execFileSync('sh', ['-c', 'command -v pdsh'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

function probes(stdout: string): Array<{ line: string; env: Record<string, string | null>; localRankArg: string | null }> {
  return stdout.split('\n').filter((l) => l.includes('{')).map((l) => ({ line: l.slice(0, l.indexOf(' ')), ...JSON.parse(l.slice(l.indexOf(' ') + 1)) }))
    .sort((a, b) => Number(a.env.RANK) - Number(b.env.RANK));
}

suite('DeepSpeed parity over SSH (real sshd)', () => {
  let sshd: SshdHarness;
  let work: string;
  let hostfile: string;
  let env: NodeJS.ProcessEnv;

  beforeAll(async () => {
    requireBuild();
    sshd = await startSshd({ hosts: ['127.0.0.2', '127.0.0.3'] });
    work = mkdtempSync(join(tmpdir(), 'nodespeed-ssh-parity-'));
    hostfile = join(work, 'hostfile');
    writeFileSync(hostfile, '127.0.0.2 slots=2\n127.0.0.3 slots=1\n');
    // pdsh runs OpenSSH's client: point it at the harness' keys, config and known_hosts.
    const ssh = sshd.sshDir;
    env = { ...sshd.env, PDSH_SSH_ARGS_APPEND: `-F ${ssh}/config -o UserKnownHostsFile=${ssh}/known_hosts -o IdentitiesOnly=yes -o BatchMode=yes` };
  });
  afterAll(async () => {
    await sshd?.stop();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it("a remote rank's .deepspeed_env values are expanded by its own shell, as DeepSpeed's pdsh exports are", async () => {
    const cwd = mkdtempSync(join(work, 'envf-'));
    // SSH_CONNECTION exists only in the remote session: expanded on this side it would be empty.
    writeFileSync(join(cwd, '.deepspeed_env'), "FROM_ENV_FILE=$SSH_CONNECTION|'q'\n");
    const r = await runCli(['run', '-H', hostfile, '--include', '127.0.0.3', PROBE, 'env'], { env, cwd });
    expect(r.code, r.stderr).toBe(0);
    const [x] = probes(r.stdout);
    expect(x!.env.FROM_ENV_FILE).toMatch(/^127\.0\.0\.\d+ \d+ 127\.0\.0\.3 \d+\|'q'$/);
    // --dry_run shows the reference, not this machine's value.
    const dry = await runCli(['run', '-H', hostfile, '--include', '127.0.0.3', '--dry_run', PROBE, 'env'], { env, cwd });
    expect(dry.stdout).toContain(`FROM_ENV_FILE="\${SSH_CONNECTION}"'|'\\''q'\\''' `);
  });

  (havePdsh() ? it : it.skip)('--launcher pdsh: pdsh starts one nodespeed per node, which starts that node\'s ranks with the same variables', async () => {
    const r = await runCli(['run', '-H', hostfile, '--launcher', 'pdsh', '--master_port', '29633', PROBE, 'env'], { env, cwd: work });
    expect(r.code, r.stderr).toBe(0);
    const ranks = probes(r.stdout);
    expect(ranks.map((x) => [x.line, x.env.RANK, x.env.LOCAL_RANK, x.env.NODE_RANK, x.env.WORLD_SIZE, x.env.CUDA_VISIBLE_DEVICES, x.env.MASTER_ADDR, x.env.MASTER_PORT, x.localRankArg])).toEqual([
      ['[127.0.0.2:0]', '0', '0', '0', '3', '0,1', '127.0.0.2', '29633', '0'],
      ['[127.0.0.2:1]', '1', '1', '0', '3', '0,1', '127.0.0.2', '29633', '1'],
      ['[127.0.0.3:2]', '2', '0', '1', '3', '0', '127.0.0.2', '29633', '0'],
    ]);
    // A failing rank's status comes back through pdsh -S.
    const fail = await runCli(['run', '-H', hostfile, '--launcher', 'pdsh', '-i', '127.0.0.3', PROBE, 'exit', '5'], { env, cwd: work });
    expect(fail.code).toBe(5);
  });

  (havePdsh() ? it : it.skip)('--launcher pdsh: Ctrl-C ends the ranks on every node', async () => {
    const tag = `pdsh-int-${process.pid}`;
    const run = startCli(['run', '-H', hostfile, '--launcher', 'pdsh', PROBE, 'hang', tag], { env, cwd: work });
    await run.waitFor(/READY/, 3, 30_000);
    run.child.kill('SIGINT');
    await run.done;
    expect(await leftAfter(tag, 10_000)).toEqual([]);
  });

  it('launch --device cuda on remote workers without a GPU: the workers\' own error is the cause, once, no stack trace', async () => {
    const hf = join(work, 'hf-cuda');
    writeFileSync(hf, '127.0.0.2 slots=2\n');
    const model = join(process.cwd(), 'models', 'py-tiny');
    const r = await runCli(['launch', '--model', model, '-H', hf, '--tp', '2', '--device', 'cuda', '--port', '0', '--bind', '127.0.0.1', '--no-progress'], { env, cwd: work });
    expect(r.code).toBe(1);
    const lines = r.stderr.split('\n');
    expect(lines[lines.length - 1]).toMatch(/^replica 0 failed while starting: rank [01] lost: --device cuda: CUDA unavailable \(.+\) on \S+$/);
    // No stack trace, nothing blamed on NCCL (the other worker may still say its coordinator went away).
    expect(r.stderr).not.toMatch(/nccl|^\s+at |\[127\.0\.0\.2:\d\]\s+at /im);
    expect(lines.filter((l) => /^coordinator: rank \d .* lost: --device cuda/.test(l)).length).toBe(1);
  });

  it('hostfile check: names that do not resolve are DNS failures, checked at most --concurrency at a time, summarized past 64 hosts', async () => {
    const hf = join(work, 'hf-dns');
    // RFC 6761: .invalid never resolves.
    const names = Array.from({ length: 70 }, (_, i) => `nohost-${i}.invalid`);
    writeFileSync(hf, ['127.0.0.2 slots=1', ...names.map((n) => `${n} slots=1`)].join('\n') + '\n');
    const r = await runCli(['hostfile', 'check', '-H', hf, '--concurrency', '8', '--ssh_connect_timeout', '5'], { env, cwd: work });
    expect(r.code).toBe(1);
    const lines = r.stdout.split('\n');
    expect(lines[lines.length - 1]).toBe('71 hosts: 70 dns, 1 ok');
    expect(r.stdout).toMatch(/^nohost-0\.invalid\s+dns: ssh \S+@nohost-0\.invalid:22: cannot resolve host name 'nohost-0\.invalid'/m);
    expect(r.stdout).not.toMatch(/timeout/);
    expect(r.stdout).toContain('(6 more failed host(s) not listed; --all lists every host)');
    expect(r.stderr).toBe('70 of 71 host(s) failed');
    const all = await runCli(['hostfile', 'check', '-H', hf, '--all', '--concurrency', '64'], { env, cwd: work });
    expect(all.stdout.split('\n').filter((l) => /^nohost-\d+\.invalid\s+dns: /.test(l))).toHaveLength(70);
  });
});
