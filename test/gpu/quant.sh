#!/usr/bin/env bash
# The GPU side of quantized serving (docs/QUANTIZATION.md), one GPU, results under $OUT:
#   kernels  test/gpu/quant-kernels.cu: every quantized kernel against a host reference
#            (.gpu/quant-kernels.xz when built on the dev machine by pack-quant.sh, else compiled here)
#   check    test/gpu/quant-check.mjs: py-tiny and the 7B shape at bf16 / int8 / fp8 / fp8 KV against
#            our bf16 and PyTorch (quant_reference.py): perplexity, greedy, cosine, round trips
#   families test/gpu/families-quant.mjs: every model family fixture on the family forward at int8 /
#            fp8 / fp8 + fp8 KV / bf16 + fp8 KV against our bf16 (cosine, greedy, graphs off)
#   bench    bench/decode at batch 1 and 64 (bf16 / int8 / fp8 beside HF), bench/serve 64 streams of
#            512 in / 256 out (bf16 and fp8 weights + fp8 KV beside HF), each against its roofline
# usage: bash test/gpu/quant.sh [kernels] [check] [families] [bench]   (default: all four)
#   OUT (default /tmp/nodespeed-quant); NODESPEED_TEST_MODEL_7B (default /tmp/llama-7b-shape: made with
#   `nodespeed model init --preset 7b` when missing). Exit status: 0 when every step passed.
set -uo pipefail
cd "$(dirname "$0")/../.."
steps=${*:-kernels check families bench}
OUT=${OUT:-/tmp/nodespeed-quant}
MODEL=${NODESPEED_TEST_MODEL_7B:-/tmp/llama-7b-shape}
mkdir -p "$OUT"
export RESULTS_DIR=$OUT NCCL_NVLS_ENABLE=0
# The portable Node and the addon snapshot of a pack-quant.sh bundle.
if ! command -v node >/dev/null || [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
  [ -f .gpu/node.xz ] && { xz -dc .gpu/node.xz > /tmp/node && chmod +x /tmp/node; export PATH=/tmp:$PATH; }
fi
if [ -f .gpu/nodespeed.node ]; then mkdir -p build/Release && cp .gpu/nodespeed.node build/Release/nodespeed.node; fi
[ -z "${NODESPEED_COMMIT:-}" ] && [ -f .gpu/COMMIT ] && export NODESPEED_COMMIT=$(cat .gpu/COMMIT)
export NODESPEED_COMMIT=${NODESPEED_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpus.txt"
node -e "console.log(JSON.stringify(require('./build/Release/nodespeed.node').info().cuda))" || exit 2
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | sed 's/NVIDIA //; s/[^A-Za-z0-9]\+/-/g' | tr A-Z a-z)
status=0
run() { local name=$1; shift; echo "== $name"; "$@" 2>&1 | tee "$OUT/$name.log" | tail -c 2500; local rc=${PIPESTATUS[0]}
  echo "== $name rc=$rc"; { echo "== $name rc=$rc"; cat "$OUT/$name.log"; } >> "$OUT/all.log"; [ "$rc" = 0 ] || status=1; }
model() {
  [ -f "$MODEL/config.json" ] && return 0
  timeout 600 node bin/nodespeed model init --preset 7b --dtype bf16 "$MODEL" > "$OUT/model-init.log" 2>&1 ||
    { rm -rf "$MODEL"; python3 test/gpu/make_7b.py "$MODEL"; }
}
for step in $steps; do
  case $step in
    kernels)
      if [ -f .gpu/quant-kernels.xz ]; then xz -dc .gpu/quant-kernels.xz > /tmp/quant-kernels && chmod +x /tmp/quant-kernels
      else nvcc -O3 -std=c++17 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -Inative/src test/gpu/quant-kernels.cu \
        native/src/cuda/{gemv,quant_gemm,quant_act,quant_mma,attention,attention_prefill,rope_kv,kernels_basic,lt_gemm,moe,moe_quant,family}.cu native/src/common/{dl,quant,settings}.cc -ldl \
        -o /tmp/quant-kernels; fi
      run quant-kernels sh -c '/tmp/quant-kernels > "$0"' "$OUT/gpu-quant-kernels.json"; head -c 400 "$OUT/gpu-quant-kernels.json"; echo ;;
    check) model; run quant-check node test/gpu/quant-check.mjs "$MODEL" ;;
    families) run families-quant node test/gpu/families-quant.mjs ;;
    bench) model
      run decode-quant node bench/decode/run.mjs "$MODEL" --batches 1,64 --precisions bf16,int8,fp8
      NODESPEED_STEP_TRACE=$OUT/serve-quant-steps.jsonl run serve-quant node bench/serve/run.mjs --device cuda --model "$MODEL" --tp 1 \
        --precisions bf16,fp8+kv-fp8 --hf --out "$OUT/serve-quant-$gpu.json" ;;
    *) echo "test/gpu/quant.sh: unknown step '$step' (kernels, check, families, bench)" >&2; exit 2 ;;
  esac
done
echo "== test/gpu/quant.sh: $steps: $([ $status = 0 ] && echo passed || echo FAILED); results in $OUT"
exit $status
