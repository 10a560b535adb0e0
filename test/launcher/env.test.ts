import { mkdtempSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { describe, expect, it } from 'vitest';
import { carriedEnv, loadEnvFiles, parseEnvFile, rankVars } from '../../src/launcher/env.js';
import { planWorld } from '../../src/launcher/plan.js';
import { addLauncherOptions, readLauncherOptions } from '../../src/launcher/flags.js';
import { rankInfo } from '../../src/index.js';

describe('env files', () => {
  it('parses KEY=VALUE with comments, export, quotes and = in values', () => {
    expect(parseEnvFile('# c\n\nA=1\nexport B=two words\nC=x=y\nD=\n', 'f')).toEqual({ A: '1', B: 'two words', C: 'x=y', D: '' });
  });
  it('a line without = or with a bad name is an error naming file and line (DeepSpeed crashes here)', () => {
    expect(() => parseEnvFile('A=1\nNOEQUALS\n', '/x/.deepspeed_env')).toThrow("/x/.deepspeed_env:2: expected KEY=VALUE, got 'NOEQUALS'");
    expect(() => parseEnvFile('1A=2\n', 'f')).toThrow("f:1: '1A' is not a valid variable name");
  });
  it('cwd beats home and .nodespeed_env beats .deepspeed_env', () => {
    const root = mkdtempSync(join(tmpdir(), 'envf-'));
    const home = join(root, 'home');
    const cwd = join(root, 'cwd');
    mkdirSync(home);
    mkdirSync(cwd);
    writeFileSync(join(home, '.deepspeed_env'), 'A=home-ds\nB=home-ds\nC=home-ds\nD=home-ds\n');
    writeFileSync(join(home, '.nodespeed_env'), 'B=home-ns\nC=home-ns\nD=home-ns\n');
    writeFileSync(join(cwd, '.deepspeed_env'), 'C=cwd-ds\nD=cwd-ds\n');
    writeFileSync(join(cwd, '.nodespeed_env'), 'D=cwd-ns\n');
    const { vars, files } = loadEnvFiles(cwd, home);
    expect(vars).toEqual({ A: 'home-ds', B: 'home-ns', C: 'cwd-ds', D: 'cwd-ns' });
    expect(files).toHaveLength(4);
  });
  it('carries NCCL_*, the engine knobs, PATH and LD_LIBRARY_PATH only (no tokens)', () => {
    expect(carriedEnv({ NCCL_DEBUG: 'INFO', NCCL_IB_DISABLE: '1', PATH: '/p', LD_LIBRARY_PATH: '/l', HOME: '/h', SECRET: 's',
      NODESPEED_CUDA_WARMUP: '0', NODESPEED_P2P: '0', NODESPEED_CUDA_LT: '0', NODESPEED_AUTH_TOKEN: 't', NODESPEED_JOB_TOKEN: 'j',
      NODESPEED_P2PX: '1' })).toEqual({
      NCCL_DEBUG: 'INFO',
      NCCL_IB_DISABLE: '1',
      PATH: '/p',
      LD_LIBRARY_PATH: '/l',
      NODESPEED_CUDA_WARMUP: '0',
      NODESPEED_P2P: '0',
      NODESPEED_CUDA_LT: '0',
    });
  });
  it('rank variables, and rankInfo reads them back typed', () => {
    const p = planWorld([{ host: 'a', slots: [0, 1], attrs: {} }, { host: 'b', slots: [3], attrs: {} }], { masterPort: 29600 });
    const vars = rankVars(p, p.ranks[2]!);
    expect(vars).toEqual({
      RANK: '2', LOCAL_RANK: '0', WORLD_SIZE: '3', LOCAL_WORLD_SIZE: '1', NODE_RANK: '1', MASTER_ADDR: 'a', MASTER_PORT: '29600',
      CUDA_VISIBLE_DEVICES: '3', CROSS_RANK: '1', CROSS_SIZE: '2', LOCAL_SIZE: '1',
    });
    expect(rankInfo({ ...vars, NODESPEED_JOB_TOKEN: 't' })).toEqual({
      rank: 2, localRank: 0, worldSize: 3, localWorldSize: 1, nodeRank: 1, numNodes: 2, masterAddr: 'a', masterPort: 29600, gpu: 3, jobToken: 't',
    });
    expect(() => rankInfo({})).toThrow("rankInfo: RANK is not set (was this process started by 'nodespeed run'?)");
    expect(() => rankInfo({ ...vars, RANK: 'x' })).toThrow("rankInfo: RANK must be a non-negative integer, got 'x'");
    expect(() => rankInfo({ ...vars, RANK: '5' })).toThrow('rankInfo: RANK 5 is not below WORLD_SIZE 3');
  });
});

describe('launcher flags', () => {
  const parse = (argv: string[]): ReturnType<typeof readLauncherOptions> => {
    const cmd = addLauncherOptions(new Command().exitOverride()).argument('[rest...]');
    cmd.parse(argv, { from: 'user' });
    return readLauncherOptions(cmd.opts());
  };
  it('DeepSpeed underscore spellings and kebab-case aliases mean the same', () => {
    const a = parse(['--num_nodes', '2', '--num_gpus', '1', '--master_addr', 'm', '--master_port', '1234', '--ssh_port', '2200', '--remote_workdir', '/w', '--enable_each_rank_log', '/l', '--ssh_accept_new', '--dry_run', '--force_ssh']);
    const b = parse(['--num-nodes', '2', '--num-gpus', '1', '--master-addr', 'm', '--master-port', '1234', '--ssh-port', '2200', '--remote-workdir', '/w', '--enable-each-rank-log', '/l', '--ssh-accept-new', '--dry-run', '--force-ssh']);
    expect(a).toEqual(b);
    expect(a).toMatchObject({ numNodes: 2, numGpus: 1, masterAddr: 'm', masterPort: 1234, sshPort: 2200, remoteWorkdir: '/w', logDir: '/l', dryRun: true, forceSsh: true, ssh: { acceptNew: true } });
    expect(parse(['--num_accelerators', '3']).numGpus).toBe(3);
    expect(parse(['-H', 'hf', '-i', 'a@b:1', '--ssh_identity', 'k1', '--ssh-identity', 'k2']).ssh.identityFiles).toEqual(['k1', 'k2']);
  });
  it('bad numbers name the flag', () => {
    expect(() => parse(['--num_nodes', 'two'])).toThrow("--num_nodes must be an integer from 0 to 4294967295 (got 'two')");
    expect(() => parse(['--ssh_connect_timeout', '0'])).toThrow("--ssh_connect_timeout expects seconds > 0 and at most 2147483, got '0'");
  });
});
