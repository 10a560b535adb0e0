#!/usr/bin/env bash
# Packs everything `bash test/gpu/quant.sh` needs on a GPU host into one file,
# .gpu/quant-bundle.tar.xz (~35 MB): the CUDA addon built on this machine, dist/, the scripts and
# their inputs (py-tiny, the held-out text), the production node_modules, the kernel test
# test/gpu/quant-kernels.cu compiled here, and the portable Node (/work/shared/tools/portable-node.sh).
# On the GPU host (the bundle carried as .gpu/quant-bundle.tar.xz of the repo root):
#   mkdir -p /tmp/qb && tar -xJf .gpu/quant-bundle.tar.xz -C /tmp/qb && cd /tmp/qb/quant && bash test/gpu/quant.sh
# Build first: npm run build:native (with nvcc: CPU + CUDA) and npx tsc -p tsconfig.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
addon=build/Release/nodespeed.node
[ -f "$addon" ] || { echo "pack-quant: $addon is missing (npm run build:native)" >&2; exit 1; }
grep -q cudaLaunchKernelEx "$addon" || { echo "pack-quant: $addon has no CUDA backend (build it where nvcc is found, without NODESPEED_NO_CUDA)" >&2; exit 1; }
[ -f dist/cli/index.js ] || { echo "pack-quant: dist/ is missing (npx tsc -p tsconfig.json)" >&2; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
stage=$tmp/quant
mkdir -p "$stage/.gpu"
# QUANT_KERNELS_BIN: a kernel test binary already built from this tree (the same nvcc command).
if [ -n "${QUANT_KERNELS_BIN:-}" ]; then cp "$QUANT_KERNELS_BIN" "$tmp/quant-kernels"; else
nvcc -O3 -std=c++17 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -Inative/src test/gpu/quant-kernels.cu \
  native/src/cuda/{gemv,quant_gemm,quant_act,quant_mma,attention,attention_prefill,rope_kv,kernels_basic,lt_gemm,moe,moe_quant,family}.cu native/src/common/{dl,quant,settings}.cc -ldl \
  -o "$tmp/quant-kernels"
fi
xz -c "$tmp/quant-kernels" > "$stage/.gpu/quant-kernels.xz"
cp "$addon" "$stage/.gpu/nodespeed.node"
git rev-parse HEAD > "$stage/.gpu/COMMIT"
[ -f .gpu/node.xz ] || bash /work/shared/tools/portable-node.sh .gpu
cp .gpu/node.xz "$stage/.gpu/"
tar -cf - dist bin package.json proto scripts bench/decode bench/serve test/gpu test/fixtures/heldout test/fixtures/hf-reference models/py-tiny native/src \
  | tar -xf - -C "$stage"
# Production dependencies only (no TypeScript, vitest, esbuild, node-gyp).
npm ls --omit=dev --all --parseable 2>/dev/null | tail -n +2 | sed "s#^$PWD/##" | sort -u | tar -cf - -T - | tar -xf - -C "$stage"
mkdir -p .gpu
tar -cJf .gpu/quant-bundle.tar.xz -C "$tmp" quant
ls -la .gpu/quant-bundle.tar.xz
echo "commit $(cat "$stage/.gpu/COMMIT")"
