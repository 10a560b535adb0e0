#!/usr/bin/env node
// One load generator of bench/hetero, in a process of its own (a flood of hundreds of streams must
// not delay the realtime client's reading of its own first tokens):
//   --mode realtime   an open loop: one request every 1/--rate s for --duration s
//   --mode flood      a closed loop: --concurrency streams, each sending its next request as soon as
//                     the previous one ends, for --duration s (those still running are cancelled)
// Prompts are --prompt-len token ids derived from --salt (sent as ids, no tokenizer), --new-tokens
// each, no EOS stop, class --priority (none: the server's default). Before the clock starts, the
// channel is opened and one request (one token) goes through unmeasured: a client of a server keeps
// its channel, so the connection's setup and the first call of a fresh process (each phase starts
// one) are not the server's time to first token (they were a phase's slowest request, 30-46 ms). Prints one JSON line: every
// request's id, start, first-token and end times and tokens, the tokens received per 100 ms bin
// (epoch ms), so the caller can count tokens in any window, and this process's own event-loop delay
// (a late client would show up as late first tokens). Times are epoch ms with sub-ms precision, the
// request trace's clock (Date.now() is whole ms: a 1 ms step is 20% of a 5 ms time to first token).
import { setMaxListeners } from 'node:events';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const { values: a } = parseArgs({
  options: {
    address: { type: 'string' },
    mode: { type: 'string' },
    rate: { type: 'string', default: '4' },
    concurrency: { type: 'string', default: '64' },
    duration: { type: 'string', default: '20' },
    'prompt-len': { type: 'string', default: '128' },
    'new-tokens': { type: 'string', default: '64' },
    priority: { type: 'string' },
    vocab: { type: 'string', default: '2048' },
    salt: { type: 'string', default: '1' },
  },
});
const { NodespeedClient } = await import(join(root, 'dist', 'client', 'index.js'));
// With NODESPEED_REQUEST_TRACE (run.mjs --trace), this process's event loop and GC pauses go to the
// server's trace file too (role "client"): the slowest requests' listing then shows the client's pauses.
const { requestTrace } = await import(join(root, 'dist', 'protocol', 'request-trace.js'));
requestTrace('client');
const client = new NodespeedClient(a.address);
const durationMs = Number(a.duration) * 1000;
const promptLen = Number(a['prompt-len']);
const newTokens = Number(a['new-tokens']);
const vocab = Number(a.vocab);
const salt = Number(a.salt);
const priority = a.priority === undefined ? {} : { priority: /^[+-]?\d+$/.test(a.priority) ? Number(a.priority) : a.priority };

function promptIds(k) {
  return Array.from({ length: promptLen }, (_, i) => 2 + ((i * 7919 + (k + salt * 100_003) * 104_729) % (vocab - 2)));
}

/** Epoch ms with sub-ms precision, as src/protocol/request-trace.ts stamps the server's events. */
const now = () => performance.timeOrigin + performance.now();

const loopDelay = monitorEventLoopDelay({ resolution: 1 });
loopDelay.enable();
const BIN_MS = 100;
const bins = new Map();
const requests = [];
const controller = new AbortController();
setMaxListeners(0, controller.signal);  // one listener per stream of the flood

async function one(k) {
  const r = { id: null, start: now(), first: null, end: null, tokens: 0, error: null };
  requests.push(r);
  try {
    for await (const m of client.generate({ promptIds: promptIds(k), maxTokens: newTokens, ignoreEos: true, ...priority }, { signal: controller.signal })) {
      r.id ||= m.requestId;
      if (!m.tokenIds.length) continue;
      const at = now();
      r.first ??= at;
      r.tokens += m.tokenIds.length;
      const b = Math.floor(at / BIN_MS) * BIN_MS;
      bins.set(b, (bins.get(b) ?? 0) + m.tokenIds.length);
    }
    r.end = now();
  } catch (err) {
    if (!controller.signal.aborted) r.error = err.message;
  }
}

let k = 0;
await client.waitForReady();
for await (const _ of client.generate({ promptIds: promptIds(k++), maxTokens: 1, ignoreEos: true, ...priority }));

loopDelay.reset();  // the loop's delay while the clock runs, not the process's start and the warm-up call
const t0 = now();
const until = t0 + durationMs;
const running = [];
if (a.mode === 'realtime') {
  const every = 1000 / Number(a.rate);
  for (let i = 0; now() < until; i++) {
    running.push(one(k++));
    const next = t0 + (i + 1) * every;
    await new Promise((r) => setTimeout(r, Math.max(0, next - now())));
  }
  await Promise.all(running);
} else if (a.mode === 'flood') {
  const loop = async () => {
    while (now() < until) await one(k++);
  };
  const loops = Array.from({ length: Number(a.concurrency) }, loop);
  setTimeout(() => controller.abort(), durationMs).unref();
  await Promise.all(loops);
} else {
  console.error(`bench/hetero/load: --mode realtime|flood (got ${a.mode})`);
  process.exit(2);
}
client.close();
const ms = (ns) => Math.round(ns / 1e3) / 1e3;
const loop = { p50_ms: ms(loopDelay.percentile(50)), p99_ms: ms(loopDelay.percentile(99)), max_ms: ms(loopDelay.max) };
process.stdout.write(JSON.stringify({ mode: a.mode, pid: process.pid, t0, until, loop, requests, bins: [...bins].sort((x, y) => x[0] - y[0]) }) + '\n');
