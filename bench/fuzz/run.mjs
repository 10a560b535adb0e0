#!/usr/bin/env node
// Fuzz run over the three inputs the serving planes take from outside, with one seeded generator
// (every case can be replayed from --seed and its index), for --minutes (default 10):
//   1. GenerateRequest fields through the public gRPC API of a real tp-2 `nodespeed launch` (prompt
//      text of every kind, prompt ids in and out of range, numbers at and past their edges, stop
//      lists of every size, deadlines and cancellations): every call must end OK or with a clean
//      INVALID_ARGUMENT / RESOURCE_EXHAUSTED / CANCELLED / DEADLINE_EXCEEDED, and the cluster must
//      see zero failovers;
//   2. control messages, as a worker holding a valid slot certificate would send them, into a
//      coordinator of its own (mutual TLS, the real Membership): Joins with wrong fields, messages of
//      random epochs, bogus progress, readiness, rendezvous offers, token reports and errors, up to
//      the message limit: the coordinator must never crash (a misbehaving worker may be lost);
//   3. step frames: random and mutated encodings through decodeStep and, when they decode, a CPU
//      engine's step(): every one must decode or throw a clean Error, never crash or hang.
// Zero crashes and zero failovers pass. Writes bench/results/fuzz-<host>-<timestamp>.json.
//
//   npm run build && node bench/fuzz/run.mjs [--minutes 10] [--seed 1] [--model models/py-tiny] [--targets api,control,frames]
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, hostname, loadavg, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { launch } from '../failover/load.mjs';
import { rng } from '../lib/rng.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
// The code under test is the checkout as the run starts (edits made while it runs do not count).
let commit = 'unknown';
try {
  const dirty = execFileSync('git', ['-C', root, 'status', '--porcelain', '--untracked-files=no'], { encoding: 'utf8' }).trim() ? '+dirty' : '';
  commit = execFileSync('git', ['-C', root, 'rev-parse', 'HEAD'], { encoding: 'utf8' }).trim() + dirty;
} catch { /* not a checkout */ }
const dist = (p) => join(root, 'dist', p);
const { values: a } = parseArgs({ options: {
  minutes: { type: 'string', default: '10' }, seed: { type: 'string', default: '1' },
  model: { type: 'string', default: join(root, 'models', 'py-tiny') }, out: { type: 'string' },
  targets: { type: 'string', default: 'api,control,frames' },
} });
const targets = new Set(a.targets.split(','));
const minutes = Number(a.minutes);
const seed = Number(a.seed);

const r = rng(seed);
const int = (n) => Math.floor(r() * n);
const pick = (xs) => xs[int(xs.length)];
const EDGE_NUMS = [0, -0, 1, -1, 0.5, 2, 1e-30, 1e30, NaN, Infinity, -Infinity, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 53, -(2 ** 31)];
const PIECES = ['a', ' ', '\n', '\u0301', '\uD800', '\uDFFF', '😀', '\u0000', 'import os', '</s>', '<s>', '\uFFFD', 'ﷺ', '日本', '\r\n', '\u202e'];
function text(maxPieces) {
  const n = int(maxPieces + 1);
  let s = '';
  for (let i = 0; i < n; i++) s += pick(PIECES).repeat(1 + int(r() < 0.05 ? 5000 : 4));
  return s;
}
function generateRequest(vocab) {
  const q = {};
  const roll = () => r() < 0.5;
  if (roll()) q.prompt = r() < 0.02 ? 'a' + '\u0301'.repeat(int(3_000_000)) : text(30);
  if (roll()) q.promptIds = Array.from({ length: int(r() < 0.05 ? 5000 : 20) }, () => (r() < 0.9 ? int(vocab) : pick([vocab, vocab + 1, 2 ** 32 - 1, int(2 ** 32)])));
  if (roll()) q.maxTokens = r() < 0.7 ? 1 + int(64) : pick(EDGE_NUMS.filter((x) => Number.isInteger(x) && Math.abs(x) < 2 ** 31));
  if (roll()) q.temperature = r() < 0.7 ? r() * 2 : pick(EDGE_NUMS);
  if (roll()) q.topK = r() < 0.7 ? int(100) : pick([0, 2 ** 32 - 1, 1]);
  if (roll()) q.topP = r() < 0.7 ? r() : pick(EDGE_NUMS);
  if (roll()) q.seed = pick(['0', '18446744073709551615', String(int(2 ** 31)), '1']);
  if (roll()) q.stop = Array.from({ length: r() < 0.03 ? 20 + int(20_000) : int(5) }, () => (r() < 0.05 ? '' : text(3)));
  if (roll()) q.ignoreEos = roll();
  if (r() < 0.05) q.model = text(2);
  return q;
}

const OK_CODES = new Set(['INVALID_ARGUMENT', 'RESOURCE_EXHAUSTED', 'CANCELLED', 'DEADLINE_EXCEEDED']);
const stats = { api: { calls: 0, ok: 0, refused: {}, unexpected: [] }, control: { streams: 0, messages: 0, endings: {} }, frames: { cases: 0, decoded: 0, stepped: 0, errors: 0, crashes: [] } };

// ---- 1: the public API of a real cluster -------------------------------------------------------
const { NodespeedClient } = await import(dist('client/index.js'));
const grpc = await import('@grpc/grpc-js');
const cluster = await launch(join(root, 'bin', 'nodespeed'), ['--model', a.model, '--port', '0', '--bind', '127.0.0.1', '--no-progress',
  '--num_cpu_workers', '2', '--tp', '2', '--kv-blocks', '128', '--heartbeat-interval', '0.5', '--heartbeat-timeout', '3']);
const client = new NodespeedClient(cluster.address);
const vocab = (await client.listModels())[0].vocabSize;

async function apiCase() {
  const q = generateRequest(vocab);
  const ctl = new AbortController();
  const opts = { signal: ctl.signal, ...(r() < 0.2 ? { timeoutMs: 1 + int(2000) } : { timeoutMs: 60_000 }) };
  if (r() < 0.1) setTimeout(() => ctl.abort(), int(500));
  stats.api.calls++;
  try {
    if (r() < 0.5) {
      let n = 0;
      for await (const m of client.generate(q, opts)) {
        if (m.index !== n) throw new Error(`gap/repeat: index ${m.index} after ${n}`);
        n += m.tokenIds.length;
      }
    } else {
      await client.complete(q, opts);
    }
    stats.api.ok++;
  } catch (err) {
    const code = err.code !== undefined ? grpc.status[err.code] : 'client';
    if (OK_CODES.has(code) || (code === 'client' && /not a valid|out of range|illegal|invalid|must be/i.test(err.message))) {
      stats.api.refused[code] = (stats.api.refused[code] ?? 0) + 1;
    } else {
      stats.api.unexpected.push({ case: stats.api.calls, code, message: String(err.message).slice(0, 300), request: JSON.stringify(q).slice(0, 300) });
    }
  }
}

// ---- 2: control messages into a coordinator of this process ------------------------------------
const { Coordinator } = await import(dist('coordinator/server.js'));
const { planLayout } = await import(dist('coordinator/layout.js'));
const { loadModelConfig } = await import(dist('model/config.js'));
const { JobPki } = await import(dist('launcher/pki.js'));
const { DEFAULT_REQUEST_LIMITS, CONTROL_MAX_MESSAGE_BYTES, controlChannelOptions } = await import(dist('protocol/limits.js'));
const { CONTROL_SERVICE, clientConstructor, controlPackageDefinition } = await import(dist('protocol/proto.js'));
const { CONTROL_SERVER_NAME } = await import(dist('protocol/job-secrets.js'));
const config = loadModelConfig(a.model);
const layout = planLayout(config, [{ host: 'localhost', slots: 4 }], { tp: 2, pp: 1, replicas: 2 });
const pki = await JobPki.create();
const coordLog = [];
const coord = new Coordinator({
  layout, token: 'fuzz-token', modelDir: a.model, dtype: 'auto', device: 'cpu', kvBlocks: 16, threads: 1, maxBatchTokens: 64, maxQueue: 16,
  heartbeatIntervalMs: 500, heartbeatTimeoutMs: 3000, requestTimeoutMs: 5000, joinTimeoutMs: 5000, log: (l) => { if (coordLog.length < 5000) coordLog.push(l); },
  bind: '127.0.0.1', port: 0, limits: DEFAULT_REQUEST_LIMITS, joinDeadlineMs: 1000,
  control: { host: '127.0.0.1', port: 0, identity: await pki.serverIdentity(), key: new Uint8Array(32) },
  model: { name: 'fuzz', path: a.model, architecture: 'llama', contextLength: 2048, vocabSize: vocab, numLayers: 1, dtype: 'f32',
    encode: async () => [1], promptBytes: 1 << 20 },
});
await coord.start();
const identities = await Promise.all([0, 1, 2, 3].map((s) => pki.workerIdentity(s)));
const Ctor = clientConstructor(controlPackageDefinition(), CONTROL_SERVICE);

function workerMessage(slot) {
  const epoch = pick(['0', '1', '2', String(int(1000)), '18446744073709551615']);
  const kind = int(8);
  switch (kind) {
    case 0: return { join: { token: r() < 0.7 ? 'fuzz-token' : text(2), rank: r() < 0.7 ? slot : int(10), host: text(3), pid: int(100000),
      device: r() < 0.5 ? null : { kind: pick(['cpu', 'cuda', text(1)]), name: text(2), totalMemory: String(int(1e9)), freeMemory: '0', threads: int(64) },
      listenAddresses: Array.from({ length: int(40) }, () => text(2)) } };
    case 1: return { heartbeat: { epoch, sentAtMs: pick(EDGE_NUMS), load: r() < 0.5 ? null : { running: int(100), queued: int(100), kvBlocksTotal: int(100),
      kvBlocksFree: int(100), kvBlockSize: int(64), steps: String(int(1e6)), generatedTokens: '1', recentStepBatch: Array.from({ length: int(300) }, () => int(64)),
      maxStepBatch: int(64), maxInFlight: int(4) } } };
    case 2: return { loadProgress: { epoch, done: String(int(1e9)), total: String(int(1e9)) } };
    case 3: return { ready: { epoch, kvBlocks: int(1000), kvBlockSize: int(64), describe: r() < 0.05 ? 'd'.repeat(int(2_000_000)) : text(5) } };
    case 4: return { commOffer: { epoch, group: pick(['r0/tp/s0', 'r0/replica', 'r1/tp/s0', text(2)]), groupRank: int(4), groupSize: int(6),
      payload: Buffer.alloc(r() < 0.02 ? CONTROL_MAX_MESSAGE_BYTES - 64 - int(256) : int(512), int(256)) } };
    case 5: return { tokens: { epoch, updates: Array.from({ length: int(20) }, () => ({ requestId: pick([text(1), 'req-1']), tokenIds: Array.from({ length: int(10) }, () => int(vocab * 2)),
      text: text(3), index: int(100), finishReason: pick(['FINISH_REASON_UNSPECIFIED', 'FINISH_REASON_STOP', 'FINISH_REASON_LENGTH']), error: r() < 0.1 ? text(2) : '' })) } };
    case 6: return { error: { epoch, message: text(8), fatal: r() < 0.5 } };
    default: return { join: { token: 'fuzz-token', rank: slot, host: 'h', pid: 1, listenAddresses: [] } };
  }
}

async function controlCase() {
  const slot = int(4);
  const id = identities[slot];
  const c = new Ctor(`127.0.0.1:${coord.controlPort}`, grpc.credentials.createSsl(Buffer.from(id.ca), Buffer.from(id.key), Buffer.from(id.cert)),
    { 'grpc.ssl_target_name_override': CONTROL_SERVER_NAME, ...controlChannelOptions() });
  stats.control.streams++;
  await new Promise((res) => {
    const call = c.Connect();
    let ended = false;
    const end = (why) => {
      if (ended) return;
      ended = true;
      stats.control.endings[why] = (stats.control.endings[why] ?? 0) + 1;
      res();
    };
    call.on('error', (e) => end(grpc.status[e.code] ?? 'error'));
    call.on('end', () => end('end'));
    call.on('data', () => {});
    const n = int(30);
    let i = 0;
    const send = () => {
      if (ended) return;
      if (i++ >= n) {
        if (r() < 0.5) call.cancel();
        else call.end();
        setTimeout(() => end('closed by fuzzer'), 200);
        return;
      }
      stats.control.messages++;
      try {
        call.write(i === 1 && r() < 0.8 ? { join: { token: 'fuzz-token', rank: slot, host: text(2), pid: int(1e5), listenAddresses: [] } } : workerMessage(slot));
      } catch { /* encoding refused by the client */ }
      setTimeout(send, int(20));
    };
    send();
  });
  c.close();
}

// ---- 3: step frames through the codec and a CPU engine -----------------------------------------
const { decodeStep, encodeStep, readFrame } = await import(dist('protocol/step-codec.js'));
const { Engine } = await import(dist('engine/engine.js'));
const engine = await Engine.load(a.model, { device: 'cpu', threads: 1, kvBlocks: 16 });
function validMeta() {
  const n = 1 + int(4);
  return { step: int(1000), seqs: Array.from({ length: n }, () => {
    const nt = 1 + int(8);
    const pos = int(40);
    const blocks = Math.ceil((pos + nt) / 16);
    return { tokens: Int32Array.from({ length: nt }, () => int(vocab)), pos, blockTable: Int32Array.from({ length: blocks }, () => int(16)),
      sample: r() < 0.7, topK: int(50), temperature: r(), topP: r(), seed: BigInt(int(1e9)) };
  }) };
}
async function frameCase() {
  stats.frames.cases++;
  let buf = encodeStep(validMeta());
  const mode = int(4);
  if (mode === 0) buf = Uint8Array.from({ length: int(2000) }, () => int(256));
  else if (mode >= 1) for (let k = 0; k < 1 + int(8); k++) {
    const at = int(buf.length);
    if (mode === 1) buf[at] = int(256);
    else if (mode === 2) new DataView(buf.buffer).setInt32(Math.max(0, Math.min(buf.length - 4, at & ~3)), pick([-1, 2 ** 31 - 1, 0, 1e6, -(2 ** 31)]), true);
    else buf = buf.subarray(0, at);
  }
  let meta;
  try {
    readFrame(buf.length >= 8 ? buf : new Uint8Array(8));
    meta = decodeStep(buf);
    stats.frames.decoded++;
  } catch (err) {
    if (!(err instanceof Error)) stats.frames.crashes.push(`decode threw a non-Error: ${String(err)}`);
    stats.frames.errors++;
    return;
  }
  try {
    await engine.step({ seqs: meta.seqs });
    stats.frames.stepped++;
  } catch (err) {
    if (!(err instanceof Error)) stats.frames.crashes.push(`step threw a non-Error: ${String(err)}`);
    stats.frames.errors++;
  }
}

// ---- the run -----------------------------------------------------------------------------------
const t0 = Date.now();
const end = t0 + minutes * 60_000;
const runFor = async (fn, concurrency) => {
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (Date.now() < end) await fn();
  }));
};
const ticker = setInterval(() => {
  console.error(`fuzz: ${((Date.now() - t0) / 60_000).toFixed(1)} min; api ${stats.api.calls} calls (${stats.api.unexpected.length} unexpected), ` +
    `control ${stats.control.streams} streams / ${stats.control.messages} messages, frames ${stats.frames.cases} (${stats.frames.crashes.length} crashes)`);
}, 30_000);
await Promise.all([targets.has('api') ? runFor(apiCase, 8) : null, targets.has('control') ? runFor(controlCase, 2) : null,
  targets.has('frames') ? runFor(frameCase, 1) : null]);
clearInterval(ticker);
console.error("fuzz: run over, cleaning up");
const status = await client.clusterStatus();
const serving = await client.complete({ prompt: 'import os\n\n', maxTokens: 5, ignoreEos: true }).then((c) => c.tokenIds, (e) => e.message);
client.close();
await cluster.stop();
console.error("fuzz: cluster stopped");
await coord.stop("fuzz done");
console.error("fuzz: coordinator stopped");
engine.dispose();
console.error("fuzz: engine disposed");

const verdict = {
  zero_failovers: status.failover.failures === 0,
  zero_unexpected_api_outcomes: stats.api.unexpected.length === 0,
  zero_frame_crashes: stats.frames.crashes.length === 0,
  cluster_serves_after: Array.isArray(serving),
  coordinator_alive_after_control_fuzz: true,  // this process ran the coordinator; a crash would have ended the run
};
const result = {
  bench: 'fuzz', date: new Date().toISOString(), commit, seed, minutes,
  machine: { host: hostname(), cpus: cpus().length, cpu_model: cpus()[0]?.model, mem_gib: +(totalmem() / 2 ** 30).toFixed(1), loadavg_1m: loadavg()[0] },
  stats, cluster_failover: status.failover, serving_after: serving, verdict, pass: Object.values(verdict).every(Boolean),
  coordinator_log_sample: coordLog.slice(0, 40),
};
const out = a.out ?? join(root, 'bench', 'results', `fuzz-${hostname()}-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, JSON.stringify(result, null, 2) + '\n');
console.log(JSON.stringify({ out, verdict, pass: result.pass, api: { calls: stats.api.calls, ok: stats.api.ok, refused: stats.api.refused, unexpected: stats.api.unexpected.slice(0, 5) },
  control: stats.control, frames: { ...stats.frames, crashes: stats.frames.crashes.slice(0, 5) } }, null, 2));
process.exit(result.pass ? 0 : 1);
