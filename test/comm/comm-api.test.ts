// The comm API inside one process (each comm runs its ops on its own native thread, so two
// ranks in one process work): argument errors, op timeouts, stray connections, the event loop
// staying free while an op blocks, NCCL's "unavailable" message, and UnwrapComm's check.
import { execFile } from 'node:child_process';
import { createServer, connect as netConnect } from 'node:net';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';

import { createNcclComm, createTcpComm, formGroup, ncclUniqueId } from '../../src/comm/index.js';
import type { Comm, GroupMemberInfo, TcpComm } from '../../src/comm/index.js';
import { loadAddon } from '../../src/native/addon.js';

const open: Comm[] = [];
afterEach(() => { for (const c of open.splice(0)) c.abort(); });

async function pair(opts: { opTimeoutMs?: number } = {}): Promise<TcpComm[]> {
  const comms = [0, 1].map((rank) => createTcpComm({ rank, size: 2, context: 'api', ...opts }));
  open.push(...comms);
  const ports = await Promise.all(comms.map((c) => c.listen('127.0.0.1')));
  await Promise.all(comms.map((c) => c.connect(ports.map((p) => `127.0.0.1:${p}`))));
  return comms;
}

describe('bad input', () => {
  it('rejects bad options and buffers with messages naming the field', async () => {
    const Comm = loadAddon().Comm!;
    expect(() => new Comm({ kind: 'udp', rank: 0, size: 1 })).toThrow(/opts.kind must be 'tcp' or 'nccl'/);
    expect(() => new Comm({ kind: 'tcp', size: 2 })).toThrow(/opts.rank is required/);
    expect(() => createTcpComm({ rank: 2, size: 2 })).toThrow(/rank 2 outside \[0, 2\)/);
    const [a] = await pair();
    expect(() => a!.native.allReduce(new Uint16Array(4))).toThrow(/dtype must be 'f32', 'bf16' or 'f16'/);
    expect(() => a!.allReduce(new Uint8Array(3) as unknown as Uint16Array, 'bf16')).toThrow(/3 bytes is not a whole number of bf16/);
    expect(() => a!.allGather(new Uint8Array(4), new Uint8Array(7))).toThrow(/output has 7 bytes, expected size \(2\) x input \(4\)/);
    expect(() => a!.send(new Uint8Array(4), 0)).toThrow(/peer 0 is this rank/);
    expect(() => a!.recv(new Uint8Array(4), 5)).toThrow(/rank 5 outside \[0, 2\)/);
    await expect(createTcpComm({ rank: 0, size: 2 }).connect(['127.0.0.1:1'])).rejects.toThrow(/got 1 addresses for a group of 2/);
  });

  it('ncclUniqueId and an NCCL comm say why NCCL is unavailable on a machine without it', () => {
    if (loadAddon().info().cuda.available) return;  // a GPU host: test/gpu/nccl.test.ts covers NCCL
    expect(() => ncclUniqueId()).toThrow(/^nccl: unavailable \(.+\)/);
    expect(() => createNcclComm({ rank: 0, size: 1, uniqueId: new Uint8Array(128), deviceIndex: 0 })).toThrow(/^nccl: unavailable \(.+\)/);
  });

  it('engine.setTpComm accepts only an addon.Comm', () => {
    const addon = loadAddon();
    const engine = new addon.Engine({ device: 'cpu', hidden: 8, intermediate: 16, nHeads: 2, nKvHeads: 2, headDim: 4,
      vocabSize: 16, vocabStart: 0, vocabEnd: 16, layerStart: 0, layerEnd: 1, maxPosition: 32, rmsEps: 1e-5,
      qkvBias: false, tiedEmbeddings: false, hasEmbedding: true, hasHead: true, tpRank: 0, tpSize: 1, rope: { type: 'default', theta: 10000 } });
    expect(() => engine.setTpComm({} as never)).toThrow(/expected an addon.Comm/);
    const c = createTcpComm({ rank: 0, size: 1 });
    open.push(c);
    expect(() => engine.setTpComm(c.native)).not.toThrow();
    engine.dispose();
  });
});

describe('blocking ops', () => {
  it('keep the event loop free, and an op timeout names the peer', async () => {
    const [a] = await pair({ opTimeoutMs: 400 });
    let ticks = 0;
    const timer = setInterval(() => { ticks++; }, 20);
    const t0 = performance.now();
    await expect(a!.recv(new Uint8Array(8), 1)).rejects.toThrow(/tcp comm rank 0: recv timed out after 400 ms waiting for peer rank 1 \(127\.0\.0\.1:\d+\)/);
    clearInterval(timer);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(390);
    expect(ticks).toBeGreaterThan(8);
    expect(a!.asyncError()).toMatch(/timed out/);
    await expect(a!.allReduce(new Float32Array(2))).rejects.toThrow(/timed out/);  // broken for good
  });

  it('connect retries until its deadline, then names the peer it could not reach', async () => {
    const server = createServer();  // a port that was just free: nothing listens there now
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as AddressInfo).port;
    await new Promise((r) => server.close(r));
    const c = createTcpComm({ rank: 1, size: 2, connectTimeoutMs: 300 });
    open.push(c);
    await c.listen('127.0.0.1');
    const t0 = performance.now();
    await expect(c.connect([`127.0.0.1:${port}`, '127.0.0.1:1'])).rejects.toThrow(
      new RegExp(`tcp comm rank 1: connect to peer rank 0 at 127\\.0\\.0\\.1:${port} failed \\(Connection refused\\), retried for 0\\.3`));
    expect(performance.now() - t0).toBeGreaterThanOrEqual(290);
  });

  it('abort() during connect rejects it at once', async () => {
    const lower = createTcpComm({ rank: 0, size: 2 });  // listens but never accepts (no connect())
    const c = createTcpComm({ rank: 1, size: 2 });
    open.push(lower, c);
    const ports = [await lower.listen('127.0.0.1'), await c.listen('127.0.0.1')];
    const pending = c.connect(ports.map((p) => `127.0.0.1:${p}`));
    await new Promise((r) => setTimeout(r, 200));
    const t0 = performance.now();
    c.abort();
    await expect(pending).rejects.toThrow(/tcp comm rank 1: connect: aborted/);
    expect(performance.now() - t0).toBeLessThan(200);
  });

  it('a group of one needs no connection: all-reduce is a no-op, all-gather a copy', async () => {
    const c = createTcpComm({ rank: 0, size: 1 });
    open.push(c);
    await c.connect(['unused:1']);
    const x = new Float32Array([1.5, -2]);
    await c.allReduce(x);
    expect(Array.from(x)).toEqual([1.5, -2]);
    const out = new Uint8Array(3);
    await c.allGather(new Uint8Array([7, 8, 9]), out);
    expect(Array.from(out)).toEqual([7, 8, 9]);
  });

  it('run in submission order on one comm', async () => {
    const [a, b] = await pair();
    const order: string[] = [];
    const x = new Float32Array([1]), y = new Float32Array([2]);
    const done = Promise.all([
      a!.allReduce(x).then(() => order.push('a1')), a!.allReduce(y).then(() => order.push('a2')),
      b!.allReduce(new Float32Array([10])), b!.allReduce(new Float32Array([20])),
    ]);
    await done;
    expect(order).toEqual(['a1', 'a2']);
    expect([x[0], y[0]]).toEqual([11, 22]);
  });
});

it('formGroup forms a group through any exchange and ignores a stray connection', async () => {
  const size = 3;
  const infos: GroupMemberInfo[] = [];
  let release!: () => void;
  const all = new Promise<void>((r) => { release = r; });
  const exchange = async (mine: GroupMemberInfo) => {
    infos[mine.rank] = mine;
    if (infos.filter(Boolean).length === size) {
      // A stranger dials rank 0 first and sends junk: rank 0 refuses it and keeps accepting.
      const [host, port] = infos[0]!.address!.split(':');
      const s = netConnect(Number(port), host!, () => s.write(Buffer.alloc(24, 7)));
      s.on('error', () => {});
      await new Promise((r) => setTimeout(r, 100));
      release();
    }
    await all;
    return infos;
  };
  const comms = await Promise.all([0, 1, 2].map((rank) => formGroup({ kind: 'tcp', rank, size, context: 'fg', exchange })));
  open.push(...comms);
  const bufs = comms.map((_, r) => new Float32Array([r, 1]));
  await Promise.all(comms.map((c, r) => c.allReduce(bufs[r]!)));
  for (const b of bufs) expect(Array.from(b)).toEqual([3, 3]);
  await expect(formGroup({ kind: 'tcp', rank: 0, size: 2, exchange: async () => [{ rank: 0, address: 'x:1' }] }))
    .rejects.toThrow(/exchange returned 1 entries for a group of 2/);
});

it('a process exits cleanly with communicators still alive', async () => {
  const script = join(import.meta.dirname, 'fixtures', 'exit-with-comms.mjs');
  for (let i = 0; i < 3; ++i) {  // the teardown order varies between runs
    const r = await promisify(execFile)(process.execPath, [script]).then(() => 0, (e: { code?: number; signal?: string }) => e.signal ?? e.code);
    expect(r).toBe(0);
  }
});
