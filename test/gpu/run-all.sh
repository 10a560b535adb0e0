#!/usr/bin/env bash
# Everything issue 4 runs on a GPU host, in one go (device tool `run`, repo root as cwd):
#   correctness (fixtures, py-tiny, sampling; tp 2 over NCCL and helper comm's all-reduce test when
#   there are 2 GPUs; 7B-shape vs HF), the decode benchmark, and an ncu
#   profile of one batch-1 decode step. Results JSON go to $RESULTS_DIR (default $OUT or
#   bench/results), logs to $OUT. Carry .gpu (node.xz, node_modules.tar.xz) and build (and dist).
# usage: bash test/gpu/run-all.sh [families|moe|fixtures|tp2|sampler|nccl|7b|parallel|tpstep|servetp|tp7b|servewarm|ab6|skinny|lt|abtp|b1ab|abbin|serveab|gemmalgos|noise|graphs|graphab|loadtime|serve64|where|batchstep|flash|kvlayout|serve|bench|failover|profile ...]   (default: the issue-4 set)
set -uo pipefail
OUT=${OUT:-/tmp/ns-out}; LOGS=/tmp/ns-logs; mkdir -p "$OUT" "$LOGS"
export RESULTS_DIR=${RESULTS_DIR:-$OUT}
export NCCL_NVLS_ENABLE=0
if ! command -v node >/dev/null || [[ $(node -v) != v2* ]]; then
  [ -x /tmp/node ] || { xz -dc .gpu/node.xz > /tmp/node && chmod +x /tmp/node; }
  export PATH=/tmp:$PATH
fi
[ -d node_modules ] || tar -xJf .gpu/node_modules.tar.xz
# A snapshot of the addon built here (others rebuild build/ concurrently on the dev machine).
if [ -f .gpu/nodespeed.node ]; then mkdir -p build/Release && cp .gpu/nodespeed.node build/Release/nodespeed.node; fi
# The commit the addon in .gpu was built from (written next to it on the dev machine: git rev-parse HEAD > .gpu/COMMIT).
[ -z "${NODESPEED_COMMIT:-}" ] && [ -f .gpu/COMMIT ] && export NODESPEED_COMMIT=$(cat .gpu/COMMIT)
MODEL=${MODEL:-/tmp/llama-7b-shape}
steps=${*:-fixtures tp2 nccl 7b bench profile}
steps=${steps//ab6/skinny lt abtp}  # session 5's unmeasured switches
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
node -e "console.log(JSON.stringify(require('./build/Release/nodespeed.node').info().cuda))" || exit 1
status=0
run() { local name=$1; shift; echo "== $name"; "$@" 2>&1 | tee "$LOGS/$name.log" | tail -c 2500; local rc=${PIPESTATUS[0]}; echo "== $name rc=$rc"
  { echo "== $name rc=$rc"; cat "$LOGS/$name.log"; } >> "$OUT/all.log"; [ $rc = 0 ] || [ $rc = 2 ] || status=1; }  # 2: skipped
make_model() {
  [ -f "$MODEL/config.json" ] && return 0
  if [ -f dist/cli/index.js ] && timeout 300 node bin/nodespeed model init --preset 7b --dtype bf16 "$MODEL" >/dev/null 2>"$LOGS/model-init.log"; then
    echo "model: nodespeed model init"; else rm -rf "$MODEL"; echo "model: test/gpu/make_7b.py"; python3 test/gpu/make_7b.py "$MODEL"; fi
}
for s in $steps; do
  case $s in
    families) run families node test/gpu/families.mjs ;;  # every model family's HF fixture on CUDA (and CPU f32 beside it)
    moe) MOE_MODEL=${MOE_MODEL:-/tmp/qwen15-moe-a2.7b}  # Qwen1.5-MoE-A2.7B shape (28.6 GB bf16): batch 1 vs roofline, batch 32 vs HF eager
      [ -f "$MOE_MODEL/config.json" ] || node bin/nodespeed model init --arch qwen2_moe --preset a2.7b --dtype bf16 "$MOE_MODEL" >/dev/null
      run moe-decode node bench/moe/run.mjs "$MOE_MODEL" ;;
    fixtures) run fixtures node test/gpu/fixtures.mjs
              [ $status = 0 ] || run sanitizer compute-sanitizer --print-limit 5 node test/gpu/fixtures.mjs ;;
    tp2) run tp2 node test/gpu/tp2.mjs ;;
    sampler) run sampler node test/gpu/sampler-check.mjs "$RESULTS_DIR/gpu-sampler-check.json" ;;  # CUDA sampler (bias, penalties, min-p, logprobs) vs CPU, and through decode graphs
    nccl) if [ -f test/gpu/nccl-allreduce.mjs ]; then run nccl node test/gpu/nccl-allreduce.mjs; else echo "== nccl: test/gpu/nccl-allreduce.mjs not present"; fi ;;
    7b) make_model; NS_DUMP_DIR=/tmp run model-7b node test/gpu/model-7b.mjs "$MODEL" ;;
    noise) make_model; [ -f /tmp/ids.json ] || NS_DUMP_DIR=/tmp run model-7b node test/gpu/model-7b.mjs "$MODEL"
           run hf-noise python3 bench/decode/hf_noise.py "$MODEL" /tmp/ids.json /tmp/ours.bin; cp "$LOGS/hf-noise.log" "$OUT/hf-noise.json" ;;
    batchprofile) make_model  # ncu of one 2048-token prefill step (index 1) and one batch-64 decode step (index 32)
      for st in 1 32; do NODESPEED_CUDA_PROFILE_STEP=$st ncu --profile-from-start off --clock-control none --cache-control none --csv \
        --metrics gpu__time_duration.sum node bench/decode/batch-step.mjs "$MODEL" 64 512 2048 24 > "$LOGS/ncu-$st.csv" 2>"$LOGS/ncu-$st.err"
        tail -2 "$LOGS/ncu-$st.err"; echo "-- step $st"; RESULTS_DIR=/tmp node bench/decode/summarize-ncu.mjs "$LOGS/ncu-$st.csv" | head -c 3000; cp /tmp/decode-profile-*.json "$OUT/batch-profile-step$st.json"; done ;;
    graphs) make_model  # decode CUDA graphs past 4 sequences: graph vs eager logits in one engine each (7B shape),
                        # py-tiny through the engine (and tp 2 with a 10-sequence batch on 2 GPUs), then the batch-64
                        # step with NODESPEED_CUDA_GRAPH_MAX=4 (eager past 4, as before) and the default, twice
      run graph-check node test/gpu/graph-check.mjs "$MODEL"
      run fixtures node test/gpu/fixtures.mjs
      [ "$(nvidia-smi -L | wc -l)" -ge 2 ] && run tp2 node test/gpu/tp2.mjs ;;
    graphab) make_model  # the batch-64 step with NODESPEED_CUDA_GRAPH_MAX=4 (eager past 4, as before) and the default, twice
      for i in 1 2; do for v in 4 256; do NODESPEED_CUDA_GRAPH_MAX=$v run batch-step-graph$v-$i node bench/decode/batch-step.mjs "$MODEL" 64 512 8192 64; done; done ;;
    serve64) make_model  # issue 5's 64-stream run at tp 1 for the default and each env switch in $AB_ENV (space-separated
                         # VAR=value), with the GPU's clocks, power and throttle reasons sampled every 100 ms
      nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active --format=csv -lms 100 -i 0 > "$OUT/serve64-smi.csv" 2>&1 &
      smi=$!
      for v in default ${AB_ENV:-}; do e=; [ $v = default ] || e=$v
        env $e NODESPEED_STEP_TRACE=$OUT/serve64-$v-steps.jsonl node bench/serve/run.mjs --device cuda --model "$MODEL" --tp 1 --out "$OUT/serve64-$v.json" 2>&1 | grep -E "tok/s" | sed "s/^/$v: /"
      done; kill $smi ;;
    loadtime) make_model  # a 7B's load with and without the cuBLASLt tuning (NODESPEED_CUDA_LT=0) and the warm-up + graph captures (NODESPEED_CUDA_WARMUP=0)
      for v in default NODESPEED_CUDA_LT=0 NODESPEED_CUDA_WARMUP=0; do e=; [ $v = default ] || e=$v
        echo "$v: $(env $e node bench/decode/load-time.mjs "$MODEL" 2>&1 | tail -1)" | tee -a "$OUT/loadtime.log"; done ;;
    where) make_model  # issue 5's 64-stream run, where the time goes: the step trace with start times (the driver's
                       # gaps between steps), then ncu per-kernel times of one 8192-token prefill step (index 1) and one
                       # batch-64 decode step (index 6) of the same workload in one engine, and that workload's step times
      NODESPEED_STEP_TRACE=$OUT/where-steps.jsonl run where-serve node bench/serve/run.mjs --device cuda --model "$MODEL" --tp 1 --out "$OUT/where-serve.json"
      for st in 1 6; do NODESPEED_CUDA_PROFILE_STEP=$st ncu --profile-from-start off --clock-control none --cache-control none --csv \
        --metrics gpu__time_duration.sum node bench/decode/batch-step.mjs "$MODEL" 64 512 8192 16 > "$OUT/where-ncu-$st.csv" 2>"$LOGS/where-ncu-$st.err"; tail -2 "$LOGS/where-ncu-$st.err"; done
      run where-batch-step node bench/decode/batch-step.mjs "$MODEL" 64 512 8192 64 ;;
    batchstep) make_model; run batch-step node bench/decode/batch-step.mjs "$MODEL" 64 512 2048 256 ;;
    flash)  # flash prefill attention: the kernel alone (vs a CPU reference; sanitizer on failure), then
            # flash vs SIMT logits through the engine, then prefill step times A/B
      run flash-kernel sh -c 'nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Inative/src test/gpu/flash-kernel.cu native/src/cuda/attention.cu native/src/cuda/attention_prefill.cu -o /tmp/flash-kernel && /tmp/flash-kernel'
      grep -q '"ok":true' "$LOGS/flash-kernel.log" || run flash-kernel-sanitizer compute-sanitizer --print-limit 5 /tmp/flash-kernel
      make_model; run attention-flash node test/gpu/attention-flash.mjs "$MODEL"
      NODESPEED_CUDA_FLASH=0 run batch-step-simt node bench/decode/batch-step.mjs "$MODEL" 64 512 2048 16
      NODESPEED_CUDA_FLASH=1 run batch-step-flash node bench/decode/batch-step.mjs "$MODEL" 64 512 2048 16 ;;
    serve) make_model; tps=1; [ "$(nvidia-smi -L | wc -l)" -ge 2 ] && tps=1,2  # tp 2 >= 1.4x tp 1 (issue 5) needs 2 GPUs
      NODESPEED_STEP_TRACE=$OUT/serve-steps.jsonl run serve node bench/serve/run.mjs --device cuda --model "$MODEL" --tp $tps --hf --out "$OUT/serve.json" ;;
    b1ab) make_model  # batch-1 A/B (issue 4's 70% bar): attention split caps and the head-major KV cache, twice each
      for i in 1 2; do for v in NODESPEED_CUDA_ATTN_SPLITS_MAX=16 NODESPEED_CUDA_ATTN_SPLITS_MAX=4 NODESPEED_CUDA_ATTN_SPLITS_MAX=2 \
        NODESPEED_CUDA_ATTN_SPLITS_MAX=1 NODESPEED_CUDA_KV_LAYOUT=head; do
        echo "== b1 $v"; env $v RESULTS_DIR=/tmp/b1ab node bench/decode/run.mjs "$MODEL" --no-hf --batches 1 2>&1 | grep '"ours"' | tee -a "$OUT/b1ab.log"; done; done ;;
    gemmalgos)  # issue 5: cublasGemmEx (today's path) vs every cuBLASLt heuristic algorithm for the 7B's decode GEMMs, M 8..128
      run gemm-algos sh -c 'nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a test/gpu/gemm-algos.cu -lcublasLt -lcublas -o /tmp/gemm-algos && /tmp/gemm-algos > "$0"' "$OUT/gemm-algos.json" ;;
    serveab) make_model  # issue 5's 64-stream workload, no HF: tokens per step 2048 vs the default 8192, and CUDA's eager
                         # module loading and NODESPEED_CUDA_WARMUP=1 vs neither (does each first use of a batch size cost
                         # 6-10 ms because cuBLAS loads kernels lazily?)
      NODESPEED_STEP_TRACE=$OUT/serve-2048-steps.jsonl run serve-2048 node bench/serve/run.mjs --device cuda --model "$MODEL" --tp 1 --launch-args='--max-batch-tokens 2048' --out "$OUT/serve-2048.json"
      CUDA_MODULE_LOADING=EAGER NODESPEED_STEP_TRACE=$OUT/serve-eager-steps.jsonl run serve-eager node bench/serve/run.mjs --device cuda --model "$MODEL" --tp 1 --out "$OUT/serve-eager.json"
      NODESPEED_CUDA_WARMUP=1 NODESPEED_STEP_TRACE=$OUT/serve-warmup-steps.jsonl run serve-warmup node bench/serve/run.mjs --device cuda --model "$MODEL" --tp 1 --out "$OUT/serve-warmup.json"
      NODESPEED_STEP_TRACE=$OUT/serve-lazy-steps.jsonl run serve-lazy node bench/serve/run.mjs --device cuda --model "$MODEL" --tp 1 --out "$OUT/serve-lazy.json" ;;
    abbin) make_model  # A/B of addon builds in one run: .gpu/nodespeed-<name>.node for each name in $AB_BINS
                       # (default "base"; "new" is .gpu/nodespeed.node), batch-1 decode and the batch-64 serving step, twice
      for i in 1 2; do for v in new ${AB_BINS:-base}; do
        f=.gpu/nodespeed-$v.node; [ $v = new ] && f=.gpu/nodespeed.node; cp "$f" build/Release/nodespeed.node
        echo "== b1 $v"; RESULTS_DIR=/tmp/abbin node bench/decode/run.mjs "$MODEL" --no-hf --batches 1 2>&1 | grep '"ours"' | tee -a "$OUT/abbin.log"
        echo "== b64 $v"; node bench/decode/batch-step.mjs "$MODEL" 64 512 2048 64 2>&1 | tail -1 | tee -a "$OUT/abbin.log"; done; done
      cp .gpu/nodespeed.node build/Release/nodespeed.node ;;
    tpstep) make_model  # issue 5: engine-level decode steps at tp 1 and tp 2 (P2P collectives; NODESPEED_P2P=0: NCCL)
      run tp-step node bench/tp/tp-step.mjs "$MODEL" --batches 1,64
      NODESPEED_P2P=0 run tp-step-nccl node bench/tp/tp-step.mjs "$MODEL" --tp 2 --batches 1 ;;
    skinny) make_model  # the skinny tensor-core decode GEMM (NODESPEED_CUDA_SKINNY=1): correctness against cuBLAS in the
                        # engine, the batch-64 serving step with and without it, then the 64-stream run with it
      run skinny-check node test/gpu/skinny-check.mjs "$MODEL"
      for v in 0 1; do NODESPEED_CUDA_SKINNY=$v run batch-step-skinny$v node bench/decode/batch-step.mjs "$MODEL" 64 512 2048 64; done
      NODESPEED_CUDA_SKINNY=1 NODESPEED_STEP_TRACE=$OUT/serve-skinny-steps.jsonl run serve-skinny node bench/serve/run.mjs --device cuda --model "$MODEL" --tp 1 --out "$OUT/serve-skinny.json" ;;
    lt) make_model  # cuBLASLt decode GEMMs with algorithms measured at load (NODESPEED_CUDA_LT=1), 64 streams at tp 1
      NODESPEED_CUDA_LT=1 NODESPEED_STEP_TRACE=$OUT/serve-lt-steps.jsonl run serve-lt node bench/serve/run.mjs --device cuda --model "$MODEL" --tp 1 --out "$OUT/serve-lt.json" ;;
    abtp) make_model  # bench/serve at tp 1,2 (2 GPUs) for the default, the run-ahead loop off (NODESPEED_RUN_AHEAD=0) and
                      # the fused all-reduce + RMSNorm kernel off (NODESPEED_P2P_NORM=0); $AB_ENV is added to every variant
      tps=1; vs=default; [ "$(nvidia-smi -L | wc -l)" -ge 2 ] && tps=1,2 && vs="default NODESPEED_RUN_AHEAD=0 NODESPEED_P2P_NORM=0"
      for v in $vs; do
        e=; [ $v = default ] || e=$v
        env ${AB_ENV:-} $e NODESPEED_STEP_TRACE=$OUT/serve-$v-steps.jsonl node bench/serve/run.mjs --device cuda --model "$MODEL" --tp $tps --out "$OUT/serve-$v.json" 2>&1 | grep -E "tok/s|roofline" | sed "s/^/$v: /"
      done ;;
    tp7b) make_model; run model-7b-tp2 node test/gpu/model-7b.mjs "$MODEL" --layout tp2 ;;
    servewarm) make_model  # bench/serve at tp 1 with NODESPEED_CUDA_WARMUP=1 (every decode GEMM shape run once at load)
      NODESPEED_CUDA_WARMUP=1 NODESPEED_STEP_TRACE=$OUT/serve-warmup-steps.jsonl run serve-warmup node bench/serve/run.mjs --device cuda --model "$MODEL" --tp 1 --out "$OUT/serve-warmup.json" ;;
    servetp) make_model  # bench/serve at tp 1 and 2 without HF (the tp-2 bar's ratio, quicker than `serve`)
      NODESPEED_STEP_TRACE=$OUT/serve-tp-steps.jsonl run serve-tp node bench/serve/run.mjs --device cuda --model "$MODEL" --tp 1,2 --out "$OUT/serve-tp.json" ;;
    parallel) make_model  # issue 5: the 7B comparison with HF through tp 2 (NCCL) and pp 2 on 2 GPUs
      for l in tp2 pp2; do run model-7b-$l node test/gpu/model-7b.mjs "$MODEL" --layout $l; done ;;
    bench) make_model; run bench node bench/decode/run.mjs "$MODEL" ;;
    kvlayout)  # the head-major KV cache (NODESPEED_CUDA_KV_LAYOUT=head, opt-in until this passes): kernel check
               # in both layouts, fixtures and the 7B comparison with it, the serving step A/B, bench/serve
      run flash-kernel sh -c 'nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Inative/src test/gpu/flash-kernel.cu native/src/cuda/attention.cu native/src/cuda/attention_prefill.cu -o /tmp/flash-kernel && /tmp/flash-kernel'
      make_model
      NODESPEED_CUDA_KV_LAYOUT=head RESULTS_DIR=$OUT/kv-head run fixtures-kv-head node test/gpu/fixtures.mjs
      NODESPEED_CUDA_KV_LAYOUT=head RESULTS_DIR=$OUT/kv-head run model-7b-kv-head node test/gpu/model-7b.mjs "$MODEL"
      for l in token head token head; do NODESPEED_CUDA_KV_LAYOUT=$l run batch-step-kv-$l node bench/decode/batch-step.mjs "$MODEL" 64 512 2048 64; done
      NODESPEED_CUDA_KV_LAYOUT=head RESULTS_DIR=$OUT/kv-head run bench-kv-head node bench/decode/run.mjs "$MODEL" --no-hf
      NODESPEED_CUDA_KV_LAYOUT=head NODESPEED_STEP_TRACE=$OUT/serve-kv-head-steps.jsonl run serve-kv-head node bench/serve/run.mjs --device cuda --model "$MODEL" --tp 1 --hf --out "$OUT/serve-kv-head.json" ;;
    failover)  # bench/failover on the GPUs there are: with 2+, a spare (tp 1 + 1 spare) and tp 2 over NCCL
               # (abort, re-form, async errors) without one; with 1, the respawn path only
      make_model; ngpu=$(nvidia-smi -L | wc -l)
      if [ "$ngpu" -ge 2 ]; then
        run failover-spare node bench/failover/run.mjs --device cuda --model "$MODEL" --replicas 1 --tp 1 --spares 1 --faults kill,stop --out "$OUT/failover-cuda-spare.json"
        run failover-tp2 node bench/failover/run.mjs --device cuda --model "$MODEL" --replicas 1 --tp 2 --spares 0 --faults kill,stop --out "$OUT/failover-cuda-tp2.json"
      else
        run failover-1gpu node bench/failover/run.mjs --device cuda --model "$MODEL" --replicas 1 --tp 1 --spares 0 --faults kill,stop --out "$OUT/failover-cuda-1gpu.json"
      fi ;;
    profile) make_model
      wall=$(node bench/decode/profile-step.mjs "$MODEL" | tail -1 | node -e "let s='';process.stdin.on('data',d=>s+=d).on('end',()=>console.log(JSON.parse(s).decodeStepMsMedian))")
      NODESPEED_CUDA_PROFILE_STEP=4 ncu --profile-from-start off --clock-control none --cache-control none --csv --metrics gpu__time_duration.sum \
        node bench/decode/profile-step.mjs "$MODEL" > "$LOGS/ncu.csv" 2>"$LOGS/ncu.err"; tail -5 "$LOGS/ncu.err"
      node bench/decode/summarize-ncu.mjs "$LOGS/ncu.csv" "$wall" | head -c 2500 ;;
  esac
done
exit $status
