// Where spares go (--spares) and the new flags' errors: spares use the slots the layout leaves free
// (--replicas auto sets their slots aside first), extra local processes when every worker is a
// local CPU worker, and otherwise a clear error naming --spares. No process is started except the
// CLI's --dry-run.
import { spawnSync } from 'node:child_process';

import { describe, expect, it } from 'vitest';

import { planWithSpares } from '../../src/launcher/cluster.js';
import { loadModelConfig } from '../../src/model/config.js';
import { defaultLocalHosts, planWorld } from '../../src/launcher/index.js';
import { BIN, PY_TINY, root } from '../serving/helpers.js';

const config = loadModelConfig(PY_TINY);
const opts = (tp: number, replicas: number | 'auto' = 'auto') => ({ tp, pp: 1, replicas, allowTpAcrossHosts: false });
const hosts = (...spec: [string, number][]) => spec.map(([host, n]) => ({ host, slots: Array.from({ length: n }, (_, i) => i), attrs: { device: 'cpu' } }));

describe('planWithSpares', () => {
  it('with --replicas auto, sets the spares\' slots aside before counting replicas; spares are the last slots', () => {
    const { layout, placement } = planWithSpares(config, planWorld(hosts(['node-a', 4], ['node-b', 3])), opts(2), 1, 'cpu');
    expect(layout.replicas).toBe(3);
    expect(placement.ranks.map((r) => r.host)).toEqual(['node-a', 'node-a', 'node-a', 'node-a', 'node-b', 'node-b', 'node-b']);
    // Without spares the odd slot stays unused and is trimmed.
    const none = planWithSpares(config, planWorld(hosts(['node-a', 4], ['node-b', 3])), opts(2), 0, 'cpu');
    expect(none.layout.replicas).toBe(3);
    expect(none.placement.ranks).toHaveLength(6);
    // Two spares: one replica fewer, so that both fit.
    const two = planWithSpares(config, planWorld(hosts(['node-a', 4], ['node-b', 3])), opts(2), 2, 'cpu');
    expect(two.layout.replicas).toBe(2);
    expect(two.placement.ranks.slice(4).map((r) => [r.rank, r.host])).toEqual([[4, 'node-b'], [5, 'node-b']]);
  });

  it('local CPU workers: missing spare slots become extra local processes', () => {
    const { layout, placement } = planWithSpares(config, planWorld(defaultLocalHosts({ numCpuWorkers: 2 })), opts(2), 2, 'cpu');
    expect(layout.world).toBe(2);
    expect(placement.ranks.map((r) => [r.rank, r.host, r.localRank])).toEqual([[0, 'localhost', 0], [1, 'localhost', 1], [2, 'localhost', 2], [3, 'localhost', 3]]);
    expect(placement.worldSize).toBe(4);
    expect(placement.ranks.every((r) => r.localWorldSize === 4)).toBe(true);
  });

  it('a hostfile without free slots for the spares is an error naming --spares', () => {
    expect(() => planWithSpares(config, planWorld(hosts(['node-a', 2], ['node-b', 2])), opts(2, 2), 1, 'cpu'))
      .toThrow('--spares 1: the hosts have 4 slots and the layout uses 4, so only 0 are free for spares');
    expect(() => planWithSpares(config, planWorld(defaultLocalHosts({ numCpuWorkers: 2 })), opts(2), 1, 'cuda'))
      .toThrow(/--spares 1: .* only 0 are free for spares \(extra spare processes are only added when every worker is a local CPU worker\)/);
    expect(() => planWithSpares(config, planWorld(defaultLocalHosts({ numCpuWorkers: 2 })), opts(2), -1, 'cpu')).toThrow('--spares must be an integer >= 0 (got -1)');
  });
});

describe('nodespeed launch --spares / --step-timeout', () => {
  const run = (args: string[]) => spawnSync(process.execPath, [BIN, 'launch', '--model', PY_TINY, '--dry-run', ...args], { encoding: 'utf8', cwd: root });

  it('--dry-run lists the spare slots', () => {
    const r = run(['--num_cpu_workers', '2', '--tp', '2', '--spares', '1']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('world 2 = 1 replica(s) x pp 1 x tp 2');
    expect(r.stdout).toContain('spares: slot 2 @localhost (joined, no weights until one takes a lost rank)');
  });

  it('bad values are refused naming the flag', () => {
    const spares = run(['--spares', 'two']);
    expect(spares.status).not.toBe(0);
    expect(spares.stderr).toContain("--spares must be an integer from 0 to 4294967295 (got 'two')");
    const step = run(['--step-timeout', '0']);
    expect(step.status).not.toBe(0);
    expect(step.stderr).toContain("--step-timeout must be a number of seconds > 0 and at most 2147483 (got '0')");
  });
});
