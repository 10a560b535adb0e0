#!/usr/bin/env bash
# The 64-stream serving benchmark (run.mjs at tp 1: 64 streams x 256 new tokens, 512-token prompts)
# for two builds, alternated A B A B on one GPU, so a change is measured against its base with the
# machine, model and clocks equal. A is this checkout (dist/ and build/Release/nodespeed.node, commit
# $COMMIT_A); B is $TREE_B, another commit's tree with its own dist/, build/Release/nodespeed.node
# and bench/ (commit $COMMIT_B). B runs with this checkout's node_modules when it has none.
#
#   TREE_B=/path/to/base COMMIT_A=<sha> COMMIT_B=<sha> bash bench/serve/ab.sh
#   # writes $OUT/serve64-{a,b}-{1,2}.json, each with its commit, and prints each run's tok/s
#
# Needs Node >= 20 on PATH, node_modules, both addons built with CUDA, and $MODEL (default
# /tmp/llama-7b-shape, made with `nodespeed model init` if missing).
set -euo pipefail
OUT=${OUT:-/tmp/ns-out}; mkdir -p "$OUT"
MODEL=${MODEL:-/tmp/llama-7b-shape}
A=$(pwd)
: "${TREE_B:?TREE_B must name the tree of the base commit: dist/, build/, bench/}"
command -v node >/dev/null && [[ $(node -v) == v2* ]] || { echo "ab: needs Node >= 20 on PATH" >&2; exit 1; }
[ -d node_modules ] || { echo "ab: node_modules is missing (npm install)" >&2; exit 1; }
for t in "$A" "$TREE_B"; do
  [ -f "$t/build/Release/nodespeed.node" ] && [ -d "$t/dist/worker" ] && [ -f "$t/bench/serve/run.mjs" ] \
    || { echo "ab: $t lacks dist/, build/Release/nodespeed.node or bench/serve/run.mjs" >&2; exit 1; }
done
[ -e "$TREE_B/node_modules" ] || ln -s "$A/node_modules" "$TREE_B/node_modules"
[ -f "$MODEL/config.json" ] || node bin/nodespeed model init --preset 7b --dtype bf16 "$MODEL" >/dev/null
export NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for i in 1 2; do
  for v in a b; do
    tree=$A; [ $v = b ] && tree=$TREE_B
    commit=COMMIT_${v^^}
    if (cd "$tree" && NODESPEED_COMMIT=${!commit:-unknown} node bench/serve/run.mjs --device cuda --model "$MODEL" --tp 1 \
      --out "$OUT/serve64-$v-$i.json") > "$OUT/serve64-$v-$i.log" 2>&1; then grep -E "tok/s" "$OUT/serve64-$v-$i.log" | sed "s/^/$v$i: /"
    else echo "$v$i: failed"; tail -20 "$OUT/serve64-$v-$i.log"; fi
  done
done
