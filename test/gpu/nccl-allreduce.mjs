// NCCL through the addon between two GPUs (issue 4 point 3, run on nvidia-h200-x2): two
// processes, one GPU each; rank 0 makes the unique id and hands it over in a temp file. Checks
// all-reduce sums (f32 and bf16), all-gather order, broadcast, send/recv, asyncError, and that
// abort() unblocks a recv no one will ever send to; reports the 64 MB all-reduce bus bandwidth.
// usage: node test/gpu/nccl-allreduce.mjs   (prints one JSON line; exit 0 ok, 1 failure, 2 no 2 GPUs)
// NODESPEED_TEST_DEVICE=cpu runs the same script over the TCP comm (a dry run without GPUs).
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const addon = createRequire(import.meta.url)(process.env.NODESPEED_ADDON ?? join(root, 'build', 'Release', 'nodespeed.node'));
const kind = process.env.NODESPEED_TEST_DEVICE === 'cpu' ? 'tcp' : 'nccl';
process.env.NCCL_NVLS_ENABLE = '0';  // NVLink multicast stays off on shared hosts

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
    comm = new addon.Comm({ kind: 'tcp', rank, size, nonce: 'nccl-allreduce-dry-run' });
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

async function parentMain() {
  if (kind === 'nccl' && addon.info) {  // (a comm-only test build of the addon has no info())
    const info = addon.info();
    if (info.cuda.devices.length < 2 || !addon.ncclUniqueId) {
      console.log(JSON.stringify({ ok: false, skipped: `needs 2 GPUs and the NCCL binding (devices: ${info.cuda.devices.length}, ${info.cuda.reason})` }));
      process.exit(2);
    }
  }
  const dir = mkdtempSync(join(tmpdir(), 'ns-nccl-'));
  const script = fileURLToPath(import.meta.url);
  const runs = [0, 1].map((rank) => new Promise((res) => {
    const p = spawn(process.execPath, [script, '--rank', String(rank), dir], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout.on('data', (d) => { out += d; });
    const timer = setTimeout(() => p.kill('SIGKILL'), 120_000);
    p.on('exit', (code, signal) => {
      clearTimeout(timer);
      const line = out.trim().split('\n').pop() ?? '';
      let r;
      try { r = JSON.parse(line); } catch { r = { rank, ok: false, error: `exit ${code ?? signal}: ${out.slice(-500)}` }; }
      res({ ...r, exit: code ?? signal });
    });
  }));
  const ranks = await Promise.all(runs);
  rmSync(dir, { recursive: true, force: true });
  const ok = ranks.every((r) => r.ok && r.exit === 0);
  console.log(JSON.stringify({ ok, kind, devices: kind === 'nccl' && addon.info ? addon.info().cuda.devices.map((d) => d.name) : [], ranks }));
  process.exit(ok ? 0 : 1);
}

const i = process.argv.indexOf('--rank');
if (i >= 0) {
  rankMain(Number(process.argv[i + 1]), process.argv[i + 2]).catch((e) => {
    console.log(JSON.stringify({ rank: Number(process.argv[i + 1]), ok: false, error: e.message }));
    process.exit(1);
  });
} else {
  await parentMain();
}
