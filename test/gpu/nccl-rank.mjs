// One rank of test/gpu/nccl.test.ts: `node test/gpu/nccl-rank.mjs RANK DIR`. Forms a 2-rank NCCL comm
// through the addon on cuda:RANK (rank 0 makes the unique id and hands it over in DIR), runs the
// checks and prints one JSON line { rank, ok, ...checks }; exit 0 when every check passed.
// NODESPEED_TEST_DEVICE=cpu: the same over the TCP comm (a dry run without GPUs).
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { addon, device } from './lib.mjs';

const kind = device === 'cpu' ? 'tcp' : 'nccl';
process.env.NCCL_NVLS_ENABLE = '0';  // NVLink multicast stays off on shared hosts (read by NCCL at init)

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function waitFile(path, ms = 60_000) {
  const end = Date.now() + ms;
  while (!existsSync(path)) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${path}`);
    await sleep(20);
  }
  return readFileSync(path);
}
function publish(path, data) {  // atomic: the reader never sees a half-written file
  writeFileSync(`${path}.tmp`, data);
  renameSync(`${path}.tmp`, path);
}
const toBf16 = (x) => { const u = new Uint32Array(new Float32Array([x]).buffer)[0]; return (u + 0x7fff + ((u >>> 16) & 1)) >>> 16; };
const fromBf16 = (b) => new Float32Array(new Uint32Array([b << 16]).buffer)[0];

async function rankMain(rank, dir) {
  const size = 2;
  const checks = {};
  let comm;
  if (kind === 'nccl') {
    if (rank === 0) publish(join(dir, 'id'), addon.ncclUniqueId());
    const uniqueId = new Uint8Array(await waitFile(join(dir, 'id')));
    comm = new addon.Comm({ kind: 'nccl', rank, size, uniqueId, deviceIndex: rank });
    const t0 = performance.now();
    await comm.init();
    checks.initMs = Math.round(performance.now() - t0);
  } else {
    comm = new addon.Comm({ kind: 'tcp', rank, size, nonce: 'nccl-rank-dry-run' });
    publish(join(dir, `addr${rank}`), `127.0.0.1:${await comm.listen('127.0.0.1')}`);
    const addrs = [];
    for (let r = 0; r < size; ++r) addrs.push(String(await waitFile(join(dir, `addr${r}`))));
    await comm.connect(addrs);
  }
  // f32: rank r holds (r + 1) * (i % 7 + 1) → sum 3 * (i % 7 + 1), exact in f32.
  const n = 1 << 20;
  const f = new Float32Array(n).map((_, i) => (rank + 1) * ((i % 7) + 1));
  await comm.allReduce(f);
  checks.f32 = f.every((v, i) => v === 3 * ((i % 7) + 1));
  const b = new Uint16Array(4099).map((_, i) => toBf16((rank + 1) * 0.25 * ((i % 5) + 1)));
  await comm.allReduce(b, 'bf16');
  checks.bf16 = b.every((v, i) => fromBf16(v) === 0.75 * ((i % 5) + 1));
  const mine = new Uint8Array(1000).fill(rank + 10);
  const all = new Uint8Array(2000);
  await comm.allGather(mine, all);
  checks.allGather = all.every((v, i) => v === (i < 1000 ? 10 : 11));
  const bc = rank === 1 ? new Uint8Array([1, 2, 3, 4]) : new Uint8Array(4);
  await comm.broadcast(bc, 1);
  checks.broadcast = bc.join() === '1,2,3,4';
  const msg = new Float32Array(5000);
  if (rank === 0) { await comm.send(msg.fill(42), 1); }
  else { await comm.recv(msg, 0); }
  checks.sendRecv = rank === 0 || msg.every((v) => v === 42);
  // Sizes around the one-shot P2P kernels' limits (native/src/cuda/p2p_collectives.h: 16-byte
  // multiples up to 2 MiB; 3 rounds each so both buffer parities and the epoch counters turn over),
  // then one size past the limit and one not a multiple of 16 bytes (both NCCL).
  checks.p2p = comm.p2p ?? null;
  checks.p2pSizes = true;
  for (const n of [4, 4096, 16384, 262144, 524288, 524292, 4101]) {
    for (let round = 0; round < 3; ++round) {
      const x = new Float32Array(n).map((_, i) => (rank + 1) * ((i + round) % 13) - 0.5);
      await comm.allReduce(x);
      if (!x.every((v, i) => v === 3 * ((i + round) % 13) - 1)) { checks.p2pSizes = false; checks.p2pFailedAt = { n, round }; }
    }
  }
  const g = new Uint8Array(64000).map((_, i) => (i * 31 + rank * 7) & 255);
  const gathered = new Uint8Array(128000);
  for (let round = 0; round < 2; ++round) await comm.allGather(g, gathered);
  checks.p2pGather = gathered.every((v, i) => v === (((i % 64000) * 31 + Math.floor(i / 64000) * 7) & 255));
  // Bus bandwidth of a 64 MB all-reduce (NCCL's busbw = algbw × 2(n-1)/n), host staging included.
  const big = new Float32Array(16 << 20).fill(1);
  await comm.allReduce(big);
  const reps = 5;
  const t0 = performance.now();
  for (let i = 0; i < reps; ++i) await comm.allReduce(big);
  const s = (performance.now() - t0) / 1000 / reps;
  checks.allReduce64MBms = +(s * 1000).toFixed(2);
  checks.busGBs = +((big.byteLength / s) * (2 * (size - 1) / size) / 1e9).toFixed(2);
  checks.asyncErrorNull = comm.asyncError() === null;
  // abort() must free an op that would wait forever: with the P2P kernels on, a small all-reduce
  // rank 1 never joins (the kernel spins on rank 1's flag until abort); else a recv rank 1 never sends to.
  checks.abortedOp = /^p2p collectives up to/.test(checks.p2p ?? '') ? 'p2p all-reduce' : 'recv';
  if (rank === 0) {
    const op = checks.abortedOp === 'recv' ? comm.recv(new Uint8Array(64), 1) : comm.allReduce(new Float32Array(4096));
    const pending = op.then(() => 'resolved', (e) => e.message);
    await sleep(300);
    const t1 = performance.now();
    comm.abort();
    const outcome = await Promise.race([pending, sleep(5000).then(() => 'still pending after 5 s')]);
    checks.abortMs = Math.round(performance.now() - t1);
    checks.abortRejected = /abort/.test(outcome);
    checks.abortMessage = outcome;
  } else {
    await sleep(1500);  // stay alive while rank 0 aborts, so the abort is what frees its recv
    comm.abort();
  }
  const ok = ['f32', 'bf16', 'allGather', 'broadcast', 'sendRecv', 'p2pSizes', 'p2pGather', 'asyncErrorNull'].every((k) => checks[k]) &&
    (rank !== 0 || checks.abortRejected);
  console.log(JSON.stringify({ rank, ok, ...checks }));
  process.exit(ok ? 0 : 1);
}

const [rank, dir] = [Number(process.argv[2]), process.argv[3]];
rankMain(rank, dir).catch((e) => {
  console.log(JSON.stringify({ rank, ok: false, error: e.message }));
  process.exit(1);
});
