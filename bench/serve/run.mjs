#!/usr/bin/env node
// Serving benchmark through the public APIs of a real `nodespeed launch` (coordinator +
// worker processes): batch-1 decode tokens/s at tp=1 and tp=2 (gRPC), and generated tokens/s with
// many concurrent streams at tp=1 through gRPC and then through the OpenAI HTTP API (streamed
// /v1/completions, as vLLM's benchmark_serving sends them) on the same cluster, each with TTFT, TPOT
// and ITL percentiles; optionally beside HF transformers (bench/decode/hf_generate.py, GPU hosts).
// Writes bench/results/serve-<device>-<timestamp>.json.
//
//   npm run build && node bench/serve/run.mjs [--model DIR] [--device cpu|cuda] [--streams 64]
//        [--prompt-len 512] [--new-tokens 256] [--decode-tokens 128] [--hf] [--launch-args='--max-batch-tokens 4096'] (the = form: the value starts with --)
//        [--precisions bf16,int8,fp8,fp8+kv-fp8] [--api-rounds 2] (HTTP vs gRPC, first precision only: rounds of one
//        run each, in A B B A order, after the first gRPC run; 0: none)
// CPU defaults (py-tiny, context 512): --prompt-len 128 --new-tokens 128.
// --precisions: after the first precision (every --tp), each further one at tp 1 (--quantize /
// --kv-cache-dtype, docs/QUANTIZATION.md): batch 1 and the concurrent streams, their ratio to bf16
// in the same run, and the concurrent run as a fraction of its own roofline (its bytes per weight
// and per cached element; W8A8 prefill at the fp8 matmul peak measured beside HF).
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

import { servingRoofline } from './roofline.mjs';
import { parseArgs } from 'node:util';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const { values: a } = parseArgs({
  options: {
    model: { type: 'string', default: join(root, 'models', 'py-tiny') },
    device: { type: 'string', default: 'cpu' },
    streams: { type: 'string', default: '64' },
    'prompt-len': { type: 'string' },
    'new-tokens': { type: 'string' },
    'decode-tokens': { type: 'string', default: '128' },
    'kv-blocks': { type: 'string' },
    tp: { type: 'string', default: '1,2' },
    hf: { type: 'boolean', default: false },
    'launch-args': { type: 'string', default: '' },
    precisions: { type: 'string', default: 'bf16' },
    'api-rounds': { type: 'string', default: '2' },
    out: { type: 'string' },
  },
});
const gpu = a.device === 'cuda';
const streams = Number(a.streams);
const promptLen = Number(a['prompt-len'] ?? (gpu ? 512 : 128));
const newTokens = Number(a['new-tokens'] ?? (gpu ? 256 : 128));
const decodeTokens = Number(a['decode-tokens']);
const tps = a.tp.split(',').map(Number);
const PRECISION_FLAGS = { bf16: [], int8: ['--quantize', 'int8'], fp8: ['--quantize', 'fp8'], 'fp8+kv-fp8': ['--quantize', 'fp8', '--kv-cache-dtype', 'fp8'],
  'bf16+kv-fp8': ['--kv-cache-dtype', 'fp8'] };
const precisions = a.precisions.split(',');
for (const p of precisions) if (!PRECISION_FLAGS[p]) { console.error(`--precisions: ${p} is not one of ${Object.keys(PRECISION_FLAGS).join(', ')}`); process.exit(1); }
const apiRounds = Number(a['api-rounds']);

const clientModule = join(root, 'dist', 'client', 'index.js');
if (!existsSync(clientModule) || !existsSync(join(root, 'dist', 'worker', 'main.js'))) {
  console.error('bench/serve: dist/ is missing; run `npm run build` first');
  process.exit(1);
}
const { NodespeedClient } = await import(clientModule);
const config = JSON.parse(readFileSync(join(a.model, 'config.json'), 'utf8'));
if (promptLen + newTokens > (config.max_position_embeddings ?? Infinity)) {
  console.error(`bench/serve: --prompt-len ${promptLen} + --new-tokens ${newTokens} exceed the model's context of ${config.max_position_embeddings}`);
  process.exit(1);
}

/** Starts `nodespeed launch` and resolves at its ready line. */
function launch(tp, extra = []) {
  const workers = gpu ? ['--num_gpus', String(tp)] : ['--num_cpu_workers', String(tp)];
  const blocks = a['kv-blocks'] ?? String(Math.ceil(((promptLen + newTokens) / 16 + 1) * (streams + 1)));
  const args = [join(root, 'bin', 'nodespeed'), 'launch', '--model', a.model, '--device', a.device, '--tp', String(tp),
    '--port', '0', '--http-port', '0', '--bind', '127.0.0.1', '--no-progress', '--kv-blocks', blocks, ...workers, ...extra,
    ...a['launch-args'].split(' ').filter(Boolean)];
  const proc = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  proc.stderr.on('data', (d) => (err += d));
  return new Promise((resolveReady, reject) => {
    let out = '';
    proc.stdout.on('data', (d) => {
      out += d;
      const line = out.split('\n').find((l) => l.startsWith('nodespeed ready '));
      if (line) resolveReady({ proc, address: line.split(' ')[2], http: line.match(/ http=(\S+)/)?.[1],
        stop: () => new Promise((r) => (proc.once('exit', r), proc.kill('SIGINT'))) });
    });
    proc.once('exit', (code) => reject(new Error(`launch exited with ${code}:\n${err}`)));
  });
}

// Deterministic prompt ids of the requested length (no BOS games: ids are sent as given).
function promptIds(len, salt) {
  const v = config.vocab_size;
  return Array.from({ length: len }, (_, i) => 2 + ((i * 7919 + salt * 104729) % (v - 2)));
}

// One stream's timing, as vLLM's benchmark_serving measures it: TTFT (request to the first token),
// ITL (the gaps between successive token-carrying messages), TPOT ((latency - TTFT) / (tokens - 1)).
function timing(t0, arrivals, n) {
  const first = arrivals[0], last = arrivals[arrivals.length - 1];
  const itls = arrivals.slice(1).map((t, i) => t - arrivals[i]);
  return { n, ttftMs: first - t0, itls, tpotMs: n > 1 ? (last - first) / (n - 1) : 0,
    decodeTokS: n > 1 ? ((n - 1) * 1000) / (last - first) : 0, wallMs: performance.now() - t0 };
}

async function streamOne(client, req) {
  const t0 = performance.now();
  const arrivals = [];
  let n = 0;
  for await (const m of client.generate(req)) {
    if (m.tokenIds.length) {
      arrivals.push(performance.now());
      n += m.tokenIds.length;
    }
  }
  return timing(t0, arrivals, n);
}

// The same request through POST /v1/completions with stream: true: server-sent events read off the
// socket as they come (fetch's body stream), token count from the final usage chunk.
async function streamHttp(base, req) {
  const t0 = performance.now();
  const res = await fetch(`http://${base}/v1/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: '', prompt: req.promptIds, max_tokens: req.maxTokens, ignore_eos: true, temperature: 0, stream: true,
      stream_options: { include_usage: true } }),
  });
  if (!res.ok) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  const arrivals = [];
  let n = 0, buf = '';
  const dec = new TextDecoder();
  for await (const bytes of res.body) {
    buf += dec.decode(bytes, { stream: true });
    let at;
    while ((at = buf.indexOf('\n\n')) >= 0) {
      const ev = buf.slice(0, at);
      buf = buf.slice(at + 2);
      if (!ev.startsWith('data: ') || ev === 'data: [DONE]') continue;
      const chunk = JSON.parse(ev.slice(6));
      if (chunk.usage) n = chunk.usage.completion_tokens;
      if (chunk.choices?.[0]?.text) arrivals.push(performance.now());
    }
  }
  return timing(t0, arrivals, n);
}

// Mean, median, p90, p99 (vLLM's benchmark_serving reports mean, median and p99; p90 for the tail shape).
function stats(xs) {
  const v = [...xs].sort((x, y) => x - y);
  const pct = (p) => v[Math.min(v.length - 1, Math.max(0, Math.ceil((p / 100) * v.length) - 1))];
  return { mean: v.reduce((a, b) => a + b, 0) / v.length, median: pct(50), p90: pct(90), p99: pct(99) };
}

async function batch1(client) {
  await streamOne(client, { promptIds: promptIds(32, 0), maxTokens: 8, ignoreEos: true }); // warm-up
  const runs = [];
  for (let i = 0; i < 3; i++) runs.push(await streamOne(client, { promptIds: promptIds(32, i + 1), maxTokens: decodeTokens, ignoreEos: true }));
  runs.sort((x, y) => x.decodeTokS - y.decodeTokS);
  return { median_decode_tok_s: runs[1].decodeTokS, ttft_ms: runs[1].ttftMs, runs: runs.map((r) => r.decodeTokS) };
}

/** `streams` concurrent streams through `one` (gRPC or HTTP); both runs use the same prompts. */
async function concurrent(client, one) {
  await one({ promptIds: promptIds(promptLen, 999), maxTokens: 4, ignoreEos: true }); // warm-up
  const before = await client.clusterStatus();
  const t0 = performance.now();
  const res = await Promise.all(Array.from({ length: streams }, (_, i) =>
    one({ promptIds: promptIds(promptLen, i + 10), maxTokens: newTokens, ignoreEos: true })));
  const wall = (performance.now() - t0) / 1000;
  const generated = res.reduce((s, r) => s + r.n, 0);
  const status = await client.clusterStatus();
  const ttfts = res.map((r) => r.ttftMs).sort((x, y) => x - y);
  return {
    streams, prompt_len: promptLen, new_tokens: newTokens, generated_tokens: generated, wall_s: wall,
    generated_tok_s: generated / wall, ttft_ms_p50: ttfts[Math.floor(ttfts.length / 2)], ttft_ms_max: ttfts[ttfts.length - 1],
    ttft_ms: stats(ttfts), tpot_ms: stats(res.map((r) => r.tpotMs)), itl_ms: stats(res.flatMap((r) => r.itls)),
    max_step_batch: status.replicas[0].maxStepBatch, steps: Number(status.replicas[0].steps) - Number(before.replicas[0].steps),
    start_epoch_ms: performance.timeOrigin + t0,  // lines up with NODESPEED_STEP_TRACE's epochMs
  };
}

const line = (name, c) => `tp=1 ${name}: ${streams} streams x ${newTokens} tokens (prompt ${promptLen}): ${c.generated_tok_s.toFixed(1)} generated tok/s; ` +
  `TTFT median ${c.ttft_ms.median.toFixed(1)} / p99 ${c.ttft_ms.p99.toFixed(1)} ms, TPOT median ${c.tpot_ms.median.toFixed(2)} / p99 ${c.tpot_ms.p99.toFixed(2)} ms, ` +
  `ITL median ${c.itl_ms.median.toFixed(2)} / p99 ${c.itl_ms.p99.toFixed(2)} ms`;

// NODESPEED_COMMIT first: a copy of the tree may carry no .git, or another checkout's.
const { settings } = await import(pathToFileURL(join(root, 'dist', 'settings', 'index.js')).href);
function commit() {
  if (settings().commit) return settings().commit;
  const r = spawnSync('git', ['rev-parse', 'HEAD'], { cwd: root, encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : 'unknown';
}

const result = {
  bench: 'serve', date: new Date().toISOString(), commit: commit(), device: a.device, model: a.model,
  // The load average at the start: on a shared machine, other work competes for the cores.
  machine: { cpus: cpus().length, cpu_model: cpus()[0]?.model, mem_gib: +(totalmem() / 2 ** 30).toFixed(1), loadavg_1m: loadavg()[0] },
  command: `node bench/serve/run.mjs ${process.argv.slice(2).join(' ')}`.trim(),
  batch1: {}, concurrent: null, concurrent_http: null, hf: null,
};
const byPrecision = {};
for (const [i, p] of precisions.entries()) {
  const r = { batch1: {}, concurrent: null };
  for (const tp of i === 0 ? tps : tps.filter((t) => t === 1)) {
    const c = await launch(tp, PRECISION_FLAGS[p]);
    const client = new NodespeedClient(c.address);
    try {
      r.batch1[`tp${tp}`] = await batch1(client);
      // What each rank's engine runs (kernels, collectives, switches), as it described itself at Ready.
      const status = await client.clusterStatus();
      r.batch1[`tp${tp}`].engines = status.workers.map((w) => w.engine);
      r.precision = status.replicas[0].precision;
      console.error(`${p} tp=${tp}: batch-1 decode ${r.batch1[`tp${tp}`].median_decode_tok_s.toFixed(1)} tok/s`);
      if (tp === 1) {
        const grpcOne = (req) => streamOne(client, req);
        r.concurrent = await concurrent(client, grpcOne);
        console.error(line(`${p} gRPC`, r.concurrent));
        if (i === 0 && apiRounds > 0) {
          if (!c.http) throw new Error('bench/serve: the ready line has no http= address');
          // HTTP beside gRPC on the same cluster. The first gRPC run above also warms every batch size
          // (CUDA graph captures, allocator growth), so the comparison uses only the runs after it,
          // alternated HTTP gRPC gRPC HTTP ... so that neither API always runs first or on a warmer GPU.
          const httpOne = (req) => streamHttp(c.http, req);
          const rounds = [];
          for (let k = 0; k < apiRounds; k++) {
            const order = k % 2 === 0 ? ['http', 'grpc'] : ['grpc', 'http'];
            const round = {};
            for (const api of order) {
              round[api] = await concurrent(client, api === 'http' ? httpOne : grpcOne);
              console.error(line(`round ${k + 1} ${api === 'http' ? 'HTTP' : 'gRPC'}`, round[api]));
            }
            rounds.push(round);
          }
          result.concurrent_http = rounds[rounds.length - 1].http;
          result.api_rounds = rounds.map((x) => ({ grpc: x.grpc, http: x.http, http_over_grpc: x.http.generated_tok_s / x.grpc.generated_tok_s }));
          const sum = (api) => rounds.reduce((t, x) => t + x[api].generated_tok_s, 0);
          result.http_over_grpc = sum('http') / sum('grpc');
          console.error(`HTTP / gRPC generated tok/s over ${apiRounds} rounds: ${result.http_over_grpc.toFixed(3)} ` +
            `(per round ${result.api_rounds.map((x) => x.http_over_grpc.toFixed(3)).join(', ')})`);
        }
      }
    } finally {
      client.close();
      await c.stop();
    }
  }
  byPrecision[p] = r;
}
({ batch1: result.batch1, concurrent: result.concurrent } = byPrecision[precisions[0]]);
if (result.batch1.tp1 && result.batch1.tp2) result.tp2_over_tp1 = result.batch1.tp2.median_decode_tok_s / result.batch1.tp1.median_decode_tok_s;
if (a.hf) {
  const hf = spawnSync('python3', [join(root, 'bench', 'decode', 'hf_generate.py'), a.model, String(promptLen), String(newTokens), `1,${streams}`], { encoding: 'utf8' });
  result.hf = hf.status === 0 ? JSON.parse(hf.stdout) : { error: hf.stderr.trim().split('\n').pop() };
}
// The roofline of the concurrent workload (bench/serve/roofline.mjs), from the copy bandwidth and
// matmul FLOP/s measured beside HF on the same GPU; per precision, at its bytes per element (int8
// quantizes the LM head too, fp8 leaves it 16-bit) and, for W8A8, the measured fp8 matmul peak
// (twice the bf16 one when torch could not measure it: the H100/H200 datasheet ratio).
if (result.hf?.copy && result.hf?.matmul) {
  const { loadModelConfig } = await import(join(root, 'dist', 'model', 'index.js'));
  const cfg = loadModelConfig(a.model);
  for (const [p, r] of Object.entries(byPrecision)) {
    if (!r.concurrent) continue;
    const fp8 = p.startsWith('fp8');
    const roof = servingRoofline(cfg, { streams, promptLen, newTokens, bytesPerS: result.hf.copy.bytes_per_s,
      flopsPerS: fp8 ? (result.hf.matmul_fp8?.flops_per_s ?? 2 * result.hf.matmul.flops_per_s) : result.hf.matmul.flops_per_s,
      linearBytesPerElement: p === 'int8' || fp8 ? 1 : 2, headBytesPerElement: p === 'int8' ? 1 : 2, kvBytesPerElement: p.endsWith('kv-fp8') ? 1 : 2 });
    r.concurrent.roofline = { ...roof, fraction: r.concurrent.generated_tok_s / roof.generatedTokS };
    console.error(`${p}: roofline of ${streams} streams: ${roof.generatedTokS.toFixed(0)} generated tok/s (prefill ${roof.prefillS.toFixed(2)} s + decode ` +
      `${roof.decodeS.toFixed(2)} s); measured ${(100 * r.concurrent.roofline.fraction).toFixed(1)}% of it`);
  }
}
if (precisions.length > 1 || precisions[0] !== 'bf16') {
  result.precisions = byPrecision;
  const base = byPrecision.bf16;
  for (const [p, r] of Object.entries(byPrecision)) {
    if (!base || p === 'bf16') continue;
    r.vs_bf16 = { batch1: r.batch1.tp1.median_decode_tok_s / base.batch1.tp1.median_decode_tok_s,
      concurrent: r.concurrent && base.concurrent ? r.concurrent.generated_tok_s / base.concurrent.generated_tok_s : null };
    console.error(`${p} / bf16: batch 1 ${r.vs_bf16.batch1.toFixed(2)}x, ${streams} streams ${r.vs_bf16.concurrent?.toFixed(2)}x`);
  }
  if (byPrecision['fp8+kv-fp8']?.vs_bf16) result.bars = { fp8KvFp8ConcurrentAtLeast1_6xBf16: byPrecision['fp8+kv-fp8'].vs_bf16.concurrent >= 1.6 };
}
const dir = join(root, 'bench', 'results');
mkdirSync(dir, { recursive: true });
const file = a.out ?? join(dir, `serve-${a.device}-${result.date.replace(/[:.]/g, '-')}.json`);
writeFileSync(file, JSON.stringify(result, null, 2) + '\n');
console.log(JSON.stringify(result, null, 2));
console.error(`bench/serve: wrote ${file}`);
