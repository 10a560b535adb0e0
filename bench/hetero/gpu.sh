#!/usr/bin/env bash
# bench/hetero on a GPU host (one GPU and its CPU cores), in one go: the 1B-shape random checkpoint
# (`nodespeed model init --preset 1b`, bf16), then bench/hetero/run.mjs --device cuda: one GPU
# replica + 2 CPU replicas of 6 threads under a realtime stream plus a batch flood, the GPU replica
# alone (flood; and the mixed load with FIFO), the CPU replicas alone (flood). ~4 minutes.
#   usage (repo root as cwd): bash bench/hetero/gpu.sh          # results and log under $OUT
#   carry: .gpu/hetero-bundle.tar.xz (bench/hetero/pack.sh), unpacked on the host as pack.sh says; or .gpu
#   (node.xz, node_modules.tar.xz or node_modules/, nodespeed.node built with CUDA, COMMIT) and dist/
set -uo pipefail
OUT=${OUT:-/tmp/ns-out}; mkdir -p "$OUT"
if ! command -v node >/dev/null || [[ $(node -v) != v2* ]]; then
  [ -x /tmp/node ] || { xz -dc .gpu/node.xz > /tmp/node && chmod +x /tmp/node; }
  export PATH=/tmp:$PATH
fi
[ -d node_modules ] || tar -xJf .gpu/node_modules.tar.xz
if [ -f .gpu/nodespeed.node ]; then mkdir -p build/Release && cp .gpu/nodespeed.node build/Release/nodespeed.node; fi
[ -z "${NODESPEED_COMMIT:-}" ] && [ -f .gpu/COMMIT ] && export NODESPEED_COMMIT=$(cat .gpu/COMMIT)
MODEL=${MODEL:-/tmp/llama-1b}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
node -e "const i = require('./build/Release/nodespeed.node').info(); console.log(JSON.stringify(i.cuda)); if (!i.cuda.available) process.exit(1)" || exit 1
if [ ! -f "$MODEL/config.json" ]; then
  echo "model: nodespeed model init --preset 1b --dtype bf16 $MODEL"
  timeout 300 node bin/nodespeed model init --arch llama --preset 1b --dtype bf16 "$MODEL" > "$OUT/model-init.log" 2>&1 || { tail -5 "$OUT/model-init.log"; exit 1; }
fi
node bench/hetero/run.mjs --device cuda --model "$MODEL" --out "$OUT/hetero-cuda.json" "$@" 2>&1 | tee "$OUT/hetero.log" | grep -E '^bench/hetero|Error|error' 
exit "${PIPESTATUS[0]}"
