// The replica driver's JS work per decode step without an engine, in a tight loop: what the
// driver does per step while the device runs (src/worker/replica.ts driveAhead) — plan the next
// step (Scheduler.nextAhead), pack it (packStep), apply this step's sampled tokens
// (Scheduler.apply), settle them (Scheduler.settle: detokenize, stop checks, token updates) and
// serialize the updates as the worker's control stream writes them. S sequences decode T tokens
// each, their "sampled" tokens read from real text (Python files of this folder, tokenized with the
// model's tokenizer), so the detokenizer sees the pieces it sees in service. Steadier than
// driver-js.mjs on a shared VM (no engine thread competing, caches warm as on a busy GPU host);
// driver-js.mjs is the end-to-end figure. --root runs another checkout's build (its dist/).
// Prints one JSON line: microseconds per step in each part, the first round (JIT warm-up) left out.
// usage: node bench/decode/driver-js-loop.mjs [MODEL_DIR=models/py-tiny] [--root DIR] [--streams 128] [--tokens 400] [--rounds 6]
import { readFileSync, readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';

const here = resolve(import.meta.dirname, '..', '..');
const { positionals, values } = parseArgs({ allowPositionals: true, options: {
  root: { type: 'string', default: here }, streams: { type: 'string', default: '128' }, tokens: { type: 'string', default: '400' },
  rounds: { type: 'string', default: '6' }, label: { type: 'string' } } });
const dir = positionals[0] ?? join(here, 'models', 'py-tiny');
const S = Number(values.streams), T = Number(values.tokens), ROUNDS = Number(values.rounds);
const from = (p) => import(pathToFileURL(join(resolve(values.root), 'dist', p)).href);
const { Scheduler } = await from('worker/scheduler.js');
const { loadTokenizer } = await from('model/index.js');
const { packStep } = await from('native/step-pack.js');
const { samplingToWire, validateSampling } = await from('protocol/sampling.js');
const { CONTROL_SERVICE, controlPackageDefinition } = await from('protocol/proto.js');
const { controlService } = await from('worker/control-client.js');
// The worker's serializer for its control stream (builds before it had its own: the loaded definition's).
const serialize = (controlService?.() ?? controlPackageDefinition()[CONTROL_SERVICE]).Connect.requestSerialize;

const tok = await loadTokenizer(dir);
const text = readdirSync(import.meta.dirname).filter((f) => f.endsWith('.py')).sort().map((f) => readFileSync(join(import.meta.dirname, f), 'utf8')).join('\n');
const ids = tok.encode(text, { addSpecialTokens: false });
const parts = { plan: 0, pack: 0, apply: 0, settle: 0, serialize: 0 };
let steps = 0;
for (let r = 0; r < ROUNDS; r++) {
  const sched = new Scheduler(S * Math.ceil((8 + T) / 16) + 16, 16, tok, 2048, 4096, 1 << 20);
  for (let i = 0; i < S; i++) {
    sched.submit({ epoch: '1', requestId: `req-${r}-${i}-0123456789abcdef`, promptIds: ids.slice(i, i + 8), generatedIds: [], priority: 0, classRank: 0,
      params: samplingToWire(validateSampling({ maxTokens: T, temperature: 0.8, seed: i + 1, ignoreEos: true })) });
  }
  let cur = sched.next(1);
  for (let k = 0; ; k++) {
    // Sequence j of the step samples the text's token at its own offset, moving on a token a step.
    let j = 0;
    const sampled = new Int32Array(cur.nSample);
    for (const m of cur.members) if (m.sample) sampled[j] = ids[(j++ * 37 + k) % ids.length];
    const t0 = performance.now();
    const ahead = sched.nextAhead(cur);
    const t1 = performance.now();
    if (ahead) packStep({ seqs: ahead.seqs, ...(ahead.tokenFrom ? { tokenFrom: ahead.tokenFrom } : {}) });
    const t2 = performance.now();
    const applied = sched.apply(cur, sampled);
    const t3 = performance.now();
    const updates = sched.settle(applied);
    const t4 = performance.now();
    if (updates.length) serialize({ tokens: { epoch: '1', updates } });
    const t5 = performance.now();
    if (r > 0 && k > 10 && k < T - 10) {  // every sequence decoding
      parts.plan += t1 - t0;
      parts.pack += t2 - t1;
      parts.apply += t3 - t2;
      parts.settle += t4 - t3;
      parts.serialize += t5 - t4;
      steps++;
    }
    if (!ahead) break;
    cur = ahead;
  }
}
const us = (v) => Math.round((v / steps) * 10000) / 10;
console.log(JSON.stringify({ label: values.label ?? values.root, streams: S, steps, us_per_step: Object.fromEntries(Object.entries(parts).map(([k, v]) => [k, us(v)])),
  total_us: us(Object.values(parts).reduce((a, b) => a + b, 0)) }));
