// The JS thread's synchronous share of engine.step: from the call to its return with the promise,
// i.e. turning the request into the native step's input. On a GPU host the device idles through
// it (the worker thread starts the backend only after it), so it is on every step's critical path.
// Two shapes: B decode sequences of one token each, and S prefills of P tokens each. The CPU
// backend is enough (the sync part does not depend on the device); the model needs maxPosition
// >= P (e.g. `nodespeed model init --preset tiny DIR`, then max_position_embeddings 1024).
// A CPU prefill step computes for long enough to evict the JS thread's data from the caches,
// which a GPU step does not: the prefills are measured a second time at a position past
// maxPosition, which the backend rejects at once, so the sync part runs with warm caches.
// usage: node bench/decode/step-sync.mjs MODEL_DIR [B=127] [S=16] [P=512] [ROUNDS=300]
import { BlockAllocator, Engine } from '../../dist/engine/index.js';

const [dir, B = 127, S = 16, P = 512, ROUNDS = 300] = process.argv.slice(2, 7).map((v, i) => (i ? Number(v) : v));
if (!dir) throw new Error('usage: node bench/decode/step-sync.mjs MODEL_DIR [B=127] [S=16] [P=512] [ROUNDS=300]');
const engine = await Engine.load(dir, { device: 'cpu', kvBlocks: 4096, threads: 1 });
if (engine.maxPosition < P + 1) throw new Error(`${dir}: maxPosition ${engine.maxPosition} < P + 1 = ${P + 1}`);
const alloc = new BlockAllocator(engine.kvBlocks, engine.kvBlockSize);
const V = engine.config.vocabSize;

async function measure(name, seqs, rounds, rejected = false) {
  const sync = [];
  for (let r = 0; r < rounds; r++) {
    const t0 = performance.now();
    const p = engine.step({ seqs });
    sync.push(performance.now() - t0);
    if (rejected) await p.then(() => { throw new Error('expected the backend to reject'); }, (e) => { if (!/maxPosition/.test(e.message)) throw e; });
    else await p;
  }
  sync.sort((a, b) => a - b);
  const q = (f) => sync[Math.floor(f * (sync.length - 1))].toFixed(3);
  console.log(`${name}: sync part of engine.step p50 ${q(0.5)} ms p90 ${q(0.9)} ms (${rounds} steps)`);
}

const decode = Array.from({ length: B }, (_, i) => ({ tokens: Int32Array.of(5), pos: 100, blockTable: alloc.allocate(`d${i}`, 101),
  seed: BigInt(i + 1), temperature: 0, topK: 0, topP: 1, sample: true }));
await measure(`${B} decode seqs`, decode, ROUNDS);
const prefill = Array.from({ length: S }, (_, i) => ({ tokens: Int32Array.from({ length: P }, (_, j) => (i * 31 + j * 7) % V), pos: 0,
  blockTable: alloc.allocate(`p${i}`, P), seed: i + 1, temperature: 0.7, topK: 40, topP: 0.9 }));
await measure(`${S} prefills of ${P} tokens`, prefill, Math.max(20, Math.floor(ROUNDS / 10)));
const late = prefill.map((s) => ({ ...s, pos: engine.maxPosition }));
await measure(`${S} prefills of ${P} tokens, rejected at once (warm caches)`, late, ROUNDS, true);
engine.dispose();
