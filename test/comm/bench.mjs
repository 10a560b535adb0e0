// TCP comm all-reduce latency and bandwidth between real processes on 127.0.0.1, through the JS
// binding (what a CPU worker pays per TP all-reduce is the C++ part of this).
// usage: node test/comm/bench.mjs [ranks=2]   (needs dist/ and the addon built; prints JSON)
// benchRanks() is the driver bench/comm/encrypt.mjs runs too.
import { fork } from 'node:child_process';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const fixture = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'rank.mjs');

/** Forks `size` ranks of the comm fixture's bench (extra env for each), exchanges their addresses, resolves with rank 0's result. */
export function benchRanks(size, env = {}) {
  const infos = [];
  const results = [];
  const procs = Array.from({ length: size }, (_, rank) => fork(fixture, ['bench', String(rank), String(size), 'bench'],
    { env: { ...process.env, ...env } }));
  return new Promise((resolve, reject) => {
    for (const p of procs) {
      p.on('message', (m) => {
        if (m.type === 'info') {
          infos[m.rank] = m.info;
          if (infos.filter(Boolean).length === size) for (const q of procs) q.send({ type: 'infos', infos });
        } else if (m.type === 'result') {
          if (m.error) reject(new Error(`rank ${m.rank}: ${m.error}`));
          results[m.rank] = m;
          if (results.filter(Boolean).length === size) resolve(results[0]);
        }
      });
    }
  }).finally(() => { for (const p of procs) p.kill(); });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const size = Number(process.argv[2] ?? 2);
  const rank0 = await benchRanks(size);
  console.log(JSON.stringify({ ranks: size, cpus: cpus().length, cpu: cpus()[0]?.model, rank0 }));
}
