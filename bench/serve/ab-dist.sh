#!/usr/bin/env bash
# The 64-stream serving benchmark (run.mjs at tp 1: 64 streams x 256 new tokens, 512-token prompts)
# for two builds of the TypeScript side over one and the same addon, alternated A B A B on one GPU,
# so a change of the serving path (coordinator, worker, scheduler) is measured against its base
# with everything else equal. A is ./dist (this checkout, commit $COMMIT_A); B is $DIST_B (the base
# commit's `npx tsc -p tsconfig.json` output, commit $COMMIT_B). Only valid when native/ is the same
# at both commits.
#
#   DIST_B=.gpu/dist-base COMMIT_A=<sha> COMMIT_B=<sha> bash bench/serve/ab-dist.sh
#   # writes $OUT/serve64-{a,b}-{1,2}.json, each with its commit
#
# Needs node (or .gpu/node.xz), node_modules (or .gpu/node_modules.tar.xz), build/Release/nodespeed.node
# built with CUDA, and $MODEL (default /tmp/llama-7b-shape, made with `nodespeed model init` if missing).
set -euo pipefail
OUT=${OUT:-/tmp/ns-out}; mkdir -p "$OUT"
MODEL=${MODEL:-/tmp/llama-7b-shape}
: "${DIST_B:?DIST_B must name the dist folder of the base commit}"
if ! command -v node >/dev/null || [[ $(node -v) != v2* ]]; then
  [ -x /tmp/node ] || { xz -dc .gpu/node.xz > /tmp/node && chmod +x /tmp/node; }
  export PATH=/tmp:$PATH
fi
[ -d node_modules ] || tar -xJf .gpu/node_modules.tar.xz
[ -d "$DIST_B/worker" ] || { echo "ab-dist: $DIST_B is not a dist/ folder" >&2; exit 1; }
[ -f "$MODEL/config.json" ] || node bin/nodespeed model init --preset 7b --dtype bf16 "$MODEL" >/dev/null
export NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
mv dist .dist-a
restore() { rm -rf dist; mv .dist-a dist; }
trap restore EXIT
for i in 1 2; do
  for v in a b; do
    rm -rf dist
    if [ $v = a ]; then cp -r .dist-a dist; else cp -r "$DIST_B" dist; fi
    commit=COMMIT_${v^^}
    if NODESPEED_COMMIT=${!commit:-unknown} node bench/serve/run.mjs --device cuda --model "$MODEL" --tp 1 --out "$OUT/serve64-$v-$i.json" \
      > "$OUT/serve64-$v-$i.log" 2>&1; then grep -E "tok/s" "$OUT/serve64-$v-$i.log" | sed "s/^/$v$i: /"
    else echo "$v$i: failed"; tail -20 "$OUT/serve64-$v-$i.log"; fi
  done
done
