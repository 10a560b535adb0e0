// How long a checkpoint takes to load into one CUDA engine (weights, the GEMM warm-up, cuBLASLt
// tuning and the decode-graph captures), for A/B runs of those switches: env VAR=value ... node
// bench/decode/load-time.mjs MODEL_DIR. Prints one JSON line: loadSeconds and the engine's description.
import { openCudaEngine, requireCuda } from '../../test/gpu/lib.mjs';

requireCuda();
const dir = process.argv[2];
if (!dir) { console.error('usage: node bench/decode/load-time.mjs MODEL_DIR'); process.exit(2); }
const { engine, loadSeconds } = await openCudaEngine(dir, { dtype: 'bf16', gpuMemoryFraction: 0.5 });
console.log(JSON.stringify({ loadSeconds: +loadSeconds.toFixed(3), describe: engine.describe() }));
engine.dispose();
