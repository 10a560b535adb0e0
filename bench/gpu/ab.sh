#!/usr/bin/env bash
# The GPU benchmarks, A/B runs and profiles, one step per argument, on a GPU host with the built
# package (node_modules, dist/, build/Release/nodespeed.node with CUDA; Node >= 20 on PATH; python3
# with torch + transformers for the HF sides; ncu for the profiles). The correctness checks are the
# vitest suites of test/gpu (bench/gpu-visit.sh runs them with the serving benchmark).
#
# usage: bash bench/gpu/ab.sh STEP...   (results and logs under $OUT, default /tmp/nodespeed-ab)
#   bench       decode benchmark vs HF eager generate, batch 1 and 32 (bench/decode/run.mjs)
#   profile     ncu of one batch-1 decode step, per-kernel times and DRAM read rates, at each of
#               $PROFILE_QUANTIZE (default none; e.g. "none fp8 int8")
#   batchstep   the serving workload's steps in one engine (64 x 512-token prompts, 2048-token chunks)
#   batchprofile  ncu of one 2048-token prefill step and one batch-64 decode step
#   where       the 64-stream serving run's step trace, then ncu of one 8192-token prefill and one batch-64 decode step
#   serve       bench/serve at tp 1 (and 2 with 2 GPUs) beside HF eager generate
#   servetp     bench/serve at tp 1 and 2 without HF (the tp-2 ratio)
#   serve64     the 64-stream run at tp 1 for the default and each VAR=value of $AB_ENV, GPU clocks sampled
#   abtp        bench/serve tp 1,2 for the default and NODESPEED_P2P_NORM=0 ($AB_ENV added to each)
#   loadtime    a 7B's load with and without the cuBLASLt tuning and the GEMM warm-up + graph captures
#   graphab     the batch-64 step with NODESPEED_CUDA_GRAPH_MAX=4 (cuBLAS outside graphs) and the default, twice
#   flashab     prefill step times with the flash kernel and with NODESPEED_CUDA_FLASH=0
#   b1ab        batch-1 decode over NODESPEED_CUDA_ATTN_SPLITS_MAX 16/4/2/1, twice each
#   tpstep      engine-level decode steps at tp 1 and 2 (P2P collectives, and NODESPEED_P2P=0: NCCL)
#   abaddon     batch-1 decode and the batch-64 step for each addon file of $AB_ADDONS (NAME=PATH ...,
#               loaded through NODESPEED_ADDON) beside build/Release/nodespeed.node, twice; batch 1 at each
#               of $AB_PRECISIONS (default bf16; e.g. bf16,int8,fp8) with the logits digest of its warm-up
#               (equal digests: the same logits bit for bit); AB_B64=0 leaves the batch-64 step out
#   gemmalgos   cublasGemmEx vs every cuBLASLt heuristic algorithm for the 7B's decode GEMMs (nvcc)
#   chain       the 7B's 128 batch-1 layer GEMVs as the engine's launches, as one launch, as a read, arithmetic-free
#               (loads), and on the tensor cores (diag, E4M3)
#               (bench/gpu/decode-chain.cu; $CHAIN_BIN: a binary built elsewhere, else nvcc here)
#   noise       where HF's own bf16 noise comes from (bench/decode/hf_noise.py) beside ours
#   moe         mixture-of-experts decode (bench/moe/run.mjs): batch 1 vs its roofline, batch 32 vs HF eager,
#               on $MOE_MODEL (default /tmp/qwen15-moe-a2.7b: model init --arch qwen2_moe --preset a2.7b)
#   moeab       the MoE batch-1 decode (bench/moe/run.mjs, no HF) for the default and each VAR=value of $AB_ENV
#   moeaddon    the MoE decode (bench/moe/run.mjs, no HF: batch 1 and 32) for build/Release/nodespeed.node
#               and each addon file of $AB_ADDONS (NAME=PATH ..., loaded through NODESPEED_ADDON), in the
#               order this, the others, this (the two runs of this one bracket the drift)
#   failover    bench/failover on the GPUs there are (a spare and tp 2 with 2+, the respawn path with 1)
# The 7B-shape checkpoint is $NODESPEED_TEST_MODEL_7B (default /tmp/llama-7b-shape), made with
# `nodespeed model init --preset 7b` when missing. Set NODESPEED_COMMIT when the tree has no .git.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/nodespeed-ab}; LOGS=$OUT/logs; mkdir -p "$OUT" "$LOGS"
export RESULTS_DIR=${RESULTS_DIR:-$OUT}
export NCCL_NVLS_ENABLE=0  # NVLink multicast stays off on shared hosts
MODEL=${NODESPEED_TEST_MODEL_7B:-/tmp/llama-7b-shape}
[ $# -gt 0 ] || { sed -n '7,40p' "$0"; exit 2; }
# Every step but the nvcc-only ones needs the built addon with CUDA (and Node).
for s in "$@"; do case $s in chain|gemmalgos) ;; *)
  node -e "const i = require('./build/Release/nodespeed.node').info().cuda; console.log(JSON.stringify(i)); process.exit(i.available ? 0 : 1)" || exit 1
  break ;; esac; done
status=0
run() { local name=$1; shift; echo "== $name"; "$@" 2>&1 | tee "$LOGS/$name.log" | tail -c 2500; local rc=${PIPESTATUS[0]}; echo "== $name rc=$rc"
  [ "$rc" = 0 ] || status=1; }
make_model() {
  [ -f "$MODEL/config.json" ] && return 0
  if timeout 600 node bin/nodespeed model init --preset 7b --dtype bf16 "$MODEL" >/dev/null 2>"$LOGS/model-init.log"; then
    echo "model: nodespeed model init"; else rm -rf "$MODEL"; echo "model: test/gpu/make_7b.py"; python3 test/gpu/make_7b.py "$MODEL"; fi
}
gpus() { nvidia-smi -L | wc -l; }
ncu_step() {  # ncu_step NAME STEP SCRIPT ARGS...: per-kernel times of one step (NODESPEED_CUDA_PROFILE_STEP brackets it)
  local name=$1 step=$2; shift 2
  NODESPEED_CUDA_PROFILE_STEP=$step ncu --profile-from-start off --clock-control none --cache-control none --csv \
    --metrics ${NCU_METRICS:-gpu__time_duration.sum} node "$@" > "$OUT/$name.csv" 2>"$LOGS/$name.err"; tail -2 "$LOGS/$name.err"
}
for s in "$@"; do
  case $s in
    bench) make_model; run bench node bench/decode/run.mjs "$MODEL" ;;
    profile) make_model
      for q in ${PROFILE_QUANTIZE:-none}; do
        wall=$(node bench/decode/profile-step.mjs "$MODEL" $q | tail -1 | node -e "let s='';process.stdin.on('data',d=>s+=d).on('end',()=>console.log(JSON.parse(s).decodeStepMsMedian))")
        NCU_METRICS=gpu__time_duration.sum,dram__bytes_read.sum ncu_step ncu-b1-$q 4 bench/decode/profile-step.mjs "$MODEL" $q
        echo "-- $q"; RESULTS_DIR=$OUT/profile-$q node bench/decode/summarize-ncu.mjs "$OUT/ncu-b1-$q.csv" "$wall" | head -c 3500
      done ;;
    batchstep) make_model; run batch-step node bench/decode/batch-step.mjs "$MODEL" 64 512 2048 256 ;;
    batchprofile) make_model
      for st in 1 32; do ncu_step ncu-batch-$st $st bench/decode/batch-step.mjs "$MODEL" 64 512 2048 24
        echo "-- step $st"; RESULTS_DIR=$OUT/batch-profile-step$st node bench/decode/summarize-ncu.mjs "$OUT/ncu-batch-$st.csv" | head -c 3000; done ;;
    where) make_model
      NODESPEED_STEP_TRACE=$OUT/where-steps.jsonl run where-serve node bench/serve/run.mjs --device cuda --model "$MODEL" --tp 1 --out "$OUT/where-serve.json"
      for st in 1 6; do ncu_step where-ncu-$st $st bench/decode/batch-step.mjs "$MODEL" 64 512 8192 16; done
      run where-batch-step node bench/decode/batch-step.mjs "$MODEL" 64 512 8192 64 ;;
    serve) make_model; tps=1; [ "$(gpus)" -ge 2 ] && tps=1,2
      NODESPEED_STEP_TRACE=$OUT/serve-steps.jsonl run serve node bench/serve/run.mjs --device cuda --model "$MODEL" --tp $tps --hf --out "$OUT/serve.json" ;;
    servetp) make_model
      NODESPEED_STEP_TRACE=$OUT/serve-tp-steps.jsonl run serve-tp node bench/serve/run.mjs --device cuda --model "$MODEL" --tp 1,2 --out "$OUT/serve-tp.json" ;;
    serve64) make_model
      nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active --format=csv -lms 100 -i 0 > "$OUT/serve64-smi.csv" 2>&1 &
      smi=$!
      for v in default ${AB_ENV:-}; do e=; [ "$v" = default ] || e=$v
        env $e NODESPEED_STEP_TRACE=$OUT/serve64-$v-steps.jsonl node bench/serve/run.mjs --device cuda --model "$MODEL" --tp 1 --out "$OUT/serve64-$v.json" 2>&1 | grep -E "tok/s" | sed "s/^/$v: /"
      done; kill $smi ;;
    abtp) make_model
      tps=1; vs=default; [ "$(gpus)" -ge 2 ] && tps=1,2 && vs="default NODESPEED_P2P_NORM=0"
      for v in $vs; do e=; [ "$v" = default ] || e=$v
        env ${AB_ENV:-} $e NODESPEED_STEP_TRACE=$OUT/serve-$v-steps.jsonl node bench/serve/run.mjs --device cuda --model "$MODEL" --tp $tps --out "$OUT/serve-$v.json" 2>&1 | grep -E "tok/s|roofline" | sed "s/^/$v: /"
      done ;;
    loadtime) make_model
      for v in default NODESPEED_CUDA_LT=0 NODESPEED_CUDA_WARMUP=0; do e=; [ "$v" = default ] || e=$v
        echo "$v: $(env $e node bench/decode/load-time.mjs "$MODEL" 2>&1 | tail -1)" | tee -a "$OUT/loadtime.log"; done ;;
    graphab) make_model
      for i in 1 2; do for v in 4 256; do NODESPEED_CUDA_GRAPH_MAX=$v run batch-step-graph$v-$i node bench/decode/batch-step.mjs "$MODEL" 64 512 8192 64; done; done ;;
    flashab) make_model
      NODESPEED_CUDA_FLASH=0 run batch-step-simt node bench/decode/batch-step.mjs "$MODEL" 64 512 2048 16
      run batch-step-flash node bench/decode/batch-step.mjs "$MODEL" 64 512 2048 16 ;;
    b1ab) make_model
      for i in 1 2; do for v in 16 4 2 1; do
        echo "== b1 NODESPEED_CUDA_ATTN_SPLITS_MAX=$v"; NODESPEED_CUDA_ATTN_SPLITS_MAX=$v RESULTS_DIR=$OUT/b1ab node bench/decode/run.mjs "$MODEL" --no-hf --batches 1 2>&1 | grep '"ours"' | tee -a "$OUT/b1ab.log"; done; done ;;
    tpstep) make_model
      run tp-step node bench/tp/tp-step.mjs "$MODEL" --batches 1,64
      NODESPEED_P2P=0 run tp-step-nccl node bench/tp/tp-step.mjs "$MODEL" --tp 2 --batches 1 ;;
    abaddon) make_model
      for i in 1 2; do for v in this=build/Release/nodespeed.node ${AB_ADDONS:-}; do name=${v%%=*}; file=${v#*=}
        echo "== b1 $name"; NODESPEED_ADDON=$(realpath "$file") RESULTS_DIR=$OUT/abaddon node bench/decode/run.mjs "$MODEL" --no-hf --no-roofline --batches 1 \
          --precisions "${AB_PRECISIONS:-bf16}" --digest 2>&1 | grep '"ours"' | sed "s/^/$name /" | tee -a "$OUT/abaddon.log"
        [ "${AB_B64:-1}" = 0 ] && continue
        echo "== b64 $name"; NODESPEED_ADDON=$(realpath "$file") node bench/decode/batch-step.mjs "$MODEL" 64 512 2048 64 2>&1 | tail -1 | tee -a "$OUT/abaddon.log"; done; done ;;
    gemmalgos)
      run gemm-algos sh -c 'nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a bench/gpu/gemm-algos.cu -lcublasLt -lcublas -o /tmp/gemm-algos && /tmp/gemm-algos > "$0"' "$OUT/gemm-algos.json" ;;
    chain) bin=${CHAIN_BIN:-}
      if [ -z "$bin" ]; then bin=/tmp/decode-chain
        nvcc -O3 -std=c++17 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -Inative/src bench/gpu/decode-chain.cu \
          native/src/cuda/{quant_gemm,gemv,kernels_basic}.cu native/src/common/{dl,quant,settings}.cc -ldl -o $bin || { status=1; continue; }; fi
      run decode-chain sh -c 'timeout 120 "$1" > "$0"; rc=$?; cat "$0"; exit $rc' "$OUT/decode-chain.json" "$bin" ;;
    noise) make_model
      node -e "
        const ids = [1]; let x = 12345; const V = require('$MODEL/config.json').vocab_size;
        for (let i = 1; i < 128; i++) { x = (x * 1103515245 + 12345) % 2147483648; ids.push(3 + (x % (V - 3))); }
        require('fs').writeFileSync('$OUT/ids.json', JSON.stringify(ids));"
      run hf-noise python3 bench/decode/hf_noise.py "$MODEL" "$OUT/ids.json"; cp "$LOGS/hf-noise.log" "$OUT/hf-noise.json" ;;
    moe) MOE_MODEL=${MOE_MODEL:-/tmp/qwen15-moe-a2.7b}
      [ -f "$MOE_MODEL/config.json" ] || node bin/nodespeed model init --arch qwen2_moe --preset a2.7b --dtype bf16 "$MOE_MODEL" >/dev/null
      run moe-decode node bench/moe/run.mjs "$MOE_MODEL" ;;
    moeab) MOE_MODEL=${MOE_MODEL:-/tmp/qwen15-moe-a2.7b}
      [ -f "$MOE_MODEL/config.json" ] || node bin/nodespeed model init --arch qwen2_moe --preset a2.7b --dtype bf16 "$MOE_MODEL" >/dev/null
      i=0; for v in default ${AB_ENV:-}; do i=$((i + 1)); e=; [ "$v" = default ] || e=$v
        echo "== moe b1 $v"; env $e SKIP_HF=1 RESULTS_DIR=$OUT/moeab-$i node bench/moe/run.mjs "$MOE_MODEL" > "$LOGS/moeab-$i.log" 2>&1 || status=1
        node -e "const r = require('$OUT/moeab-$i/' + require('fs').readdirSync('$OUT/moeab-$i')[0]).batch1;
          console.log('$v', JSON.stringify({ msPerStep: r.msPerStep, rooflineFraction: r.rooflineFraction, datasheet: r.rooflineFractionDatasheet }))" | tee -a "$OUT/moeab.log"
      done ;;
    moeaddon) MOE_MODEL=${MOE_MODEL:-/tmp/qwen15-moe-a2.7b}
      [ -f "$MOE_MODEL/config.json" ] || node bin/nodespeed model init --arch qwen2_moe --preset a2.7b --dtype bf16 "$MOE_MODEL" >/dev/null
      specs="this=build/Release/nodespeed.node ${AB_ADDONS:-}"
      i=0; for spec in $specs this=build/Release/nodespeed.node; do i=$((i + 1)); name=${spec%%=*}
        echo "== moe $name"; NODESPEED_ADDON=$(realpath "${spec#*=}") SKIP_HF=1 RESULTS_DIR=$OUT/moeaddon-$i node bench/moe/run.mjs "$MOE_MODEL" > "$LOGS/moeaddon-$i.log" 2>&1 || status=1
        node -e "const r = require('$OUT/moeaddon-$i/' + require('fs').readdirSync('$OUT/moeaddon-$i')[0]);
          console.log('$name', JSON.stringify({ b1MsPerStep: r.batch1.msPerStep, rooflineFraction: r.batch1.rooflineFraction, b32MsPerStep: r.batch32.msPerStep }))" | tee -a "$OUT/moeaddon.log"
      done ;;
    failover) make_model
      if [ "$(gpus)" -ge 2 ]; then
        run failover-spare node bench/failover/run.mjs --device cuda --model "$MODEL" --replicas 1 --tp 1 --spares 1 --faults kill,stop --out "$OUT/failover-cuda-spare.json"
        run failover-tp2 node bench/failover/run.mjs --device cuda --model "$MODEL" --replicas 1 --tp 2 --spares 0 --faults kill,stop --out "$OUT/failover-cuda-tp2.json"
      else
        run failover-1gpu node bench/failover/run.mjs --device cuda --model "$MODEL" --replicas 1 --tp 1 --spares 0 --faults kill,stop --out "$OUT/failover-cuda-1gpu.json"
      fi ;;
    *) echo "unknown step: $s (bash bench/gpu/ab.sh lists them)"; status=2 ;;
  esac
done
exit $status
