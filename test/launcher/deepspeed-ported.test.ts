// DeepSpeed's own launcher tests (deepspeedai/DeepSpeed, tests/unit/launcher/*.py), case by case,
// against nodespeed's launcher. Each describe names the file and test function it comes from; where
// nodespeed answers differently on purpose, the case says so.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseHostfile, type HostEntry } from '../../src/launcher/hostfile.js';
import { selectHosts, type SelectOptions } from '../../src/launcher/select.js';
import { backendCommand, BACKENDS, splitArgs, type BackendName } from '../../src/launcher/backends.js';
import { parseCoreList } from '../../src/launcher/cores.js';
import { parseEnvFile } from '../../src/launcher/env.js';
import { requireBuild, runCli } from './cli-helpers.js';

/** DeepSpeed's tests pass {host: [slots]}; the slot lists become explicit slot ids. */
function pool(hosts: Record<string, number[]>): HostEntry[] {
  return Object.entries(hosts).map(([host, slots], i) => ({ host, slots: slots.length, slotIds: slots, attrs: {}, line: i + 1 }));
}

/** parse_resource_filter's answer as a {host: [slots]} dict. */
function filter(hosts: Record<string, number[]>, o: SelectOptions): Record<string, number[]> {
  try {
    return Object.fromEntries(selectHosts(pool(hosts), o).map((h) => [h.host, h.slots]));
  } catch (err) {
    // DeepSpeed returns {} when everything is excluded; nodespeed refuses to start nothing.
    if ((err as Error).message === 'no hosts left after --include/--exclude') return {};
    throw err;
  }
}

describe('tests/unit/launcher/test_run.py', () => {
  it('test_parser_mutual_exclusive', () => {
    expect(() => filter({}, { include: 'A', exclude: 'B' })).toThrow('--include and --exclude are mutually exclusive');
  });

  it('test_parser_local', () => {
    const hosts = { 'worker-0': [0, 1, 2, 3] };
    expect(filter(hosts, {})).toEqual(hosts);
    expect(filter(hosts, { exclude: 'worker-0:1' })).toEqual({ 'worker-0': [0, 2, 3] });
    expect(filter(hosts, { exclude: 'worker-0:1,2' })).toEqual({ 'worker-0': [0, 3] });
    expect(filter(hosts, { include: 'worker-0:1' })).toEqual({ 'worker-0': [1] });
    expect(filter(hosts, { include: 'worker-0:1,1' })).toEqual({ 'worker-0': [1] });
    expect(filter(hosts, { include: 'worker-0:1@worker-0:0,1' })).toEqual({ 'worker-0': [0, 1] });
    expect(filter(hosts, { include: 'worker-0' })).toEqual(hosts);
    expect(filter(hosts, { exclude: 'worker-0' })).toEqual({});
    expect(filter(hosts, { exclude: 'worker-0:0,1,2,3' })).toEqual({});
  });

  it('test_parser_multinode', () => {
    const hosts = { 'worker-0': [0, 1, 2, 3], 'worker-1': [0, 1, 2, 3] };
    expect(filter(hosts, {})).toEqual(hosts);
    expect(filter(hosts, { include: 'worker-1:0,3' })).toEqual({ 'worker-1': [0, 3] });
    expect(filter(hosts, { exclude: 'worker-1' })).toEqual({ 'worker-0': [0, 1, 2, 3] });
    expect(filter(hosts, { exclude: 'worker-0:0,1@worker-1:3' })).toEqual({ 'worker-0': [2, 3], 'worker-1': [0, 1, 2] });
  });

  it('test_parser_errors', () => {
    const hosts = { 'worker-0': [0, 1, 2, 3], 'worker-1': [0, 1, 2, 3] };
    expect(() => filter(hosts, { include: 'jeff' })).toThrow("--include: host 'jeff' not found in hostfile");
    expect(() => filter(hosts, { exclude: 'jeff' })).toThrow("--exclude: host 'jeff' not found in hostfile");
    expect(() => filter(hosts, { include: 'worker-1:4' })).toThrow("--include: no slot 4 on host 'worker-1' (it has slots 0,1,2,3)");
    expect(() => filter(hosts, { exclude: 'worker-1:4' })).toThrow("--exclude: no slot 4 on host 'worker-1' (it has slots 0,1,2,3)");
    expect(() => filter(hosts, { exclude: 'worker-1@worker-0:1@5' })).toThrow("--exclude: host '5' not found in hostfile");
  });

  describe('test_num_plus_parser (dsrun.main through the real CLI)', () => {
    let dir: string;
    beforeAll(() => {
      requireBuild();
      dir = mkdtempSync(join(tmpdir(), 'ds-num-'));
      writeFileSync(join(dir, 'hostfile'), 'localhost slots=1\n');
    });
    it.each([
      '--num_nodes 1 -i localhost foo.py', '--num_nodes 1 --num_gpus 1 -i localhost foo.py', '--num_gpus 1 -i localhost foo.py',
      '--num_nodes 1 -e localhost foo.py', '--num_nodes 1 --num_gpus 1 -e localhost foo.py', '--num_gpus 1 -e localhost foo.py',
    ])('nodespeed run %s', async (args) => {
      const r = await runCli(['run', ...args.split(' ')], { cwd: dir });
      expect([r.code, r.stderr]).toEqual([1, 'nodespeed run: --num_nodes/--num_gpus cannot be combined with --include/--exclude']);
    });
  });

  it('test_hostfile_good', () => {
    const r = parseHostfile(`
    worker-1 slots=2
    worker-2 slots=2

    localhost slots=1
    123.23.12.10 slots=2

    #worker-1 slots=3
    # this is a comment

    `, 'hf');
    expect(Object.fromEntries(r.map((h) => [h.host, h.slots]))).toEqual({ 'worker-1': 2, 'worker-2': 2, localhost: 1, '123.23.12.10': 2 });
  });

  it.each([
    ['duplicate host', '\n    worker-1 slots=2\n    worker-2 slots=1\n    worker-1 slots=1\n    ', "hf:4: duplicate host 'worker-1' (first defined on line 2)"],
    ['incorrect whitespace', '\n    this is bad slots=1\n    ', "hf:2: unknown token 'is' for host 'this' (expected slots=N or key=value)"],
    ['no whitespace', '\n    missingslots\n    ', "hf:2: missing slots=N for host 'missingslots'"],
    ['empty', '\n    ', 'hf: hostfile has no hosts'],
    ['mix of good/bad', '\n    worker-1 slots=2\n    this is bad slots=1\n    worker-2 slots=4\n    missingslots\n\n    ', "hf:3: unknown token 'is' for host 'this' (expected slots=N or key=value)"],
  ])('test_hostfiles_bad: %s', (_, text, message) => {
    expect(() => parseHostfile(text, 'hf')).toThrow(message);
  });
});

describe('tests/unit/launcher/test_multinode_runner.py', () => {
  // runner_info: hosts {'worker-0': 4, 'worker-1': 4}, script test_launcher.py.
  const job = (launcherArgs = '') => ({
    hosts: [{ host: 'worker-0', slots: [0, 1, 2, 3], attrs: {} }, { host: 'worker-1', slots: [0, 1, 2, 3], attrs: {} }],
    nodeFlags: [], launchId: 'id', program: ['test_launcher.py'], node: '/usr/bin/node', cwd: '/w', exports: { NCCL_DEBUG: 'INFO' },
    launcherArgs: splitArgs(launcherArgs),
  });

  it('test_pdsh_runner', () => {
    const c = backendCommand('pdsh', job());
    expect(c.argv[0]).toBe('pdsh');
    expect(c.env.PDSH_RCMD_TYPE).toBe('ssh');
    // One nodespeed per node, its node from pdsh's %n, the exports before it.
    expect(c.argv.slice(0, 7)).toEqual(['pdsh', '-S', '-N', '-f', '1024', '-w', 'worker-0,worker-1']);
    expect(c.argv[7]).toMatch(/^export NCCL_DEBUG=INFO; cd \/w; \/usr\/bin\/node \S+\/bin\/nodespeed run --no_ssh --node_rank=%n --world_info=\S+ --launch_id=id -- test_launcher\.py$/);
    expect(c.kill).toEqual(['pdsh', '-f', '1024', '-w', 'worker-0,worker-1', "pkill -TERM -f -- --launch_id=id"]);
  });

  it('test_openmpi_runner', () => {
    const c = backendCommand('openmpi', job());
    expect(c.argv.slice(0, 5)).toEqual(['mpirun', '-n', '2', '--host', 'worker-0,worker-1']);
    // DeepSpeed adds `--mca btl_tcp_if_include eth0` because its ranks are MPI processes; here mpirun only
    // starts one nodespeed per node, so no MCA default is added (--launcher_args passes any).
    expect(c.argv).not.toContain('eth0');
  });

  it.each([['-mca btl_tcp_if_include eth1'], ['--mca btl_tcp_if_include eth1']])('test_btl_nic_openmpi_runner: --launcher_args %s reaches mpirun', (a) => {
    const c = backendCommand('openmpi', job(a));
    expect(c.argv).not.toContain('eth0');
    expect(c.argv).toContain('eth1');
    expect(c.argv.join(' ')).toContain(a);
  });

  it.each([['mpich', 'mpirun'], ['impi', 'mpirun'], ['slurm', 'srun'], ['mvapich', 'mpirun_rsh']] as Array<[BackendName, string]>)('test_%s_runner', (b, bin) => {
    expect(backendCommand(b, job()).argv[0]).toBe(bin);
  });

  it('every backend starts one nodespeed per node with the job in --world_info', () => {
    for (const b of BACKENDS) {
      const argv = backendCommand(b, job()).argv.join(' ');
      expect(argv).toMatch(/bin\/nodespeed'? '?run'? '?--no_ssh/);
      expect(argv).toContain('--world_info=');
    }
  });
});

describe('tests/unit/launcher/test_user_args.py', () => {
  // DeepSpeed's script, run by python3 with the launcher's --local_rank and the user's --prompt.
  const script = 'import argparse\nparser = argparse.ArgumentParser()\nparser.add_argument("--prompt", type=str)\n' +
    'parser.add_argument("--local_rank", type=int, default=0)\nparser.add_argument("--world_size", type=int, default=1)\n' +
    'args = parser.parse_args()\nprint("ARG PARSE SUCCESS", repr(args.prompt), args.local_rank)\n';
  let dir: string;
  beforeAll(() => {
    requireBuild();
    dir = mkdtempSync(join(tmpdir(), 'ds-user-args-'));
    writeFileSync(join(dir, 'user_arg_test.py'), script);
  });
  afterAll(() => undefined);

  it.each([`"I am 6' tall"`, `'I am 72" tall'`, `'"translate English to Romanian: "'`, `I'm going to tell them "DeepSpeed is the best"`])(
    'test_user_args: --prompt %s reaches the script unchanged', async (prompt) => {
      const r = await runCli(['run', '--num_cpu_workers', '1', 'user_arg_test.py', '--prompt', prompt], { cwd: dir });
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toBe(`[localhost:0] ARG PARSE SUCCESS ${pyRepr(prompt)} 0`);
    });

  it('test_bash_string_args: arguments through xargs', async () => {
    const sh = join(dir, 'bash_script.sh');
    writeFileSync(sh, `ARGS="--prompt 'DeepSpeed is the best'"\necho \${ARGS}|xargs node ${process.cwd()}/bin/nodespeed run --num_cpu_workers 1 ${join(dir, 'user_arg_test.py')}\n`);
    const { execFileSync } = await import('node:child_process');
    const out = execFileSync('bash', [sh], { cwd: dir, encoding: 'utf8' });
    expect(out).toContain("ARG PARSE SUCCESS 'DeepSpeed is the best' 0");
  });

  // add_export: a value with a character outside [\w@%+=:,./-] is quoted; the rank gets the value itself.
  it('test_add_export_with_special_characters', () => {
    expect(parseEnvFile('SLURM_JOB_CPUS_PER_NODE=64(x2)\n', '.deepspeed_env')).toEqual({ SLURM_JOB_CPUS_PER_NODE: '64(x2)' });
  });
  it('test_add_export_no_special_characters', () => {
    expect(parseEnvFile('PYTHONPATH=/usr/local/lib/python3.9/site-packages\n', '.deepspeed_env')).toEqual({ PYTHONPATH: '/usr/local/lib/python3.9/site-packages' });
  });
});

describe('tests/unit/launcher/test_ds_arguments.py', () => {
  // The other cases there test deepspeed.add_config_arguments (the training script's --deepspeed flags), not the launcher.
  it('test_core_binding_arguments', () => {
    expect(parseCoreList('0,2-4,6,8-9')).toEqual([0, 2, 3, 4, 6, 8, 9]);
    expect(() => parseCoreList('0,2-6,5-9')).toThrow('must be in ascending order and must not overlap');
    expect(() => parseCoreList('8,2-6')).toThrow('must be in ascending order and must not overlap');
    expect(() => parseCoreList('1,6-2')).toThrow("range '6-2' ends before it starts");
  });
});

/** Python's repr() of a str, as print(repr(x)) shows it. */
function pyRepr(s: string): string {
  const q = s.includes("'") && !s.includes('"') ? '"' : "'";
  return q + s.replace(/\\/g, '\\\\').replace(new RegExp(q, 'g'), `\\${q}`) + q;
}
