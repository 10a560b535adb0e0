#!/usr/bin/env node
// Cost of --encrypt-data-plane: the TCP comm's all-reduce latency and bandwidth between real
// processes, clear and with AES-256-GCM on every connection (encrypt: 'all' — the flag encrypts
// only connections between hosts; on one machine 'all' stands in for them), run alternately
// --reps times each; for reference, one core's AES-256-GCM throughput through Node's own OpenSSL
// (the comm uses the system's libcrypto when there is one: crypto_provider).
// Writes bench/results/comm-encrypt-<host>-<timestamp>.json.
//
//   npm run build && npm run build:native && node bench/comm/encrypt.mjs [--ranks 2] [--reps 3]
import { execFileSync } from 'node:child_process';
import { createCipheriv, randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, hostname, loadavg, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { benchRanks } from '../../test/comm/bench.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const { values: a } = parseArgs({ options: { ranks: { type: 'string', default: '2' }, reps: { type: 'string', default: '3' }, out: { type: 'string' } } });
const size = Number(a.ranks);

function run(encrypt) {
  return benchRanks(size, { COMM_KEY: randomBytes(32).toString('hex'), ENCRYPT: encrypt });
}

function gcmGBs() {
  const buf = Buffer.alloc(64 << 20);
  const key = randomBytes(32);
  let best = 0;
  for (let i = 0; i < 5; i++) {
    const t0 = performance.now();
    const c = createCipheriv('aes-256-gcm', key, randomBytes(12));
    c.update(buf);
    c.final();
    best = Math.max(best, buf.length / ((performance.now() - t0) / 1000) / 1e9);
  }
  return +best.toFixed(2);
}

const rows = { off: [], all: [] };
for (let r = 0; r < Number(a.reps); r++) for (const mode of ['off', 'all']) rows[mode].push(await run(mode));
const best = (mode, label) => Math.min(...rows[mode].map((x) => x[label].usPerOp));
const labels = ['16KB', '256KB', '16MB'];
const summary = Object.fromEntries(labels.map((l) => [l, {
  clear_us: best('off', l), encrypted_us: best('all', l), ratio: +(best('all', l) / best('off', l)).toFixed(2),
}]));
let commit = 'unknown';
try {
  const dirty = execFileSync('git', ['-C', root, 'status', '--porcelain', '--untracked-files=no'], { encoding: 'utf8' }).trim() ? '+dirty' : '';
  commit = execFileSync('git', ['-C', root, 'rev-parse', 'HEAD'], { encoding: 'utf8' }).trim() + dirty;
} catch { /* not a checkout */ }
const result = {
  bench: 'comm-encrypt', date: new Date().toISOString(), commit, ranks: size, reps: Number(a.reps),
  machine: { host: hostname(), cpus: cpus().length, cpu_model: cpus()[0]?.model, mem_gib: +(totalmem() / 2 ** 30).toFixed(1), loadavg_1m: loadavg()[0] },
  crypto_provider: rows.all[0].cryptoProvider,
  encrypted_links_rank0: rows.all[0].encryptedLinks,
  aes_256_gcm_one_core_GBs_node_openssl: gcmGBs(),
  all_reduce_best_of_reps: summary,
  runs: rows,
};
const out = a.out ?? join(root, 'bench', 'results', `comm-encrypt-${hostname()}-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, JSON.stringify(result, null, 2) + '\n');
console.log(JSON.stringify({ out, crypto_provider: result.crypto_provider, all_reduce: summary, loadavg_1m: loadavg()[0] }, null, 2));
