// Core binding of `launch`: a deployment group's `cpus` and --bind_cores_to_rank / --bind_core_list.
// The split per host, the refusals naming the key's line or the flag, --dry-run's listing, and one
// real launch whose workers are read back from /proc: every thread of each worker runs on its cores,
// and a pinned CPU worker defaults to one thread per core.
import { spawnSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { sshdAvailable, startSshd } from '../helpers/sshd.js';

import { LayoutError } from '../../src/coordinator/layout.js';
import { bindingScript, formatCoreList, onlineCores, planCoreBindings } from '../../src/launcher/cores.js';
import { BIN, PY_TINY, launch, reference, root, workerProcesses } from '../serving/helpers.js';
import type { PyTinyCase } from '../serving/helpers.js';
import { workdir } from '../hetero/helpers.js';

const w = workdir();
afterAll(() => w.remove());

describe('planCoreBindings', () => {
  const slots = [
    { host: 'a', isLocal: true, group: 0 }, { host: 'a', isLocal: true, group: 1 }, { host: 'a', isLocal: true, group: 1 },
    { host: 'b', isLocal: false, group: 1 }, { host: 'a', isLocal: true },
  ];
  const online = Array.from({ length: 16 }, (_, i) => i);

  it('splits a group\'s cpus between its ranks on each host; the flag\'s cores between the others there, spares included', () => {
    const b = planCoreBindings(slots, [{ name: 'gpu' }, { name: 'cpu', cpus: [8, 9, 10, 11, 12, 13, 14, 15] }],
      { bindCores: true, bindCoreList: [0, 1, 2, 3] }, online);
    expect(b.map((x) => (x && 'cores' in x ? x.cores : x))).toEqual([[0, 1], [8, 9, 10, 11], [12, 13, 14, 15], [8, 9, 10, 11, 12, 13, 14, 15], [2, 3]]);
    // No list: a share of the host's physical cores, counted there.
    const shares = planCoreBindings(slots, [{ name: 'gpu' }, { name: 'cpu' }], { bindCores: true }, online);
    expect(shares.map((x) => x && 'share' in x && x.share)).toEqual([
      { size: 4, index: 0 }, { size: 4, index: 1 }, { size: 4, index: 2 }, { size: 1, index: 0 }, { size: 4, index: 3 }]);
    expect(planCoreBindings(slots, [{ name: 'gpu' }, { name: 'cpu' }], { bindCores: false }, online)).toEqual([undefined, undefined, undefined, undefined, undefined]);
  });

  it('refuses a list too short for the ranks, or naming a core this machine lacks (a remote host checks its own)', () => {
    const refused = (f: () => unknown) => {
      try {
        f();
      } catch (err) {
        return [err instanceof LayoutError ? [err.group, err.key] : null, (err as Error).message];
      }
      throw new Error('accepted');
    };
    expect(refused(() => planCoreBindings(slots, [{ name: 'gpu' }, { name: 'cpu', cpus: [8] }], { bindCores: false }, online)))
      .toEqual([[1, 'cpus'], 'group cpu: 1 core(s) cannot give each of the 2 rank(s) of the group on a one']);
    expect(refused(() => planCoreBindings(slots, [{ name: 'gpu', cpus: [15, 16] }, { name: 'cpu' }], { bindCores: false }, online)))
      .toEqual([[0, 'cpus'], 'group gpu: core 16 is not a core of this machine (a: 0-15)']);
    expect(refused(() => planCoreBindings(slots, [{ name: 'gpu' }, { name: 'cpu' }], { bindCores: true, bindCoreList: [0, 1, 2] }, online)))
      .toEqual([null, '--bind_core_list: 3 core(s) cannot give each of the 4 rank(s) on a one']);
    // Host b is remote: its cores are checked there, when its worker starts.
    expect(planCoreBindings([{ host: 'b', isLocal: false, group: 0 }], [{ name: 'cpu', cpus: [64] }], { bindCores: false }, online)[0]).toEqual(
      { what: 'group cpu cpus', cores: [64] });
  });
});

describe('bindingScript', () => {
  const sh = (script: string) => spawnSync('/bin/sh', ['-c', `${script}\nexec "$@"`, 'rank', '/bin/sh', '-c', 'echo $NODESPEED_BOUND_CORES $OMP_NUM_THREADS'], { encoding: 'utf8' });

  it('runs the program pinned with its share\'s size exported; a core the host lacks is refused there, naming the key as written', () => {
    const ok = sh(bindingScript({ what: 'x', cores: [onlineCores()[0]!] }));
    expect([ok.status, ok.stdout]).toEqual([0, '1 1\n']);
    const what = 'deploy "$(id)" `id`.yaml:4: groups[0].cpus';
    const lacking = sh(bindingScript({ what, cores: [0, 65000] }));
    expect(lacking.status).toBe(1);
    expect(lacking.stdout).toBe('');
    expect(lacking.stderr).toMatch(new RegExp(`^nodespeed: ${what.replace(/[$()`.[\]]/g, '\\$&')}: core 65000 cannot be used: \\S+ has cores 0-\\d+\n$`));
  });
});

describe('launch with core binding', () => {
  const dry = (yaml: string, args: string[] = []) => {
    const file = w.file('dry.yaml', yaml);
    return spawnSync(process.execPath, [BIN, 'launch', '--config', file, '--dry-run', ...args], { encoding: 'utf8', cwd: root });
  };
  const two = (cpus: string) => `model: ${PY_TINY}\ngroups:\n  - name: a\n    device: cpu\n  - name: b\n    device: cpu\n    replicas: 2\n    cpus: ${cpus}\n`;

  it('--dry-run lists each pinned rank\'s cores; a bad list is refused at its line or by its flag before anything starts', () => {
    const ok = dry(two('0'), ['--bind_cores_to_rank', '--bind_core_list', '0']);
    // Two ranks of b on one core: refused at the key's line.
    expect(ok.status).not.toBe(0);
    expect(ok.stderr).toContain(`${join(w.dir, 'dry.yaml')}:8: groups[1].cpus: 1 core(s) cannot give each of the 2 rank(s) of the group on localhost one`);
    const shown = dry(two('0-1'), ['--bind_cores_to_rank', '--bind_core_list', '0-1', '--spares', '1']);
    expect(shown.status, shown.stderr).toBe(0);
    expect(shown.stdout).toContain('core binding (taskset -c, else numactl -C; a CPU worker\'s threads default to its cores):\n' +
      '  rank 0 @localhost [a]: cores 0\n  rank 1 @localhost [b]: cores 0\n  rank 2 @localhost [b]: cores 1\n  rank 3 @localhost [spare]: cores 1\n');
    const lacking = dry(two('0,65000'));
    expect(lacking.status).not.toBe(0);
    expect(lacking.stderr).toContain(`${join(w.dir, 'dry.yaml')}:8: groups[1].cpus: core 65000 is not a core of this machine (localhost: `);
    expect(dry(two('1-0')).stderr).toContain(`${join(w.dir, 'dry.yaml')}:8: groups[1].cpus: range '1-0' ends before it starts`);
    const flags = spawnSync(process.execPath, [BIN, 'launch', '--model', PY_TINY, '--device', 'cpu', '--bind_core_list', '0', '--dry-run'], { encoding: 'utf8', cwd: root });
    expect(flags.status).not.toBe(0);
    expect(flags.stderr).toContain('--bind_core_list only applies with --bind_cores_to_rank');
  });

  /** The workers the launch process started (its children running the worker), by RANK. */
  function workersOf(pid: number): Map<number, number> {
    const out = new Map<number, number>();
    for (const e of readdirSync('/proc').filter((x) => /^\d+$/.test(x))) {
      try {
        const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
        if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) !== pid) continue;
        if (!readFileSync(`/proc/${e}/cmdline`, 'utf8').includes('worker/main.js')) continue;
        out.set(Number(/(?:^|\0)RANK=(\d+)/.exec(readFileSync(`/proc/${e}/environ`, 'utf8'))![1]), Number(e));
      } catch {
        /* gone */
      }
    }
    return out;
  }
  const allowed = (path: string) => /Cpus_allowed_list:\s*(\S+)/.exec(readFileSync(path, 'utf8'))![1];

  it.skipIf(onlineCores().length < 2)('pins every thread of each worker to its cores (a group\'s cpus, --bind_cores_to_rank for the others); threads default to their count', async () => {
    const [first, second] = onlineCores();
    const both = `${first},${second}`;
    // a: its group's one core; b: the flag's two cores; d: the same two cores as b, threads: 1.
    const config = w.file('pin.yaml', `model: ${PY_TINY}\ngroups:\n  - name: a\n    device: cpu\n    cpus: ${second}\n  - name: b\n    device: cpu\n` +
      `  - name: d\n    device: cpu\n    cpus: ${both}\n    threads: 1\n`);
    const c = await launch(PY_TINY, ['--config', config, '--bind_cores_to_rank', '--bind_core_list', both]);
    try {
      const workers = workersOf(c.proc.pid!);
      expect([...workers.keys()].sort()).toEqual([0, 1, 2]);
      const tasks = new Map<number, number>();
      for (const [rank, cores, bound] of [[0, `${second}`, 1], [1, formatCoreList([first!, second!]), 2], [2, formatCoreList([first!, second!]), 2]] as const) {
        const pid = workers.get(rank)!;
        // Every thread: V8's, libuv's, gRPC's and the CPU backend's pool, started after the pinning.
        const threads = readdirSync(`/proc/${pid}/task`);
        tasks.set(rank, threads.length);
        expect(new Set(threads.map((t) => allowed(`/proc/${pid}/task/${t}/status`)))).toEqual(new Set([cores]));
        const env = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0');
        expect(env).toContain(`NODESPEED_BOUND_CORES=${bound}`);
        expect(env).toContain(`OMP_NUM_THREADS=${bound}`);
      }
      // b computes on 2 threads (its cores), d on the 1 it asked for: the CPU pool's one extra thread is the only difference.
      expect(tasks.get(1)! - tasks.get(2)!).toBe(1);
      // And each serves the reference's greedy tokens.
      const ref = reference<PyTinyCase>(PY_TINY).cases[0]!;
      const outs = await Promise.all([0, 1, 2].map(() => c.client.complete({ promptIds: ref.ids, maxTokens: 8, ignoreEos: true })));
      for (const o of outs) expect(o.tokenIds).toEqual(ref.greedy_48.slice(0, 8));
    } finally {
      await c.stop();
    }
  });
});

describe.skipIf(!sshdAvailable())('launch with core binding on a remote host', () => {
  it('the remote host refuses a core it lacks when its worker starts, naming the file, line and key; nothing is left running', async () => {
    const sshd = await startSshd({ hosts: ['127.0.0.2'] });
    try {
      w.file('hostfile-remote', '127.0.0.2 slots=1 device=cpu\n');
      const config = w.file('remote.yaml', `model: ${PY_TINY}\nhostfile: hostfile-remote\ngroups:\n  - name: far\n    device: cpu\n    cpus: 65000\n`);
      const r = spawnSync(process.execPath, [BIN, 'launch', '--config', config, '--port', '0', '--http-port', '0', '--bind', '127.0.0.1', '--no-progress'],
        { encoding: 'utf8', cwd: root, env: { ...process.env, ...sshd.env }, timeout: 90_000 });
      expect(r.status).not.toBe(0);
      expect(r.stdout).not.toContain('nodespeed ready');
      expect(r.stderr).toContain(`nodespeed: ${config}:6: groups[0].cpus: core 65000 cannot be used: `);
      expect(r.stderr).toMatch(/rank 0 on 127\.0\.0\.2 exited with code 1 before the cluster was ready/);
      expect(workerProcesses()).toEqual([]);
    } finally {
      await sshd.stop();
    }
  }, 120_000);
});
