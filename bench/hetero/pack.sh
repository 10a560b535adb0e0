#!/usr/bin/env bash
# Packs everything `bash bench/gpu-visit.sh hetero` needs on a GPU host into one file, .gpu/hetero-bundle.tar.xz
# (~35 MB): the committed HEAD exported to a temporary folder and built there (the addon with its
# CUDA backend, dist/), so the bundle is exactly one commit whatever the working tree holds; the
# production node_modules; the portable Node (/work/shared/tools/portable-node.sh).
#   usage (repo root as cwd, nvcc on PATH or in /usr/local/cuda): bash bench/hetero/pack.sh
#   NODESPEED_JOBS=N: parallel nvcc jobs (default 1: the build machine is shared); it runs at nice 19.
# The CUDA addon depends only on native/: it is kept as .gpu/addon-<native tree hash>.node and reused
# by a later pack of a commit with the same native/ tree (a TypeScript-only change repacks in minutes).
# On the GPU host, the bundle carried as .gpu/hetero-bundle.tar.xz of the repo root:
#   mkdir -p /tmp/hb && tar -xJf .gpu/hetero-bundle.tar.xz -C /tmp/hb && cd /tmp/hb/hetero && xz -dc .gpu/node.xz > /tmp/node &&
#   chmod +x /tmp/node && PATH=/tmp:$PATH NODESPEED_COMMIT=$(cat .gpu/COMMIT) bash bench/gpu-visit.sh hetero
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
commit=$(git rev-parse --short HEAD)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
src=$tmp/src
mkdir -p "$src"
git archive HEAD | tar -xf - -C "$src"
ln -s "$repo/node_modules" "$src/node_modules"
native=$(git rev-parse HEAD:native)
mkdir -p .gpu
addon=$repo/.gpu/addon-$native.node
(
  cd "$src"
  if [ ! -f "$addon" ]; then
    export NODESPEED_JOBS=${NODESPEED_JOBS:-1}
    nice -n 19 node scripts/build-native.mjs
    grep -q cudaLaunchKernelEx build/Release/nodespeed.node || { echo "pack: the addon built at $commit has no CUDA backend (is nvcc found?)" >&2; exit 1; }
    cp build/Release/nodespeed.node "$addon.tmp" && mv "$addon.tmp" "$addon"
  fi
  nice -n 19 node node_modules/typescript/bin/tsc -p tsconfig.json
)
stage=$tmp/stage/hetero
mkdir -p "$stage/.gpu"
mkdir -p "$stage/build/Release"
cp "$addon" "$stage/build/Release/nodespeed.node"
echo "$commit" > "$stage/.gpu/COMMIT"
[ -f .gpu/node.xz ] || bash /work/shared/tools/portable-node.sh .gpu
cp .gpu/node.xz "$stage/.gpu/"
(cd "$src" && tar -cf - dist bin package.json proto bench/hetero bench/gpu-visit.sh) | tar -xf - -C "$stage"
# Production dependencies only (no TypeScript, vitest, esbuild, node-gyp).
npm ls --omit=dev --all --parseable 2>/dev/null | tail -n +2 | sed "s#^$repo/##" | sort -u | tar -cf - -T - | tar -xf - -C "$stage"
tar -cJf .gpu/hetero-bundle.tar.xz -C "$tmp/stage" hetero
ls -la .gpu/hetero-bundle.tar.xz
echo "commit $commit (native/ tree $native)"
