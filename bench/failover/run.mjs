#!/usr/bin/env node
// Failover benchmark through the public gRPC API of a real `nodespeed launch`: a steady
// load of seeded streams, then one worker killed (kill -9: its control stream closes at once) or
// hung (SIGSTOP: only the heartbeat timeout can tell), with and without a spare (--spares 1).
// Reports per run: detection time, whole recovery time, time from the kill to the next token of
// the affected streams, and the throughput (tokens/s in 250 ms bins) before, during and after.
// Writes bench/results/failover-<device>-<timestamp>.json. What each number means: README.md.
//
//   npm run build && node bench/failover/run.mjs [--model DIR] [--device cpu|cuda] [--replicas 2] [--tp 1] [--pp 1]
//        [--spares 0,1] [--faults kill,stop] [--concurrency 16] [--heartbeat-timeout 5] [--launch-args '...']
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, hostname, loadavg, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

import { launch, resumeAfterKill, steadyLoad, throughputBins, window } from './load.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const die = (msg) => {
  console.error(`bench/failover: ${msg}`);
  process.exit(2);
};
let a;
try {
  ({ values: a } = parseArgs({
    options: {
      model: { type: 'string', default: join(root, 'models', 'py-tiny') },
      device: { type: 'string', default: 'cpu' },
      replicas: { type: 'string', default: '2' },
      tp: { type: 'string', default: '1' },
      pp: { type: 'string', default: '1' },
      'victim-rank': { type: 'string' },
      spares: { type: 'string', default: '0,1' },
      faults: { type: 'string', default: 'kill,stop' },
      concurrency: { type: 'string', default: '16' },
      'prompt-len': { type: 'string' },
      'new-tokens': { type: 'string' },
      'heartbeat-interval': { type: 'string', default: '1' },
      'heartbeat-timeout': { type: 'string', default: '5' },
      before: { type: 'string', default: '4' },
      after: { type: 'string', default: '4' },
      'bin-ms': { type: 'string', default: '250' },
      'max-wait': { type: 'string', default: '120' },
      'kv-blocks': { type: 'string' },
      'launch-args': { type: 'string', default: '' },
      out: { type: 'string' },
    },
  }));
} catch (err) {
  die(err.message);
}
const num = (flag, min) => {
  const v = Number(a[flag]);
  if (!Number.isFinite(v) || v < min) die(`--${flag} must be a number >= ${min} (got ${a[flag]})`);
  return v;
};
if (!['cpu', 'cuda'].includes(a.device)) die(`--device must be cpu or cuda (got ${a.device})`);
const gpu = a.device === 'cuda';
const [replicas, tp, pp, concurrency] = [num('replicas', 1), num('tp', 1), num('pp', 1), num('concurrency', 1)];
const promptLen = a['prompt-len'] ? num('prompt-len', 1) : gpu ? 512 : 64;
const newTokens = a['new-tokens'] ? num('new-tokens', 1) : gpu ? 256 : 64;
const [hbInterval, hbTimeout] = [num('heartbeat-interval', 0.01), num('heartbeat-timeout', 0.01)];
const [beforeS, afterS, binMs, maxWaitS] = [num('before', 0.5), num('after', 0.5), num('bin-ms', 10), num('max-wait', 1)];
// Default victim: the last rank of replica 0 (its driver when tp = pp = 1, a non-driver TP rank or the last stage otherwise).
const victimRank = a['victim-rank'] !== undefined ? num('victim-rank', 0) : tp * pp - 1;
if (victimRank >= tp * pp * replicas) die(`--victim-rank ${victimRank} is not a rank of a ${replicas} x ${pp} x ${tp} layout`);
const spareVariants = a.spares.split(',').map((s) => {
  if (!/^\d+$/.test(s)) die(`--spares must be a list of integers >= 0 (got ${a.spares})`);
  return Number(s);
});
const faults = a.faults.split(',');
for (const f of faults) if (!['kill', 'stop'].includes(f)) die(`--faults: unknown fault ${f} (kill, stop)`);
if (!existsSync(join(a.model, 'config.json'))) die(`--model ${a.model}: no config.json`);

const clientModule = join(root, 'dist', 'client', 'index.js');
if (!existsSync(clientModule) || !existsSync(join(root, 'dist', 'worker', 'main.js'))) die('dist/ is missing; run `npm run build` first');
const { NodespeedClient } = await import(clientModule);
const config = JSON.parse(readFileSync(join(a.model, 'config.json'), 'utf8'));
if (promptLen + newTokens > (config.max_position_embeddings ?? Infinity))
  die(`--prompt-len ${promptLen} + --new-tokens ${newTokens} exceed the model's context of ${config.max_position_embeddings}`);
const promptIds = (loop, turn) => Array.from({ length: promptLen }, (_, i) => 2 + ((i * 7919 + (loop * 131 + turn) * 104729) % (config.vocab_size - 2)));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function runOne(spares, fault) {
  const world = tp * pp * replicas;
  const blocks = a['kv-blocks'] ?? String(Math.ceil(((promptLen + newTokens) / 16 + 1) * (concurrency + 1)));
  const args = ['--model', a.model, '--device', a.device, '--tp', String(tp), '--pp', String(pp), '--replicas', String(replicas),
    '--port', '0', '--http-port', '0', '--bind', '127.0.0.1', '--no-progress', '--kv-blocks', blocks,
    '--heartbeat-interval', String(hbInterval), '--heartbeat-timeout', String(hbTimeout), '--request-timeout', String(maxWaitS + 60),
    gpu ? '--num_gpus' : '--num_cpu_workers', String(world + spares), ...(spares ? ['--spares', String(spares)] : []),
    ...a['launch-args'].split(' ').filter(Boolean)];
  const run = { variant: spares ? `with ${spares} spare(s)` : 'without spare', spares, fault, signal: fault === 'kill' ? 'SIGKILL' : 'SIGSTOP',
    launch_args: args.slice(2).join(' ') };
  let c;
  try {
    c = await launch(join(root, 'bin', 'nodespeed'), args);
  } catch (err) {
    // e.g. `--spares` before this build has it: reported as not run, never faked.
    return { ...run, status: 'not run', reason: err.message };
  }
  const client = new NodespeedClient(c.address);
  let pid = 0;
  try {
    // The ready line waits for the replicas, not the spares: the fault must find the spare joined.
    let before = await client.clusterStatus();
    for (const t0 = Date.now(); spares && (before.spares ?? 0) < spares && Date.now() - t0 < 60_000; before = await client.clusterStatus()) await sleep(100);
    if (spares && (before.spares ?? 0) < spares) throw new Error(`only ${before.spares ?? 0} of ${spares} spare(s) joined within 60 s`);
    pid = before.workers.find((w) => w.rank === victimRank).pid;
    const load = steadyLoad(client, { concurrency, promptIds, maxTokens: newTokens });
    await sleep(1000 + beforeS * 1000); // 1 s of warm-up, then the measured steady state
    const killedAt = Date.now();
    process.kill(pid, run.signal);
    let f;
    const deadline = killedAt + maxWaitS * 1000;
    for (;;) {
      f = (await client.clusterStatus()).failures[0];
      if ((f && (f.recoveryMs > 0 || f.recovery === 'retired')) || Date.now() > deadline) break;
      await sleep(50);
    }
    const servingAt = f && f.recoveryMs > 0 ? f.atUnixMs + f.recoveryMs : null;
    await sleep(afterS * 1000);
    const stopAt = Date.now();
    const { requests, errors } = await load.stop();
    const after = await client.clusterStatus();
    const detection = f ? f.atUnixMs - killedAt : null;
    const killToServing = servingAt ? servingAt - killedAt : null;
    const bins = throughputBins(requests, killedAt, killedAt - beforeS * 1000, stopAt, binMs);
    const limit = hbTimeout * 1000 + 2000 + (fault === 'stop' ? c.startMs : 0);
    const steady = window(bins, -beforeS * 1000, 0);
    const during = killToServing ? window(bins, 0, killToServing) : null;
    return {
      ...run, status: f ? (servingAt ? 'recovered' : f.recovery) : 'no failure recorded', victim: { rank: victimRank, pid },
      launch_to_ready_ms: Math.round(c.startMs),
      detection_ms: detection, recovery_ms: f?.recoveryMs ?? null, kill_to_serving_again_ms: killToServing,
      streams: resumeAfterKill(requests, killedAt, f?.replayedRequests),
      bar: {
        rule: fault === 'kill' ? 'heartbeat timeout + 2 s' : 'heartbeat timeout + 2 s + reload (launch_to_ready_ms)',
        limit_ms: Math.round(limit), met: killToServing !== null && killToServing <= limit, applies: spares > 0,
      },
      throughput: {
        bin_ms: binMs, before: steady, during, after: servingAt ? window(bins, killToServing, stopAt - killedAt - binMs) : null,
        dip: during && steady.mean_tok_s ? 1 - during.mean_tok_s / steady.mean_tok_s : null,
        bins: bins.map((b) => [b.t_ms, b.tok_s]),
      },
      requests: requests.length, tokens: requests.reduce((n, r) => n + r.arrivals.length, 0), stream_errors: errors,
      failure: f ?? null, failover: after.failover, generation: { before: before.generation, after: after.generation },
      log: c.stderr().split('\n').filter((l) => /^failover: /.test(l)),
    };
  } finally {
    client.close();
    await c.stop();
    if (fault === 'stop' && pid) try { process.kill(pid, 'SIGCONT'); } catch { /* gone: the launcher killed it */ }
  }
}

// NODESPEED_COMMIT first: a copy of the tree may carry no .git, or another checkout's.
const { settings } = await import(pathToFileURL(join(root, 'dist', 'settings', 'index.js')).href);
let commit = settings().commit ?? 'unknown';
if (!settings().commit) try {
  const dirty = execFileSync('git', ['-C', root, 'status', '--porcelain', '--untracked-files=no'], { encoding: 'utf8' }).trim() ? '+dirty' : '';
  commit = execFileSync('git', ['-C', root, 'rev-parse', 'HEAD'], { encoding: 'utf8' }).trim() + dirty;
} catch { /* not a git checkout */ }
const result = {
  bench: 'failover', date: new Date().toISOString(), device: a.device, model: a.model, commit,
  machine: { host: hostname(), cpus: cpus().length, cpu_model: cpus()[0]?.model, mem_gib: +(totalmem() / 2 ** 30).toFixed(1), loadavg_1m: loadavg()[0] },
  command: `node bench/failover/run.mjs ${process.argv.slice(2).join(' ')}`.trim(),
  config: { replicas, tp, pp, victim_rank: victimRank, concurrency, prompt_len: promptLen, new_tokens: newTokens,
    heartbeat_interval_s: hbInterval, heartbeat_timeout_s: hbTimeout, before_s: beforeS, after_s: afterS },
  runs: [],
};
for (const spares of spareVariants) for (const fault of faults) {
  console.error(`bench/failover: ${spares ? `with ${spares} spare(s)` : 'without spare'}, ${fault === 'kill' ? 'kill -9' : 'SIGSTOP'} of rank ${victimRank} ...`);
  // A run that breaks (no spare joined, a victim that is not there) is recorded, and the next runs still go.
  const r = await runOne(spares, fault).catch((err) => ({ variant: spares ? `with ${spares} spare(s)` : 'without spare', spares, fault,
    status: 'not run', reason: err.message }));
  result.runs.push(r);
  if (r.status === 'not run') console.error(`  not run: ${r.reason.split('\n')[0]}`);
  else console.error(`  ${r.status}: detected ${r.detection_ms} ms, serving again ${r.kill_to_serving_again_ms} ms after the kill ` +
    `(recovery ${r.recovery_ms} ms); affected streams resumed ${r.streams.kill_to_resume_ms_max} ms after the kill (max); ` +
    `throughput ${r.throughput.before.mean_tok_s?.toFixed(0)} -> ${r.throughput.during?.mean_tok_s?.toFixed(0)} -> ${r.throughput.after?.mean_tok_s?.toFixed(0)} tok/s` +
    `${r.spares ? `; bar ${r.bar.met ? 'met' : 'MISSED'} (${r.bar.limit_ms} ms)` : ''}`);
}
const dir = join(root, 'bench', 'results');
mkdirSync(dir, { recursive: true });
const file = a.out ?? join(dir, `failover-${a.device}-${result.date.replace(/[:.]/g, '-')}.json`);
writeFileSync(file, JSON.stringify(result, null, 2) + '\n');
console.error(`bench/failover: wrote ${file}`);
