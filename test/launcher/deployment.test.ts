// The deployment file of `launch --config` without starting anything: the documented example (docs/DEPLOYMENT.md) as
// written, every refusal naming the file, the line and the key, placement of mixed groups over a
// hostfile of GPU and CPU-only hosts (device= attributes, hosts:, slots:), and the CLI's --dry-run
// with the flags replacing a one-group file's keys.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { localDeploymentHosts, planDeployment } from '../../src/launcher/deploy-plan.js';
import type { GroupOptions } from '../../src/launcher/deploy-plan.js';
import { DeploymentError, parseDeployment } from '../../src/launcher/deployment.js';
import { parseHostfile, planWorld, selectHosts } from '../../src/launcher/index.js';
import { LayoutError } from '../../src/coordinator/layout.js';
import { ClassTable } from '../../src/coordinator/classes.js';
import { loadModelConfig } from '../../src/model/config.js';
import { BIN, PY_TINY, root } from '../serving/helpers.js';

const EXAMPLE = `model: /models/llama-3.1-8b
hostfile: ./hostfile        # optional
groups:
  - name: gpu
    device: cuda
    tp: 2
    replicas: 1
    precision: bf16
  - name: cpu
    device: cpu
    tp: 1
    replicas: 2
    precision: int8
    threads: 8
classes:
  realtime: { groups: [gpu], ttft_p99_ms: 300 }
  standard: { groups: [gpu, cpu] }
  batch: { groups: [cpu, gpu], stream_interval_ms: 50 }
spares: 0
`;

function refusal(text: string): string {
  try {
    parseDeployment(text, 'deploy.yaml', '/etc');
  } catch (err) {
    expect(err).toBeInstanceOf(DeploymentError);
    return (err as Error).message;
  }
  throw new Error('accepted');
}

describe('deployment file', () => {
  it('reads the example as written', () => {
    const d = parseDeployment(EXAMPLE, 'deploy.yaml', '/srv/deploy');
    expect(d.model).toBe('/models/llama-3.1-8b');
    expect(d.hostfile).toBe('/srv/deploy/hostfile');
    expect(d.spares).toBe(0);
    expect(d.groups).toEqual([
      { name: 'gpu', device: 'cuda', tp: 2, pp: 1, replicas: 1, precision: 'bf16', kvCacheDtype: 'auto', threads: 0 },
      { name: 'cpu', device: 'cpu', tp: 1, pp: 1, replicas: 2, precision: 'int8', kvCacheDtype: 'auto', threads: 8 },
    ]);
    expect(d.classes).toEqual([
      { name: 'realtime', priority: -100, groups: ['gpu'], ttftP99Ms: 300 },
      { name: 'standard', priority: 0, groups: ['gpu', 'cpu'] },
      { name: 'batch', priority: 100, groups: ['cpu', 'gpu'], streamIntervalMs: 50 },
    ]);
    expect(parseDeployment(EXAMPLE.replace('stream_interval_ms: 50', 'stream_interval_ms: 0'), 'deploy.yaml', '/etc').classes![2]!.streamIntervalMs).toBe(0);
    expect(parseDeployment(EXAMPLE.replace('stream_interval_ms: 50', 'stream_interval_ms: 10000'), 'deploy.yaml', '/etc').classes![2]!.streamIntervalMs).toBe(10000);
    const excl = (v: string) => parseDeployment(EXAMPLE.replace('ttft_p99_ms: 300 }', `ttft_p99_ms: 300, exclusive_prefill: ${v} }`), 'deploy.yaml', '/etc');
    expect(excl('true').classes![0]).toEqual({ name: 'realtime', priority: -100, groups: ['gpu'], ttftP99Ms: 300, exclusivePrefill: true });
    expect(excl('false').classes![0]!.exclusivePrefill).toBe(false);
    // It reaches the class table the router submits from.
    expect(new ClassTable(excl('true').classes!, ['gpu', 'cpu']).get('realtime')!.exclusivePrefill).toBe(true);
    expect(d.classes!.some((c) => 'exclusivePrefill' in c)).toBe(false);  // absent: false
    const classes = new ClassTable(d.classes!, d.groups.map((g) => g.name));
    expect([-5, 0, 99, 100, 7000, -1000].map((p) => classes.forValue(p).name)).toEqual(['realtime', 'standard', 'standard', 'batch', 'batch', 'realtime']);
    expect(d.lineOf('groups[1].threads')).toBe(14);
    expect(parseDeployment(EXAMPLE.replace('threads: 8', 'cpus: 8-11,14'), 'deploy.yaml', '/etc').groups[1]!.cpus).toEqual([8, 9, 10, 11, 14]);
    expect(parseDeployment(EXAMPLE.replace('threads: 8', 'cpus: 3'), 'deploy.yaml', '/etc').groups[1]!.cpus).toEqual([3]);
    expect(d.lineOf('groups[1].kv_blocks')).toBe(9);   // not in the file: the group's line
  });

  it.each([
    ['model: m\ngroups:\n  - name: a\n    tp: 2\n    gpus: 2\n', 'deploy.yaml:5: groups[0].gpus: unknown key (did you mean tp or replicas?)'],
    ['model: m\ngroups:\n  - name: a\n    tp: 2\n    colour: red\n', 'deploy.yaml:5: groups[0].colour: unknown key; the keys here are name, device, tp, pp, replicas, precision, kv_cache_dtype, threads, cpus, hosts, slots, kv_blocks, max_batch_tokens, max_seqs'],
    ['model: m\ngroup:\n  - name: a\n', 'deploy.yaml:2: group: unknown key (did you mean groups?)'],
    ['model: m\ngroups:\n  - name: a\n    count: 2\n', 'deploy.yaml:4: groups[0].count: unknown key (did you mean replicas?)'],
    ['model: m\ngroups:\n  - name: a\n    tp: 0\n', 'deploy.yaml:4: groups[0].tp: must be an integer >= 1 (got 0)'],
    ['model: m\ngroups:\n  - name: a\n    replicas: two\n', 'deploy.yaml:4: groups[0].replicas: must be an integer >= 1 or auto (got "two")'],
    ['model: m\ngroups:\n  - name: a\n    precision: int4\n', 'deploy.yaml:4: groups[0].precision: must be one of auto, f32, bf16, f16, int8, fp8 (got "int4")'],
    ['model: m\ngroups:\n  - name: a\n    device: tpu\n', 'deploy.yaml:4: groups[0].device: must be one of auto, cpu, cuda (got "tpu")'],
    ['model: m\ngroups:\n  - name: a\n    device: cuda\n    threads: 8\n', 'deploy.yaml:5: groups[0].threads: applies to cpu groups (a cuda worker computes on its GPU)'],
    ['model: m\ngroups:\n  - name: a\n    cpus: 3-1\n', 'deploy.yaml:4: groups[0].cpus: range \'3-1\' ends before it starts'],
    ['model: m\ngroups:\n  - name: a\n    cpus: 0,2-4,3\n', 'deploy.yaml:4: groups[0].cpus: ranges must be in ascending order and must not overlap (\'3\')'],
    ['model: m\ngroups:\n  - name: a\n    cpus: 0-3 8\n', 'deploy.yaml:4: groups[0].cpus: \'0-3 8\' is not a core number or a range a-b'],
    ['model: m\ngroups:\n  - name: a\n    cpus: [0, 1]\n', 'deploy.yaml:4: groups[0].cpus: must be a core list such as 0-3,8 (got a collection)'],
    ['model: m\ngroups:\n  - name: a\n    hosts: [x]\n    slots: "x:0"\n', 'deploy.yaml:5: groups[0].slots: give hosts or slots, not both'],
    ['model: m\ngroups:\n  - name: a\n  - name: a\n', 'deploy.yaml:4: groups[1].name: "a" is groups[0]\'s name too'],
    ['model: m\ngroups:\n  - tp: 1\n', 'deploy.yaml:3: groups[0]: needs a name'],
    ['model: m\ngroups: []\n', 'deploy.yaml:2: groups: must be a non-empty list of groups'],
    ['model: m\n', 'deploy.yaml: groups: missing: a deployment needs at least one replica group'],
    ['model: m\ngroups:\n  - name: gpu\nclasses:\n  realtime: { groups: [gpu] }\n  batch:\n    groups:\n      - gpu\n      - cpu\n',
      'deploy.yaml:9: classes.batch.groups[1]: no group named "cpu" (groups: gpu)'],
    ['model: m\ngroups:\n  - name: gpu\nclasses:\n  interactive: { groups: [gpu] }\n',
      'deploy.yaml:5: classes.interactive: needs a priority (an integer; lower is more urgent: realtime is -100, standard 0, batch 100)'],
    ['model: m\ngroups:\n  - name: gpu\nclasses:\n  realtime: { groups: [gpu] }\n  urgent: { groups: [gpu], priority: -100 }\n',
      'deploy.yaml:6: classes.urgent.priority: priority -100 is realtime\'s too: each class needs its own'],
    ['model: m\ngroups:\n  - name: gpu\nclasses:\n  realtime: { groups: [gpu], ttft_p99_ms: 0 }\n', 'deploy.yaml:5: classes.realtime.ttft_p99_ms: must be a number > 0 (got 0)'],
    ['model: m\ngroups:\n  - name: gpu\nclasses:\n  realtime: { groups: [gpu], ttft_ms: 5 }\n', 'deploy.yaml:5: classes.realtime.ttft_ms: unknown key (did you mean ttft_p99_ms?)'],
    ['model: m\ngroups:\n  - name: gpu\nclasses:\n  batch:\n    groups: [gpu]\n    stream_interval_ms: -1\n',
      'deploy.yaml:7: classes.batch.stream_interval_ms: must be an integer from 0 to 10000 (got -1)'],
    ['model: m\ngroups:\n  - name: gpu\nclasses:\n  batch: { groups: [gpu], stream_interval_ms: 2.5 }\n',
      'deploy.yaml:5: classes.batch.stream_interval_ms: must be an integer from 0 to 10000 (got 2.5)'],
    ['model: m\ngroups:\n  - name: gpu\nclasses:\n  batch: { groups: [gpu], stream_interval_ms: 10001 }\n',
      'deploy.yaml:5: classes.batch.stream_interval_ms: must be an integer from 0 to 10000 (got 10001)'],
    ['model: m\ngroups:\n  - name: gpu\nclasses:\n  batch: { groups: [gpu], stream_interval_ms: "50" }\n',
      'deploy.yaml:5: classes.batch.stream_interval_ms: must be an integer from 0 to 10000 (got "50")'],
    ['model: m\ngroups:\n  - name: gpu\nclasses:\n  batch: { groups: [gpu], stream_interval: 50 }\n',
      'deploy.yaml:5: classes.batch.stream_interval: unknown key (did you mean stream_interval_ms?)'],
    ['model: m\ngroups:\n  - name: gpu\nclasses:\n  realtime:\n    groups: [gpu]\n    exclusive_prefill: yes\n',
      'deploy.yaml:7: classes.realtime.exclusive_prefill: must be true or false (got "yes")'],
    ['model: m\ngroups:\n  - name: gpu\nclasses:\n  realtime: { groups: [gpu], exclusive_prefill: 1 }\n',
      'deploy.yaml:5: classes.realtime.exclusive_prefill: must be true or false (got 1)'],
    ['model: m\ngroups:\n  - name: gpu\nclasses:\n  realtime: { groups: [gpu], exclusive_prefill: [true] }\n',
      'deploy.yaml:5: classes.realtime.exclusive_prefill: must be true or false (got a collection)'],
    ['model: m\ngroups:\n  - name: gpu\nclasses:\n  realtime: { groups: [gpu], exclusive: true }\n',
      'deploy.yaml:5: classes.realtime.exclusive: unknown key (did you mean exclusive_prefill?)'],
    ['model: m\ngroups:\n  - name: gpu\nspares: -1\n', 'deploy.yaml:4: spares: must be an integer >= 0 (got -1)'],
    ['model: m\nmodel: n\ngroups:\n  - name: gpu\n', 'deploy.yaml:2: not valid YAML: Map keys must be unique'],
    ['', 'deploy.yaml: is empty'],
  ])('refuses %j', (text, message) => {
    expect(refusal(text)).toBe(message);
  });
});

const config = loadModelConfig(PY_TINY);
const cpu = (name: string, replicas: number | 'auto', o: Partial<GroupOptions> = {}): GroupOptions =>
  ({ name, tp: 1, pp: 1, replicas, serving: { device: 'cpu', dtype: 'auto', quantize: 'none', kvCacheDtype: 'auto', threads: 1, kvBlocks: 0, maxBatchTokens: 256, maxSeqs: 256 }, ...o });
const gpu = (name: string, tp: number, replicas: number | 'auto'): GroupOptions =>
  ({ name, tp, pp: 1, replicas, serving: { device: 'cuda', dtype: 'bf16', quantize: 'none', kvCacheDtype: 'auto', threads: 0, kvBlocks: 0, maxBatchTokens: 8192, maxSeqs: 256 } });
const world = (text: string) => planWorld(selectHosts(parseHostfile(text, 'hf')));
const where = (p: ReturnType<typeof planDeployment>) => p.layout.ranks.map((r) => `${r.replica}@${r.host}:${r.localRank}`);

describe('placing groups over a hostfile', () => {
  it('cuda groups on GPU hosts, cpu groups on device=cpu hosts first, the job\'s ranks in layout order, spares after', () => {
    const p = world('cpu-a slots=2 device=cpu\ngpu-a slots=4\ncpu-b slots=2 device=cpu\n');
    const plan = planDeployment(config, p, [gpu('gpu', 2, 1), cpu('cpu', 3)], 1, false);
    expect(plan.layout.groups.map((g) => [g.name, g.replicas])).toEqual([['gpu', [0]], ['cpu', [1, 2, 3]]]);
    expect(where(plan)).toEqual(['0@gpu-a:0', '0@gpu-a:1', '1@cpu-a:0', '2@cpu-a:1', '3@cpu-b:0']);
    // The job: layout ranks first (RANK = layout rank), the spare (the first free slot) last.
    expect(plan.placement.ranks.map((r) => [r.rank, r.host, r.gpu])).toEqual([
      [0, 'gpu-a', 0], [1, 'gpu-a', 1], [2, 'cpu-a', null], [3, 'cpu-a', null], [4, 'cpu-b', null], [5, 'gpu-a', 2]]);
  });

  it('hosts: and slots: restrict a group; unmarked slots serve a cpu group when no device=cpu slot is left', () => {
    const p = world('localhost slots=2 device=cpu\n127.0.0.2 slots=2 device=cpu\n127.0.0.3 slots=2\n');
    const plan = planDeployment(config, p, [cpu('fast', 1, { tp: 2, hosts: ['127.0.0.2'] }), cpu('slow', 'auto', { slots: 'localhost:1@127.0.0.3' })], 0, false);
    expect(where(plan)).toEqual(['0@127.0.0.2:0', '0@127.0.0.2:1', '1@localhost:1', '2@127.0.0.3:0', '3@127.0.0.3:1']);
    const more = planDeployment(config, p, [cpu('a', 4), cpu('b', 'auto')], 0, false);
    expect(where(more)).toEqual(['0@localhost:0', '1@localhost:1', '2@127.0.0.2:0', '3@127.0.0.2:1', '4@127.0.0.3:0', '5@127.0.0.3:1']);
  });

  it('without a hostfile: this machine\'s GPU for the cuda group, CPU worker processes (no GPU visible) for the cpu groups and spares', () => {
    const groups = [gpu('gpu', 1, 1), cpu('cpu', 2), cpu('small', 1)];
    const p = planWorld(localDeploymentHosts(groups, 1, [0]));
    const plan = planDeployment(config, p, groups, 1, false);
    expect(where(plan)).toEqual(['0@localhost:0', '1@localhost:0', '2@localhost:1', '3@localhost:2']);
    expect(plan.placement.ranks.map((r) => [r.rank, r.gpu, r.attrs.device, r.localWorldSize])).toEqual([
      [0, 0, 'cuda', 1], [1, null, 'cpu', 4], [2, null, 'cpu', 4], [3, null, 'cpu', 4], [4, null, 'cpu', 4]]);
    expect(() => localDeploymentHosts([gpu('gpu', 1, 1)], 0, [])).toThrow(/group gpu: device cuda, and this machine has no GPU/);
    expect(() => localDeploymentHosts([cpu('cpu', 'auto')], 0, [])).toThrow(/group cpu: replicas auto needs a hostfile/);
  });

  it('refuses impossible layouts naming the group and its key', () => {
    const p = world('gpu-a slots=2\ncpu-a slots=2 device=cpu\n');
    const layoutError = (f: () => unknown) => {
      try {
        f();
      } catch (err) {
        expect(err).toBeInstanceOf(LayoutError);
        const e = err as LayoutError;
        return [e.group, e.key, e.message];
      }
      throw new Error('accepted');
    };
    expect(layoutError(() => planDeployment(config, p, [gpu('gpu', 3, 1)], 0, false)))
      .toEqual([0, 'tp', 'group gpu: tp 3 does not divide the model\'s 8 attention heads']);
    expect(layoutError(() => planDeployment(config, p, [gpu('gpu', 2, 1), cpu('cpu', 3)], 0, false)))
      .toEqual([1, 'replicas', 'group cpu: replicas 3 x pp 1 x tp 1 = 3 workers, the hosts have 2 slots free for cpu']);
    expect(layoutError(() => planDeployment(config, p, [cpu('cpu', 1, { hosts: ['gpu-b'] })], 0, false))[1]).toBe('hosts');
    expect(layoutError(() => planDeployment(config, p, [cpu('cpu', 1, { slots: 'cpu-a:7' })], 0, false)))
      .toEqual([0, 'slots', 'group cpu: slots: host cpu-a has no slot "7" (it has 0,1)']);
  });
});

describe('nodespeed launch --config --dry-run', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nodespeed-deploy-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const run = (yaml: string, args: string[] = [], hostfile?: string) => {
    writeFileSync(join(dir, 'deploy.yaml'), yaml);
    if (hostfile) writeFileSync(join(dir, 'hostfile'), hostfile);
    return spawnSync(process.execPath, [BIN, 'launch', '--config', join(dir, 'deploy.yaml'), '--dry-run', ...args], { encoding: 'utf8', cwd: root });
  };

  it('prints every group\'s placement and memory per rank; a one-group file takes the group flags; a bad key names its line', () => {
    const mixed = run(`model: ${PY_TINY}\nhostfile: ./hostfile\ngroups:\n  - name: fast\n    device: cpu\n    tp: 2\n    hosts: [n2]\n` +
      '  - name: slow\n    device: cpu\n    replicas: auto\n    precision: f32\n    threads: 1\nclasses:\n  batch: { groups: [slow, fast], stream_interval_ms: 200 }\n  realtime: { groups: [fast], ttft_p99_ms: 250, exclusive_prefill: true }\n',
      [], 'n1 slots=2 device=cpu\nn2 slots=2 device=cpu\n');
    expect(mixed.status, mixed.stderr).toBe(0);
    expect(mixed.stdout).toContain('group fast (cpu bf16/f32/f32): 1 replica(s) x pp 1 x tp 2');
    expect(mixed.stdout).toContain('replica 0 [fast]: stage 0 layers 0-5: rank 0 (tp 0) @n2, rank 1 (tp 1) @n2');
    expect(mixed.stdout).toContain('group slow (cpu f32/f32/f32, 1 thread): 2 replica(s) x pp 1 x tp 1');
    expect(mixed.stdout.match(/^ {2}rank \d @n\d replica \d .* total \d+\.\d+ GiB$/gm)).toHaveLength(4);
    expect(mixed.stdout).toContain('classes: realtime (priority -100, TTFT p99 <= 250 ms, exclusive prefill) -> fast; batch (priority 100, a stream message per 200 ms) -> slow, fast');
    const one = `model: ${PY_TINY}\ngroups:\n  - name: only\n    device: cpu\n    replicas: 1\n`;
    const flags = run(one, ['--tp', '2', '--replicas', '2']);
    expect(flags.status, flags.stderr).toBe(0);
    expect(flags.stdout).toContain('group only (cpu bf16/f32/f32): 2 replica(s) x pp 1 x tp 2');
    // --quantize replaces the precision of the one group (as --dtype does); each group of several names its own.
    const int8 = run(one, ['--quantize', 'int8']);
    expect(int8.status, int8.stderr).toBe(0);
    expect(int8.stdout).toContain('group only (cpu int8/f32/f32): 1 replica(s) x pp 1 x tp 1');
    const two = run(`${one}  - name: other\n    device: cpu\n`, ['--tp', '2', '--kv-cache-dtype', 'fp8']);
    expect(two.status).not.toBe(0);
    expect(two.stderr).toContain('--tp, --kv-cache-dtype: the flags describe one group, and');
    expect(two.stderr).toContain('set tp, kv_cache_dtype in the group instead');
    // What a CPU worker cannot compute is refused at the group's key.
    const fp8 = run(`model: ${PY_TINY}\ngroups:\n  - name: a\n    device: cpu\n    precision: fp8\n`);
    expect(fp8.status).not.toBe(0);
    expect(fp8.stderr).toContain(`${join(dir, 'deploy.yaml')}:5: groups[0].precision: fp8: needs a CUDA GPU with FP8 tensor cores`);
    const kv = run(`model: ${PY_TINY}\ngroups:\n  - name: a\n    device: cpu\n    kv_cache_dtype: fp8\n`);
    expect(kv.status).not.toBe(0);
    expect(kv.stderr).toContain(`${join(dir, 'deploy.yaml')}:5: groups[0].kv_cache_dtype: fp8: needs a CUDA GPU with FP8 tensor cores`);
    const bad = run(`model: ${PY_TINY}\ngroups:\n  - name: a\n    device: cpu\n    tp: 3\n`);
    expect(bad.status).not.toBe(0);
    expect(bad.stderr).toContain(`${join(dir, 'deploy.yaml')}:5: groups[0].tp: tp 3 does not divide the model's 8 attention heads`);
    const typo = run(`model: ${PY_TINY}\ngroups:\n  - name: a\n    devcie: cpu\n`);
    expect(typo.stderr).toContain(`${join(dir, 'deploy.yaml')}:4: groups[0].devcie: unknown key (did you mean device?)`);
  });

  it('launch (not a dry run) refuses a bad file with its line before starting anything', () => {
    const launchOnly = (yaml: string) => {
      writeFileSync(join(dir, 'launch.yaml'), yaml);
      return spawnSync(process.execPath, [BIN, 'launch', '--config', join(dir, 'launch.yaml'), '--port', '0', '--no-progress'],
        { encoding: 'utf8', cwd: root, timeout: 60_000 });
    };
    const missing = launchOnly(`model: ${PY_TINY}\ngroups:\n  - name: gpu\n    device: cpu\nclasses:\n  realtime: { groups: [gpu, cpu] }\n`);
    expect(missing.status).not.toBe(0);
    expect(missing.stderr).toContain(`${join(dir, 'launch.yaml')}:6: classes.realtime.groups[1]: no group named "cpu" (groups: gpu)`);
    const interval = launchOnly(`model: ${PY_TINY}\ngroups:\n  - name: gpu\n    device: cpu\nclasses:\n  batch:\n    groups: [gpu]\n    stream_interval_ms: 20000\n`);
    expect(interval.status).not.toBe(0);
    expect(interval.stderr).toContain(`${join(dir, 'launch.yaml')}:8: classes.batch.stream_interval_ms: must be an integer from 0 to 10000 (got 20000)`);
    writeFileSync(join(dir, 'hostfile4'), 'n1 slots=2 device=cpu\nn2 slots=2 device=cpu\n');
    const tooMany = launchOnly(`model: ${PY_TINY}\nhostfile: hostfile4\ngroups:\n  - name: a\n    device: cpu\n    replicas: 9\n`);
    expect(tooMany.status).not.toBe(0);
    expect(tooMany.stderr).toContain(`${join(dir, 'launch.yaml')}:6: groups[0].replicas: replicas 9 x pp 1 x tp 1 = 9 workers, the hosts have 4 slots free for cpu`);
    expect(tooMany.stdout).not.toContain('nodespeed ready');
  });
});
