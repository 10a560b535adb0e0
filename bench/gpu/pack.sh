#!/usr/bin/env bash
# Packs what a GPU host without Node needs to run this checkout's benchmarks and GPU tests, in
# .gpu/ (git-ignored; carried to the host as a path of the repo):
#   .gpu/base/node.xz      this machine's Node, stripped (needs only glibc)
#   .gpu/base/nm.tar.xz    the production node_modules (~3 MB: what the CLI, bench/ and test/gpu/*.mjs load)
#   .gpu/nm-test.tar.xz    the rest the test/gpu vitest suites need (vitest, vite, esbuild, rollup and
#                          their dependencies, node_modules/.bin; ~7 MB): carry it only for those;
#                          never the build-only packages (typescript, @types, node-gyp) nor openai
#                          (only the HTTP API tests use it)
#   .gpu/base/prelude.sh   sourced at the tree root there: Node on PATH, node_modules (with
#                          nm-test.tar.xz when carried), an overlay
#   .gpu/ov-NAME.tar.xz    an overlay: dist/ and the stripped addon of a checkout (which must be built
#                          with CUDA), the tracked files its HEAD changed against main, and .deleted
#                          (the files it removed); ov-NAME.commit holds its HEAD
# usage: bash bench/gpu/pack.sh [CHECKOUT NAME]...   (no arguments: this checkout as "main")
# On the host:  . .gpu/base/prelude.sh                 # this tree + .gpu/ov-main.tar.xz
#               OV=.gpu/ov-NAME.tar.xz . .gpu/base/prelude.sh   # this tree with NAME's overlay over it
# The tree and what is carried must stay under the device's 64 MiB (counted in disk blocks): the base
# is ~25 MB, nm-test ~7 MB, an overlay ~2.1 MB.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
mkdir -p .gpu/base
[ -f .gpu/base/node.xz ] || bash /work/shared/tools/portable-node.sh .gpu/base > /dev/null
if [ ! -f .gpu/base/nm.tar.xz ] || [ ! -f .gpu/nm-test.tar.xz ] || [ package-lock.json -nt .gpu/base/nm.tar.xz ]; then
  lists=$(mktemp -d)
  npm ls --omit=dev --all --parseable 2>/dev/null | tail -n +2 | sed "s#^$repo/##" | sort -u > "$lists/prod"
  npm ls --all --parseable 2>/dev/null | tail -n +2 | sed "s#^$repo/##" | sort -u |
    grep -Ev '^node_modules/(typescript|@types/[^/]+|node-gyp|openai)$' | comm -23 - "$lists/prod" > "$lists/test"
  echo node_modules/.bin >> "$lists/test"
  tar -cf - -T "$lists/prod" | xz -T0 -6 > .gpu/base/nm.tar.xz
  tar -cf - -T "$lists/test" | xz -T0 -6 > .gpu/nm-test.tar.xz
  rm -rf "$lists"
fi
cat > .gpu/base/prelude.sh <<'PRELUDE'
# Sourced at the tree root on the GPU host (bench/gpu/pack.sh made it).
xz -dc .gpu/base/node.xz > /tmp/node && chmod +x /tmp/node && export PATH=/tmp:$PATH
[ -d node_modules/@grpc ] || tar -xJf .gpu/base/nm.tar.xz
[ ! -f .gpu/nm-test.tar.xz ] || [ -d node_modules/vitest ] || tar -xJf .gpu/nm-test.tar.xz
ov=${OV:-.gpu/ov-main.tar.xz}
tar -xJf "$ov" && { [ ! -f .deleted ] || xargs -r rm -f < .deleted; }
export NODESPEED_COMMIT=$(cat "${ov%.tar.xz}.commit") NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
node -e "const i = require('./build/Release/nodespeed.node').info().cuda; console.log(JSON.stringify(i)); process.exit(i.available ? 0 : 1)"
PRELUDE
overlay() {
  local wt=$1 name=$2 tmp
  grep -q cudaLaunchKernelEx "$wt/build/Release/nodespeed.node" || { echo "pack: $wt's addon has no CUDA backend" >&2; exit 1; }
  [ -z "$(git -C "$wt" status --porcelain -uno)" ] || echo "pack: $wt has uncommitted changes: its dist/ and addon may not be its HEAD" >&2
  tmp=$(mktemp -d)
  mkdir -p "$tmp/build/Release"
  cp -a "$wt/dist" "$tmp/"
  strip -o "$tmp/build/Release/nodespeed.node" "$wt/build/Release/nodespeed.node"
  local base; base=$(git -C "$wt" merge-base HEAD main)
  git -C "$wt" diff --name-only --diff-filter=d "$base" HEAD | while read -r f; do
    mkdir -p "$tmp/$(dirname "$f")"; git -C "$wt" show "HEAD:$f" > "$tmp/$f"; done
  git -C "$wt" diff --name-only --diff-filter=D "$base" HEAD > "$tmp/.deleted"
  tar -C "$tmp" -cf - . | xz -T0 -6 > "$repo/.gpu/ov-$name.tar.xz"
  git -C "$wt" rev-parse HEAD > "$repo/.gpu/ov-$name.commit"
  rm -rf "$tmp"
  echo "pack: .gpu/ov-$name.tar.xz ($(du -h "$repo/.gpu/ov-$name.tar.xz" | cut -f1)) = $wt at $(git -C "$wt" rev-parse --short HEAD)"
}
if [ $# -eq 0 ]; then overlay "$repo" main; fi
while [ $# -ge 2 ]; do overlay "$(realpath "$1")" "$2"; shift 2; done
echo "pack: .gpu/ $(du -sh .gpu | cut -f1), tracked tree $(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1) bytes"
