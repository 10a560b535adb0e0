// `nodespeed run` as a `deepspeed` script launcher, local ranks and --dry_run (the SSH cases are in
// ssh-parity.test.ts): devices and --local_rank, DeepSpeed's flags, selection edge cases, env files, logs.
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { parseEnvFile, parseEnvFileAssigns, rankVars } from '../../src/launcher/env.js';
import { planWorld } from '../../src/launcher/plan.js';
import { PROBE, requireBuild, runCli, startCli } from './cli-helpers.js';

let dir: string;
/** A PATH entry with an nvidia-smi answering for a 4-GPU machine (this one has none). */
let smiBin: string;
beforeAll(() => {
  requireBuild();
  dir = mkdtempSync(join(tmpdir(), 'nodespeed-parity-'));
  smiBin = join(dir, 'bin');
  mkdirSync(smiBin);
  writeFileSync(join(smiBin, 'nvidia-smi'), '#!/bin/sh\n[ "$1" = "--query-gpu=index,uuid" ] || exit 9\nprintf "0, GPU-a0\\n1, GPU-a1\\n2, GPU-a2\\n3, GPU-a3\\n"\n');
  chmodSync(join(smiBin, 'nvidia-smi'), 0o755);
});

const gpuEnv = (extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv => ({ PATH: `${smiBin}:${process.env.PATH}`, ...extra });

/** The JSON each probe rank prints, by rank. */
function probes(stdout: string): Array<{ env: Record<string, string | null>; argv: string[]; localRankArg: string | null }> {
  return stdout.split('\n').filter((l) => l.includes('{')).map((l) => JSON.parse(l.slice(l.indexOf(' ') + 1)))
    .sort((a, b) => Number(a.env.RANK) - Number(b.env.RANK));
}

/** The rows of the --dry_run placement table: [rank, host, node rank, local rank, gpu, via]. */
function placement(stdout: string): string[][] {
  return stdout.split('\n').slice(2).filter((l) => /^\d/.test(l)).map((l) => l.split(/\s+/));
}

describe('devices and --local_rank (DeepSpeed launch.py)', () => {
  it("every rank of a node gets the node's whole CUDA_VISIBLE_DEVICES and --local_rank=N; --no_local_rank drops it", async () => {
    const r = await runCli(['run', PROBE, 'env'], { cwd: dir, env: gpuEnv() });
    expect(r.code, r.stderr).toBe(0);
    const ranks = probes(r.stdout);
    expect(ranks.map((x) => [x.env.RANK, x.env.LOCAL_RANK, x.env.CUDA_VISIBLE_DEVICES, x.localRankArg])).toEqual([
      ['0', '0', '0,1,2,3', '0'], ['1', '1', '0,1,2,3', '1'], ['2', '2', '0,1,2,3', '2'], ['3', '3', '0,1,2,3', '3'],
    ]);
    const plain = probes((await runCli(['run', '--no_local_rank', PROBE, 'env'], { cwd: dir, env: gpuEnv() })).stdout);
    expect(plain.map((x) => x.localRankArg)).toEqual([null, null, null, null]);
  });

  it("nodespeed's own workers keep one GPU each (JobSpec.visibleDevices 'rank')", () => {
    const p = planWorld([{ host: 'a', slots: [1, 3], attrs: {} }]);
    expect(p.ranks.map((r) => rankVars(p, r).CUDA_VISIBLE_DEVICES)).toEqual(['1,3', '1,3']);
    expect(p.ranks.map((r) => rankVars(p, r, 'rank').CUDA_VISIBLE_DEVICES)).toEqual(['1', '3']);
  });

  it('a .py program runs with python3 -u, --module with python3 -u -m, --no_python as given', async () => {
    writeFileSync(join(dir, 'show.py'), 'import sys\nprint("py", sys.argv[1:])\n');
    writeFileSync(join(dir, 'showmod.py'), 'import sys\nprint("mod", sys.argv[1:])\n');
    writeFileSync(join(dir, 'direct.py'), '#!/bin/sh\necho direct "$@"\n');
    chmodSync(join(dir, 'direct.py'), 0o755);
    const dry = await runCli(['run', '--num_cpu_workers', '1', '--dry_run', 'show.py', 'a'], { cwd: dir });
    expect(dry.stdout).toMatch(/ python3 -u show\.py --local_rank=0 a$/m);
    const py = await runCli(['run', '--num_cpu_workers', '1', 'show.py', 'a'], { cwd: dir });
    expect(py.stdout).toBe("[localhost:0] py ['--local_rank=0', 'a']");
    const mod = await runCli(['run', '--num_cpu_workers', '1', '--module', 'showmod', 'a'], { cwd: dir });
    expect(mod.stdout).toBe("[localhost:0] mod ['--local_rank=0', 'a']");
    const direct = await runCli(['run', '--num_cpu_workers', '1', '--no_python', './direct.py', 'a'], { cwd: dir });
    expect(direct.stdout).toBe('[localhost:0] direct --local_rank=0 a');
    const both = await runCli(['run', '--no_python', '--module', 'x'], { cwd: dir });
    expect(both.stderr).toBe("nodespeed run: --no_python and --module exclude each other (a module needs 'python -m')");
  });
});

describe("DeepSpeed's launcher flags", () => {
  it('argparse abbreviations: --num_node, --num_cpu_w; an ambiguous one is an error naming the candidates', async () => {
    const hf = join(dir, 'hf-abbrev');
    writeFileSync(hf, 'a slots=2\nb slots=2\n');
    const r = await runCli(['run', '-H', hf, '--num_node', '1', '--num_g=1', '--dry_r', 'x.py'], { cwd: dir });
    expect(r.code, r.stderr).toBe(0);
    expect(placement(r.stdout)).toEqual([['0', 'a', '0', '0', '0', 'ssh']]);
    const amb = await runCli(['run', '-H', hf, '--num', '1', 'x.py'], { cwd: dir });
    expect([amb.code, amb.stderr]).toEqual([2, "error: ambiguous option: --num could match --num_nodes, --num_gpus, --num_accelerators, --num_cpu_workers\n(run 'nodespeed run --help' for usage)"]);
    // After the program, everything is the program's.
    const passed = await runCli(['run', '--num_cpu_w', '1', PROBE, 'env', '--num'], { cwd: dir });
    expect(probes(passed.stdout).map((x) => x.argv)).toEqual([['env', '--num']]);
  });

  it('--force_multi sends even a local host through SSH', async () => {
    const hf = join(dir, 'hf-local');
    writeFileSync(hf, 'localhost slots=1\n');
    expect(placement((await runCli(['run', '-H', hf, '--dry_run', 'x.py'], { cwd: dir })).stdout)[0]![5]).toBe('local');
    expect(placement((await runCli(['run', '-H', hf, '--force_multi', '--dry_run', 'x.py'], { cwd: dir })).stdout)[0]![5]).toBe('ssh');
  });

  it('--no_ssh --node_rank N starts node N\'s ranks here with their global ranks; the node can come from the MPI rank variable', async () => {
    const hf = join(dir, 'hf-nossh');
    writeFileSync(hf, 'node-a slots=2\nnode-b slots=3\n');
    const r = await runCli(['run', '-H', hf, '--no_ssh', '--node_rank', '1', '--no_ssh_check', PROBE, 'env'], { cwd: dir });
    expect(r.code, r.stderr).toBe(0);
    expect(probes(r.stdout).map((x) => [x.env.RANK, x.env.LOCAL_RANK, x.env.NODE_RANK, x.env.WORLD_SIZE, x.env.CUDA_VISIBLE_DEVICES, x.env.MASTER_ADDR])).toEqual([
      ['2', '0', '1', '5', '0,1,2', 'node-a'], ['3', '1', '1', '5', '0,1,2', 'node-a'], ['4', '2', '1', '5', '0,1,2', 'node-a'],
    ]);
    const mpi = await runCli(['run', '-H', hf, '--no_ssh', PROBE, 'env'], { cwd: dir, env: { OMPI_COMM_WORLD_RANK: '0' } });
    expect(probes(mpi.stdout).map((x) => x.env.RANK)).toEqual(['0', '1']);
    expect((await runCli(['run', '-H', hf, '--no_ssh', PROBE, 'env'], { cwd: dir })).stderr).toMatch(/^nodespeed run: --no_ssh needs --node_rank N/);
    expect((await runCli(['run', '-H', hf, '--no_ssh', '--node_rank', '2', PROBE, 'env'], { cwd: dir })).stderr).toBe('nodespeed run: --node_rank 2: the job has 2 node(s) (0-1)');
    expect((await runCli(['run', '-H', hf, '--node_rank', '1', PROBE, 'env'], { cwd: dir })).stderr).toBe('nodespeed run: --node_rank only applies with --no_ssh (without it this launcher starts every node itself)');
  });

  it('--save_pid writes /tmp/<pid>.deepspeed while the launcher runs and removes it', async () => {
    const run = startCli(['run', '--num_cpu_workers', '1', '--save_pid', PROBE, 'hang', `savepid-${process.pid}`], { cwd: dir });
    await run.waitFor(/READY/);
    const file = `/tmp/${run.child.pid}.deepspeed`;
    expect(readFileSync(file, 'utf8')).toBe(String(run.child.pid));
    run.child.kill('SIGINT');
    expect((await run.done).code).toBe(130);
    expect(existsSync(file)).toBe(false);
  });

  it('--bind_cores_to_rank splits the cores between the ranks (taskset or numactl) and sets OMP_NUM_THREADS', async () => {
    writeFileSync(join(dir, 'affinity.py'), 'import os\nprint(sorted(os.sched_getaffinity(0)), os.environ["OMP_NUM_THREADS"])\n');
    const listed = await runCli(['run', '--num_cpu_workers', '2', '--bind_cores_to_rank', '--bind_core_list', '0-1', 'affinity.py'], { cwd: dir });
    expect(listed.code, listed.stderr).toBe(0);
    expect(listed.stdout.split('\n').sort()).toEqual(['[localhost:0] [0] 1', '[localhost:1] [1] 1']);
    // No list: every physical core of the host (this machine's lscpu counts them).
    const all = await runCli(['run', '--num_cpu_workers', '1', '--bind_cores_to_rank', 'affinity.py'], { cwd: dir });
    const cores = Number(/\] \[([\d, ]+)\] (\d+)/.exec(all.stdout)?.[2]);
    expect(cores).toBeGreaterThanOrEqual(1);
    const tooMany = await runCli(['run', '--num_cpu_workers', '3', '--bind_cores_to_rank', '--bind_core_list', '0-1', 'affinity.py'], { cwd: dir });
    expect(tooMany.stderr).toBe('nodespeed run: --bind_cores_to_rank: 2 core(s) cannot give each of 3 rank(s) one');
    // A core the host lacks is refused by the rank's shell there, before the program starts.
    const lacking = await runCli(['run', '--num_cpu_workers', '1', '--bind_cores_to_rank', '--bind_core_list', '65000', 'affinity.py'], { cwd: dir });
    expect(lacking.code).not.toBe(0);
    expect(lacking.stdout).toBe('');
    expect(lacking.stderr).toMatch(/nodespeed: --bind_cores_to_rank: core 65000 cannot be used: \S+ has cores 0-\d+/);
  });

  it('--venv_script is sourced before the program on every rank; -q and --log_level quiet the launcher', async () => {
    writeFileSync(join(dir, 'venv.sh'), 'export FROM_VENV=yes\n');
    writeFileSync(join(dir, 'venv.py'), 'import os\nprint(os.environ.get("FROM_VENV"))\n');
    const r = await runCli(['run', '--num_cpu_workers', '1', '--venv_script', 'venv.sh', 'venv.py'], { cwd: dir });
    expect([r.stdout, r.stderr]).toEqual(['[localhost:0] yes', 'nodespeed: starting 1 rank(s) on 1 host(s)']);
    expect((await runCli(['run', '-q', '--num_cpu_workers', '1', 'venv.py'], { cwd: dir })).stderr).toBe('');
    expect((await runCli(['run', '--log_level', 'warning', '--num_cpu_workers', '1', 'venv.py'], { cwd: dir })).stderr).toBe('');
  });

  it('--launcher: a tool that is not installed is a clear error; an unknown one lists the choices', async () => {
    const r = await runCli(['run', '--launcher', 'openmpi', 'x.py'], { cwd: dir, env: { PATH: '/usr/bin:/bin' } });
    expect([r.code, r.stderr]).toEqual([1, "nodespeed run: --launcher openmpi: 'ompi_info' is not installed on this machine (use --launcher ssh, the built-in one, or install openmpi)"]);
    const u = await runCli(['run', '--launcher', 'torchrun', 'x.py'], { cwd: dir });
    expect(u.stderr).toBe('nodespeed run: --launcher torchrun: unknown launcher (choose ssh, pdsh, openmpi, mpich, impi, mvapich, slurm)');
  });

  it.each([
    ['--elastic_training', "--elastic_training is not supported: it runs the program under torch.distributed.elastic"],
    ['--min_elastic_nodes=1', '--min_elastic_nodes is not supported: it only applies to --elastic_training'],
    ['--autotuning=tune', "--autotuning is not supported: it tunes DeepSpeed's training config"],
  ])('%s is refused with the reason', async (flag, message) => {
    const r = await runCli(['run', flag, 'x.py'], { cwd: dir });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`nodespeed run: ${message}`);
  });
});

describe('selection edge cases', () => {
  let hf: string;
  beforeAll(() => {
    hf = join(dir, 'hf-sel');
    writeFileSync(hf, 'worker-0 slots=4\nworker-1 slots=2\n');
  });
  const slotsOf = async (args: string[], env?: NodeJS.ProcessEnv) => {
    const r = await runCli(['run', ...args, '--dry_run', 'x.py'], { cwd: dir, ...(env ? { env } : {}) });
    expect(r.code, r.stderr).toBe(0);
    return placement(r.stdout).map((row) => `${row[1]}:${row[4]}`);
  };

  it("-i 'worker-0@worker-0:1' selects slot 1 only; -e 'worker-0@worker-0:1' drops only slot 1", async () => {
    expect(await slotsOf(['-H', hf, '-i', 'worker-0@worker-0:1'])).toEqual(['worker-0:1']);
    expect(await slotsOf(['-H', hf, '-e', 'worker-0@worker-0:1'])).toEqual(['worker-0:0', 'worker-0:2', 'worker-0:3', 'worker-1:0', 'worker-1:1']);
  });

  it.each([
    ['w slots=+2', "slots must be a positive integer for host 'w', got '+2'"],
    ['w max_slots=4 slots=2', "expected slots=N right after the host name 'w' (DeepSpeed's format), got 'max_slots=4'"],
    ['w slots=1000000', "slots=1000000 for host 'w': more than 1024 processes on one host"],
    ['w slots=99999999999999999999', "slots=99999999999999999999 for host 'w': more than 1024 processes on one host"],
    ['loc@lhost slots=1', "host name 'loc@lhost' contains '@', which --include/--exclude use as a separator"],
  ])('hostfile line %s is refused', async (line, message) => {
    const f = join(dir, 'hf-bad');
    writeFileSync(f, `${line}\n`);
    const v = await runCli(['hostfile', 'validate', '-H', f], { cwd: dir });
    expect(v.code).toBe(1);
    expect(v.stderr).toContain(`${f}:1: ${message}`);
  });

  it("hostfile add 'loc@lhost' and --slots 99999999999999999999 are refused", async () => {
    const f = join(dir, 'hf-add');
    const at = await runCli(['hostfile', 'add', 'loc@lhost', '--slots', '1', '-H', f], { cwd: dir });
    expect(at.code).toBe(1);
    expect(at.stderr).toContain("host name 'loc@lhost' contains '@'");
    const big = await runCli(['hostfile', 'add', 'h', '--slots', '99999999999999999999', '-H', f], { cwd: dir });
    expect(big.code).toBe(1);
    expect(big.stderr).toContain('--slots=99999999999999999999: more than 1024 processes on one host');
  });

  it('without a hostfile: --num_nodes 2 is an error; --num_gpus without a GPU is an error', async () => {
    const empty = mkdtempSync(join(dir, 'nohf-'));
    const nodes = await runCli(['run', '--num_nodes', '2', 'x.py'], { cwd: empty });
    expect([nodes.code, nodes.stderr]).toEqual([1, 'nodespeed run: --num_nodes 2: there is no hostfile (-H), so this machine is the only node']);
    const gpus = await runCli(['run', '--num_gpus', '1', 'x.py'], { cwd: empty, env: { PATH: '/usr/bin:/bin' } });
    expect([gpus.code, gpus.stderr]).toEqual([1, 'nodespeed run: --num_gpus 1: this machine has no GPU (none from nvidia-smi, or CUDA_VISIBLE_DEVICES is empty); use --num_cpu_workers for CPU ranks']);
  });

  it('CUDA_VISIBLE_DEVICES: the visible GPUs are the slots; --num_gpus 1 takes the first of them; a GPU that does not exist is refused', async () => {
    const empty = mkdtempSync(join(dir, 'cvd-'));
    const slots = async (cvd: string, more: string[] = []) => {
      const r = await runCli(['run', ...more, '--dry_run', PROBE, 'env'], { cwd: empty, env: gpuEnv({ CUDA_VISIBLE_DEVICES: cvd }) });
      return r.code === 0 ? placement(r.stdout).map((row) => row[4]) : r.stderr;
    };
    expect(await slots('2,3')).toEqual(['2', '3']);
    expect(await slots('2,3', ['--num_gpus', '1'])).toEqual(['2']);
    expect(await slots('GPU-a3')).toEqual(['3']);
    expect(await slots('1,7')).toBe('nodespeed run: CUDA_VISIBLE_DEVICES=1,7 names GPU 7, but this machine has GPUs 0,1,2,3 (nvidia-smi)');
    expect(await slots('2,3', ['-i', 'localhost:3'])).toEqual(['3']);
  });
});

describe('env files (.deepspeed_env as DeepSpeed reads it)', () => {
  it('values are stripped, quoted as add_export quotes them and read as its shell reads them', () => {
    const env = { HOME: '/home/u', USER: 'u' };
    expect(parseEnvFile([
      'PLAIN=value', 'SPACED = padded  ', "SINGLE='kept'", 'DOUBLE="dropped"', 'WORDS=two words', 'HOMEDIR=$HOME/data', 'BRACED=${USER}-x',
      "LITERAL='$HOME'", 'ESCAPED=\\$HOME', "MIXED=a'b c'd", 'EQ=x=y', 'EMPTY=', 'CHAIN=$PLAIN/$UNSET/end',
    ].join('\n'), '.deepspeed_env', env)).toEqual({
      PLAIN: 'value', SPACED: 'padded', SINGLE: "'kept'", DOUBLE: 'dropped', WORDS: 'two words', HOMEDIR: '/home/u/data', BRACED: 'u-x',
      LITERAL: "'/home/u'", ESCAPED: '$HOME', MIXED: "a'b c'd", EQ: 'x=y', EMPTY: '', CHAIN: 'value//end',
    });
  });

  it.each([
    ['A="two words"', 'A: DeepSpeed\'s launcher exports this value as A=""two words"", and the shell splits it into several words'],
    ['A=$(id)', 'A: DeepSpeed\'s launcher exports this value as A="$(id)", and command substitution ($(...)) is not supported'],
    ['A=`id`', 'command substitution (`...`) is not supported'],
    ['A=${B:-x}', "only $NAME and ${NAME} expansions are supported, got '${B:-x}'"],
    ['A="open', 'unterminated double quote'],
  ])('%s is an error naming file, line and key', (line, message) => {
    expect(() => parseEnvFileAssigns(`OK=1\n${line}\n`, '/w/.deepspeed_env')).toThrow(/^\/w\/\.deepspeed_env:2: A: /);
    expect(() => parseEnvFileAssigns(`OK=1\n${line}\n`, '/w/.deepspeed_env')).toThrow(message);
  });

  it('DS_ENV_FILE replaces .deepspeed_env (a name in home and cwd, or a path); a local rank expands $HOME here', async () => {
    const cwd = mkdtempSync(join(dir, 'dsenv-'));
    const home = mkdtempSync(join(dir, 'home-'));
    writeFileSync(join(cwd, '.deepspeed_env'), 'FROM_ENV_FILE=default-name\n');
    writeFileSync(join(cwd, 'custom.env'), 'FROM_ENV_FILE=$HOME/custom\n');
    const one = async (env: NodeJS.ProcessEnv) => probes((await runCli(['run', '--num_cpu_workers', '1', PROBE, 'env'], { cwd, env: { HOME: home, ...env } })).stdout)[0]!.env.FROM_ENV_FILE;
    expect(await one({})).toBe('default-name');
    expect(await one({ DS_ENV_FILE: 'custom.env' })).toBe(`${home}/custom`);
    writeFileSync(join(home, 'abs.env'), 'FROM_ENV_FILE=absolute\n');
    expect(await one({ DS_ENV_FILE: join(home, 'abs.env') })).toBe('absolute');
  });
});

describe('--enable_each_rank_log', () => {
  it('names files <yyyymmddHHMMSS>_rank<N>.log in local time, one stamp per node', async () => {
    const logs = join(dir, 'rank-logs');
    const before = Date.now();
    // A zone far from UTC, so a UTC stamp could not pass for a local one.
    const r = await runCli(['run', '--num_cpu_workers', '3', '--enable_each_rank_log', logs, PROBE, 'env'], { cwd: dir, env: { TZ: 'Asia/Kathmandu' } });
    expect(r.code, r.stderr).toBe(0);
    const files = readdirSync(logs).sort();
    expect(files.map((f) => f.replace(/^\d{14}_/, ''))).toEqual(['rank0.log', 'rank1.log', 'rank2.log']);
    expect(new Set(files.map((f) => f.slice(0, 14))).size).toBe(1);
    const stamp = files[0]!.slice(0, 14);
    const kathmandu = (ms: number) => new Date(ms + (5 * 60 + 45) * 60_000).toISOString().replace(/[-:T]/g, '').slice(0, 14);
    expect(stamp >= kathmandu(before - 1000) && stamp <= kathmandu(Date.now())).toBe(true);
    expect(readFileSync(join(logs, files[1]!), 'utf8')).toContain('stderr of rank 1');
  });
});
