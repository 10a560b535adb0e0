#!/usr/bin/env bash
# A GPU host's record run: the GPU test suite and the serving benchmark, everything under $OUT.
#   tests  `npx vitest run test/gpu`: HF fixtures, py-tiny and sampling; the 7B shape vs HF transformers
#          (tp 1; tp 2 and pp 2 with 2 GPUs); decode graphs vs eager bit for bit; flash vs SIMT attention;
#          the attention kernels (with nvcc); --hf-rounding; tp 2 and the NCCL comm with 2 GPUs.
#          Suites that cannot run here say why and are skipped. Their measurements go to $OUT/results.
#   serve  bench/serve: 64 streams x 256 new tokens (512-token prompts) at tp 1 (and batch 1 at tp 1
#          and 2 with 2 GPUs) beside HF transformers eager generate, with the step trace.
#   moe    bench/moe: a Qwen1.5-MoE-A2.7B-shaped random checkpoint (`model init --arch qwen2_moe
#          --preset a2.7b`, 28.6 GB, in $MOE_MODEL, default /tmp/qwen15-moe-a2.7b) decoding at batch 1
#          against its roofline and at batch 32 beside HF transformers eager (bench/moe/hf_moe.py).
#   hetero bench/hetero (only when named): the GPU replica (bf16) plus 2 CPU replicas (int8) pinned to 6 of this host's cores
#          under a realtime stream and a batch flood, beside each alone and the GPU replica with FIFO, on a
#          1B-shape checkpoint (NODESPEED_TEST_MODEL_1B, default /tmp/llama-1b, made when missing).
#
# usage: bash bench/gpu-visit.sh [tests] [serve] [moe] [hetero]     (default: tests serve)
#   TESTS="fixtures graph-check"  run only these test/gpu files (to split the suite over several calls;
#   the 7B ones, model-7b graph-check attention-flash, take the longest);  NO_HF=1  serve without HF
#   OUT (default /tmp/nodespeed-gpu-visit); NODESPEED_TEST_MODEL_7B (default /tmp/llama-7b-shape: made
#   with `nodespeed model init --preset 7b` when missing); NODESPEED_COMMIT names the commit the
#   results record when this copy of the tree has no .git.
#
# The host needs, in this checkout: node_modules (`npm install`, or a copy of another checkout's),
# dist/ (`npx tsc`) and build/Release/nodespeed.node built where nvcc is (`npm run build:native`);
# Node >= 20 on PATH (a Node binary copied from a Linux x86-64 machine runs as is: it needs only
# glibc); python3 with torch and transformers for the HF sides. The addon dlopens cuBLAS and NCCL
# there (LD_LIBRARY_PATH, /usr/local/cuda/lib64, Python wheels' nvidia/*/lib; NODESPEED_CUBLAS /
# NODESPEED_NCCL name a file). Exit status: 0 when every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
steps=${*:-tests serve}
OUT=${OUT:-/tmp/nodespeed-gpu-visit}
MODEL=${NODESPEED_TEST_MODEL_7B:-/tmp/llama-7b-shape}
mkdir -p "$OUT"
export RESULTS_DIR=$OUT/results NCCL_NVLS_ENABLE=0
export NODESPEED_COMMIT=${NODESPEED_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}

missing=()
if ! command -v node >/dev/null; then missing+=("node (Node >= 20 on PATH)")
elif [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then missing+=("Node >= 20 (found $(node -v))"); fi
if [[ " $steps " == *" tests "* ]]; then [ -x node_modules/.bin/vitest ] || missing+=("node_modules (npm install)")
else [ -d node_modules/@grpc/grpc-js ] || missing+=("node_modules (npm install --omit=dev)"); fi
[ -f dist/cli/index.js ] || missing+=("dist/ (npx tsc)")
[ -f build/Release/nodespeed.node ] || missing+=("build/Release/nodespeed.node (npm run build:native)")
if [ ${#missing[@]} -gt 0 ]; then printf 'bench/gpu-visit.sh: missing %s\n' "${missing[@]}" >&2; exit 2; fi
node -e "const i = require('./build/Release/nodespeed.node').info().cuda; console.log(JSON.stringify(i));
  if (!i.available) { console.error('bench/gpu-visit.sh: the addon sees no usable GPU: ' + i.reason); process.exit(2); }" > "$OUT/cuda.json" || exit 2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpus.txt"
echo "commit $NODESPEED_COMMIT" | tee "$OUT/commit.txt"
ngpu=$(nvidia-smi -L | wc -l)

status=0
for step in $steps; do
  case $step in
    tests)
      files=(test/gpu); [ -n "${TESTS:-}" ] && files=(); for t in ${TESTS:-}; do files+=("test/gpu/$t.test.ts"); done
      name=gpu-tests; [ -n "${TESTS:-}" ] && name=gpu-tests-$(echo $TESTS | tr ' ' '+')
      node_modules/.bin/vitest run "${files[@]}" --reporter=verbose --reporter=json --outputFile.json="$OUT/$name.json" 2>&1 | tee "$OUT/$name.log"
      [ "${PIPESTATUS[0]}" = 0 ] || status=1 ;;
    serve)
      if [ ! -f "$MODEL/config.json" ]; then
        timeout 900 node bin/nodespeed model init --preset 7b --dtype bf16 "$MODEL" > "$OUT/model-init.log" 2>&1 || { echo "model init failed: $OUT/model-init.log"; status=1; continue; }
      fi
      tps=1; [ "$ngpu" -ge 2 ] && tps=1,2
      hf=--hf; [ -n "${NO_HF:-}" ] && hf=
      NODESPEED_STEP_TRACE=$OUT/serve-steps.jsonl node bench/serve/run.mjs --device cuda --model "$MODEL" --tp $tps $hf \
        --out "$OUT/serve.json" 2>&1 | tee "$OUT/serve.log"
      [ "${PIPESTATUS[0]}" = 0 ] || status=1 ;;
    moe)
      MOE_MODEL=${MOE_MODEL:-/tmp/qwen15-moe-a2.7b}
      if [ ! -f "$MOE_MODEL/config.json" ]; then
        timeout 900 node bin/nodespeed model init --arch qwen2_moe --preset a2.7b --dtype bf16 "$MOE_MODEL" > "$OUT/moe-model-init.log" 2>&1 || { echo "model init failed: $OUT/moe-model-init.log"; status=1; continue; }
      fi
      node bench/moe/run.mjs "$MOE_MODEL" 2>&1 | tee "$OUT/moe.log"
      [ "${PIPESTATUS[0]}" = 0 ] || status=1 ;;
    hetero)
      HMODEL=${NODESPEED_TEST_MODEL_1B:-/tmp/llama-1b}
      if [ ! -f "$HMODEL/config.json" ]; then
        timeout 300 node bin/nodespeed model init --arch llama --preset 1b --dtype bf16 "$HMODEL" > "$OUT/model-init-1b.log" 2>&1 || { echo "model init failed: $OUT/model-init-1b.log"; status=1; continue; }
      fi
      node bench/hetero/run.mjs --device cuda --model "$HMODEL" --out "$OUT/hetero-cuda.json" 2>&1 | tee "$OUT/hetero.log"
      [ "${PIPESTATUS[0]}" = 0 ] || status=1 ;;
    *) echo "bench/gpu-visit.sh: unknown step '$step' (tests, serve, moe, hetero)" >&2; exit 2 ;;
  esac
done
echo "== bench/gpu-visit.sh: $steps: $([ $status = 0 ] && echo passed || echo FAILED); results in $OUT"
exit $status
