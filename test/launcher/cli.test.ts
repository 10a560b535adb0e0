// The CLI without SSH: hostfile commands, --dry-run, local ranks, flag and file errors.
import { randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PROBE, processesWith, requireBuild, runCli } from './cli-helpers.js';

let dir: string;
beforeAll(() => {
  requireBuild();
  dir = mkdtempSync(join(tmpdir(), 'nodespeed-cli-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('nodespeed hostfile', () => {
  it('add / set / remove keep comments and order; list prints the table', async () => {
    const hf = join(dir, 'hostfile');
    writeFileSync(hf, '# training boxes\nbox-1 slots=8  # fast one\n\nbox-2 slots=4\n');
    expect((await runCli(['hostfile', 'add', 'box-3', '--slots', '2', '--attr', 'device=cpu', '-H', hf])).code).toBe(0);
    expect((await runCli(['hostfile', 'set', 'box-1', '--slots', '6', '--hostfile', hf])).code).toBe(0);
    expect((await runCli(['hostfile', 'remove', 'box-2', '-H', hf])).code).toBe(0);
    expect(readFileSync(hf, 'utf8')).toBe('# training boxes\nbox-1 slots=6  # fast one\n\nbox-3 slots=2 device=cpu\n');
    const list = await runCli(['hostfile', 'list', '-H', hf]);
    expect(list.stdout).toMatch(/^HOST\s+SLOTS\s+ATTRIBUTES\n[- ]+\nbox-1\s+6\n?\s*\nbox-3\s+2\s+device=cpu\n2 host\(s\), 8 slot\(s\)$/m);
    const dup = await runCli(['hostfile', 'add', 'box-1', '--slots', '1', '-H', hf]);
    expect(dup.code).toBe(1);
    expect(dup.stderr).toBe(`${hf}:2: host 'box-1' already exists (use 'set')`);
    const bad = await runCli(['hostfile', 'set', 'box-1', '--slots', '0', '-H', hf]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain('--slots must be a positive integer, got 0');
  });

  it('validate lists every error with file and line and exits non-zero', async () => {
    const hf = join(dir, 'broken');
    writeFileSync(hf, 'a slots=2\na slots=1\nb slots=0\nc slots=2 gpu\n');
    const r = await runCli(['hostfile', 'validate', '-H', hf]);
    expect(r.code).toBe(1);
    expect(r.stderr.split('\n')).toEqual([
      `${hf}:2: duplicate host 'a' (first defined on line 1)`,
      `${hf}:3: slots must be a positive integer for host 'b', got 0`,
      `${hf}:4: unknown token 'gpu' for host 'c' (expected slots=N or key=value)`,
    ]);
    const good = join(dir, 'good');
    writeFileSync(good, 'a slots=2\n');
    expect((await runCli(['hostfile', 'validate', '-H', good])).stdout).toBe(`${good}: ok, 1 host(s), 2 slot(s)`);
  });
});

describe('nodespeed run (local ranks)', () => {
  // Its own directory: a ./hostfile there would be picked up by default.
  let local: string;
  beforeAll(() => {
    local = mkdtempSync(join(dir, 'local-'));
  });

  it('--dry-run prints placement and exact commands, masks the token and runs nothing', async () => {
    const hf = join(dir, 'hf-dry');
    writeFileSync(hf, 'localhost slots=1\ngpu-box slots=4\n');
    const tag = `tag-${randomUUID()}`;
    const r = await runCli(['run', '-H', hf, '--exclude', 'gpu-box:0,1', '--ssh_port', '2222', '--dry-run', PROBE, 'hang', tag], { cwd: dir, env: { NODESPEED_SSH_DIR: dir } });
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.split('\n');
    expect(lines.slice(0, 5).map((l) => l.split(/\s+/))).toEqual([
      ['RANK', 'HOST', 'NODE_RANK', 'LOCAL_RANK', 'GPU', 'VIA'],
      ['----', '---------', '---------', '----------', '---', '-----'],
      ['0', 'localhost', '0', '0', '0', 'local'],
      ['1', 'gpu-box', '1', '0', '2', 'ssh'],
      ['2', 'gpu-box', '1', '1', '3', 'ssh'],
    ]);
    expect(lines[5]).toMatch(/^world size 3 on 2 node\(s\), MASTER_ADDR=\S+ MASTER_PORT=29500$/);
    expect(lines[6]).toContain(`[localhost:0] local: cd ${dir} && `);
    expect(lines[8]).toMatch(/^\[gpu-box:2\] ssh \S+@gpu-box -p 2222 .*setsid -w \/bin\/sh -s.* RANK=2 LOCAL_RANK=1 WORLD_SIZE=3 .*CUDA_VISIBLE_DEVICES=2,3 /);
    expect(r.stdout).toContain("NODESPEED_JOB_TOKEN='<secret, generated per job>'");
    expect(lines[8]!.endsWith(`${process.execPath} ${PROBE} --local_rank=1 hang ${tag}`)).toBe(true);
    expect(processesWith(tag)).toEqual([]);
    const custom = await runCli(['run', '-H', hf, '--node', '/opt/node22/bin/node', '--dry_run', 'worker.mjs', 'a'], { cwd: dir, env: { NODESPEED_SSH_DIR: dir } });
    expect(custom.stdout.split('\n').filter((l) => l.startsWith('[')).every((l) => / \/opt\/node22\/bin\/node worker\.mjs --local_rank=\d a$/.test(l))).toBe(true);
    const binary = await runCli(['run', '-H', hf, '--dry_run', '/bin/echo', 'hi'], { cwd: dir, env: { NODESPEED_SSH_DIR: dir } });
    expect(binary.stdout).toMatch(/\[localhost:0\] local: .* \/bin\/echo --local_rank=0 hi$/m);
  });

  it('without a hostfile runs --num_cpu_workers ranks here (default 2) and passes program args through', async () => {
    const r = await runCli(['run', '--num-cpu-workers', '3', '--master-port', '29999', PROBE, 'env', '--not-ours', '-H'], { cwd: local });
    expect(r.code, r.stderr).toBe(0);
    const ranks = r.stdout.split('\n').filter((l) => l.includes('{')).map((l) => JSON.parse(l.slice(l.indexOf(' ') + 1)));
    expect(ranks.map((x) => x.env.RANK).sort()).toEqual(['0', '1', '2']);
    for (const x of ranks) {
      expect(x.env).toMatchObject({ WORLD_SIZE: '3', LOCAL_WORLD_SIZE: '3', MASTER_ADDR: 'localhost', MASTER_PORT: '29999', CUDA_VISIBLE_DEVICES: '' });
      expect(x.argv).toEqual(['env', '--not-ours', '-H']);
      expect(x.localRankArg).toBe(x.env.LOCAL_RANK);
      // the token is in the environment only, never in argv
      expect(JSON.stringify(x.argv)).not.toContain(x.env.NODESPEED_JOB_TOKEN);
    }
  });

  it('a rank exit code propagates and every other local rank is stopped', async () => {
    const r = await runCli(['run', '--num_cpu_workers', '2', PROBE, 'exit', '4'], { cwd: local });
    expect(r.code).toBe(4);
    expect(r.stdout).toMatch(/^\[localhost:[01]\] out [01]$/m);
    expect(r.stderr).toMatch(/^\[localhost:[01]\] err [01]$/m);
    expect(r.stderr).toMatch(/rank [01] on localhost exited with code 4; all ranks stopped/);
  });

  it('errors name the flag, the file and the line', async () => {
    const hf = join(dir, 'hf-err');
    writeFileSync(hf, 'a slots=2\nb slots=x\n');
    let r = await runCli(['run', '-H', hf, PROBE, 'env'], { cwd: dir });
    expect([r.code, r.stderr]).toEqual([1, `nodespeed run: ${hf}:2: slots must be a positive integer for host 'b', got 'x'`]);
    writeFileSync(hf, 'a slots=2\n');
    r = await runCli(['run', '-H', hf, '--include', 'a:5', PROBE, 'env'], { cwd: dir });
    expect(r.stderr).toBe("nodespeed run: --include: no slot 5 on host 'a' (it has slots 0,1)");
    r = await runCli(['run', '--num_nodes', 'x', PROBE, 'env'], { cwd: local });
    expect(r.stderr).toBe("nodespeed run: --num_nodes must be an integer from 0 to 4294967295 (got 'x')");
    const envDir = mkdtempSync(join(dir, 'envfile-'));
    writeFileSync(join(envDir, '.deepspeed_env'), 'GOOD=1\nNOT A PAIR\n');
    r = await runCli(['run', PROBE, 'env'], { cwd: envDir });
    expect([r.code, r.stderr]).toEqual([1, `nodespeed run: ${envDir}/.deepspeed_env:2: expected KEY=VALUE, got 'NOT A PAIR'`]);
  });
});
