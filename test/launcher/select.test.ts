import { describe, expect, it } from 'vitest';
import { parseHostfile } from '../../src/launcher/hostfile.js';
import { selectHosts } from '../../src/launcher/select.js';
import { chmodSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defaultLocalHosts, detectLocalGpus, isLocalHost, planWorld } from '../../src/launcher/plan.js';

const hosts = parseHostfile('worker-0 slots=4\nworker-1 slots=4\nworker-2 slots=2 device=cpu\n', 'hf');
const pick = (o: Parameters<typeof selectHosts>[1]): Array<[string, number[]]> => selectHosts(hosts, o).map((h) => [h.host, h.slots]);

describe('include/exclude (DeepSpeed semantics)', () => {
  it('no filter keeps everything in hostfile order', () => {
    expect(pick({})).toEqual([['worker-0', [0, 1, 2, 3]], ['worker-1', [0, 1, 2, 3]], ['worker-2', [0, 1]]]);
  });
  it('include hosts and slots, keeping hostfile order and sorting/deduplicating slots', () => {
    expect(pick({ include: 'worker-1:2,0,2@worker-0' })).toEqual([['worker-0', [0, 1, 2, 3]], ['worker-1', [0, 2]]]);
    expect(pick({ include: 'worker-2' })).toEqual([['worker-2', [0, 1]]]);
  });
  it('exclude hosts and slots; hosts left without slots are dropped', () => {
    expect(pick({ exclude: 'worker-0@worker-1:0,3' })).toEqual([['worker-1', [1, 2]], ['worker-2', [0, 1]]]);
    expect(pick({ exclude: 'worker-2:0,1' })).toEqual([['worker-0', [0, 1, 2, 3]], ['worker-1', [0, 1, 2, 3]]]);
  });
  it.each([
    [{ include: 'a', exclude: 'b' }, '--include and --exclude are mutually exclusive'],
    [{ include: 'nope' }, "--include: host 'nope' not found in hostfile"],
    [{ exclude: 'worker-0@ghost:1' }, "--exclude: host 'ghost' not found in hostfile"],
    [{ include: 'worker-2:2' }, "--include: no slot 2 on host 'worker-2' (it has slots 0,1)"],
    [{ include: 'worker-0:x' }, "--include: slot 'x' of host 'worker-0' is not a non-negative integer"],
    [{ include: 'worker-0@' }, "--include: empty host entry in 'worker-0@'"],
    [{ include: 'worker-0', numNodes: 1 }, '--num_nodes/--num_gpus cannot be combined with --include/--exclude'],
    [{ exclude: 'worker-0', numGpus: 1 }, '--num_nodes/--num_gpus cannot be combined with --include/--exclude'],
    [{ exclude: 'worker-0@worker-1@worker-2' }, 'no hosts left after --include/--exclude'],
    [{ numNodes: 4 }, '--num_nodes 4 asks for more hosts than the hostfile has (3)'],
    [{ numGpus: 3 }, "--num_gpus 3: host 'worker-2' has only 2 slots"],
    [{ numNodes: 0 }, "--num_nodes must be a positive integer, got '0'"],
  ])('rejects %j', (opts, message) => {
    expect(() => selectHosts(hosts, opts)).toThrow(message);
  });
  it('--num_nodes takes the first hosts, --num_gpus the first slots of each', () => {
    expect(pick({ numNodes: 2, numGpus: 2 })).toEqual([['worker-0', [0, 1]], ['worker-1', [0, 1]]]);
  });
});

describe('placement', () => {
  it('numbers ranks host by host with local ranks, GPU indices from the selection, and node ranks', () => {
    const p = planWorld(selectHosts(hosts, { include: 'worker-0:1,3@worker-2' }), { sshPort: 2222 });
    expect(p.worldSize).toBe(4);
    expect(p.numNodes).toBe(2);
    expect(p.masterAddr).toBe('worker-0');
    expect(p.masterPort).toBe(29500);
    expect(p.ranks.map((r) => [r.rank, r.host, r.nodeRank, r.localRank, r.localWorldSize, r.gpu, r.isLocal, r.sshPort])).toEqual([
      [0, 'worker-0', 0, 0, 2, 1, false, 2222],
      [1, 'worker-0', 0, 1, 2, 3, false, 2222],
      [2, 'worker-2', 1, 0, 2, null, false, 2222],
      [3, 'worker-2', 1, 1, 2, null, false, 2222],
    ]);
  });
  it('local names run locally; 127.0.0.2 and other names go through SSH; --force_ssh sends all through SSH', () => {
    expect(['localhost', '127.0.0.1', '::1'].every(isLocalHost)).toBe(true);
    expect(isLocalHost('127.0.0.2')).toBe(false);
    const hs = parseHostfile('localhost slots=1\n127.0.0.2 slots=1\n', 'hf');
    expect(planWorld(selectHosts(hs)).ranks.map((r) => r.isLocal)).toEqual([true, false]);
    expect(planWorld(selectHosts(hs), { forceSsh: true }).ranks.map((r) => r.isLocal)).toEqual([false, false]);
  });
  it('master address: explicit flag wins; a local first host is replaced by this hostname when the job spans remote hosts', () => {
    const hs = selectHosts(parseHostfile('localhost slots=1\nfar slots=1\n', 'hf'));
    expect(planWorld(hs).masterAddr).not.toBe('localhost');
    expect(planWorld(hs, { masterAddr: '10.0.0.1', masterPort: 1234 })).toMatchObject({ masterAddr: '10.0.0.1', masterPort: 1234 });
    expect(() => planWorld(hs, { masterPort: 70000 })).toThrow("--master_port must be a port number (1-65535), got '70000'");
  });
  it('no hostfile: every visible GPU on localhost, else --num_cpu_workers CPU workers (default 2)', () => {
    expect(defaultLocalHosts({ gpus: [0, 1, 2] })).toEqual([{ host: 'localhost', slots: [0, 1, 2], attrs: {} }]);
    expect(defaultLocalHosts({ gpus: [0, 1, 2], numGpus: 2 })[0]!.slots).toEqual([0, 1]);
    expect(defaultLocalHosts({ gpus: [] })).toEqual([{ host: 'localhost', slots: [0, 1], attrs: { device: 'cpu' } }]);
    expect(defaultLocalHosts({ gpus: [], numCpuWorkers: 3 })[0]!.slots).toEqual([0, 1, 2]);
    expect(() => defaultLocalHosts({ gpus: [0], numGpus: 2 })).toThrow('--num_gpus 2: this machine has only 1 usable GPU(s) (0)');
    const p = planWorld(defaultLocalHosts({ gpus: [] }));
    expect(p.ranks.map((r) => [r.gpu, r.isLocal])).toEqual([[null, true], [null, true]]);
    expect(p.masterAddr).toBe('localhost');
  });
});

describe('local GPU detection', () => {
  it('counts nvidia-smi rows, honours CUDA_VISIBLE_DEVICES, and finds none without nvidia-smi', () => {
    // A stand-in nvidia-smi (CI has no GPU) answering the query the launcher makes, for a 3-GPU machine.
    const bin = mkdtempSync(join(tmpdir(), 'smi-'));
    writeFileSync(join(bin, 'nvidia-smi'), '#!/bin/sh\n[ "$1" = "--query-gpu=index,uuid" ] || exit 9\nprintf "0, GPU-aaaa\\n1, GPU-bbbb\\n2, GPU-cccc\\n"\n');
    chmodSync(join(bin, 'nvidia-smi'), 0o755);
    expect(detectLocalGpus({ PATH: bin })).toEqual([0, 1, 2]);
    expect(detectLocalGpus({ PATH: bin, CUDA_VISIBLE_DEVICES: '2,0' })).toEqual([2, 0]);
    expect(detectLocalGpus({ PATH: bin, CUDA_VISIBLE_DEVICES: 'GPU-cccc,GPU-aa' })).toEqual([2, 0]);
    expect(detectLocalGpus({ PATH: bin, CUDA_VISIBLE_DEVICES: '' })).toEqual([]);
    expect(() => detectLocalGpus({ PATH: bin, CUDA_VISIBLE_DEVICES: '1,5' })).toThrow('CUDA_VISIBLE_DEVICES=1,5 names GPU 5, but this machine has GPUs 0,1,2 (nvidia-smi)');
    expect(() => detectLocalGpus({ PATH: bin, CUDA_VISIBLE_DEVICES: 'GPU-ffff' })).toThrow("CUDA_VISIBLE_DEVICES=GPU-ffff names 'GPU-ffff', but this machine has GPUs 0,1,2 (nvidia-smi)");
    expect(() => detectLocalGpus({ PATH: bin, CUDA_VISIBLE_DEVICES: '1,1' })).toThrow('CUDA_VISIBLE_DEVICES=1,1 names GPU 1 twice');
    expect(detectLocalGpus({ PATH: mkdtempSync(join(tmpdir(), 'empty-')) })).toEqual([]);
  });
});
