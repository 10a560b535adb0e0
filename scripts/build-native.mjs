#!/usr/bin/env node
// Builds the native addon (build/Release/nodespeed.node). Run by `npm install` and
// `npm run build:native`. With nvcc on the machine (and NODESPEED_NO_CUDA unset) it first builds
// the CUDA backend (scripts/build-cuda.mjs → build/cuda/libnscuda.a) and links it; if that is
// missing or fails, it says so in one line and builds the CPU backend only.
// Quiet on success; on failure prints what failed and the first compiler error, exits 1.
import { spawnSync } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const verbose = !!process.env.NODESPEED_BUILD_VERBOSE;

function findNvcc() {
  const candidates = [process.env.NVCC, process.env.CUDA_HOME && join(process.env.CUDA_HOME, 'bin', 'nvcc'),
    '/usr/local/cuda/bin/nvcc'].filter(Boolean);
  for (const c of candidates) if (existsSync(c)) return c;
  const which = spawnSync('sh', ['-c', 'command -v nvcc'], { encoding: 'utf8' });
  return which.status === 0 ? which.stdout.trim() : null;
}

function buildCuda() {
  if (process.env.NODESPEED_NO_CUDA) return false;
  if (!findNvcc()) {
    console.error('nodespeed: CUDA not found, building the CPU backend only');
    return false;
  }
  const script = join(root, 'scripts', 'build-cuda.mjs');
  if (!existsSync(script)) {
    console.error('nodespeed: scripts/build-cuda.mjs is missing, building the CPU backend only');
    return false;
  }
  const r = spawnSync(process.execPath, [script], { cwd: root, stdio: verbose ? 'inherit' : ['ignore', 'pipe', 'pipe'], encoding: 'utf8' });
  if (r.status !== 0 || !existsSync(join(root, 'build', 'cuda', 'libnscuda.a'))) {
    const why = String(r.stderr ?? '').trim().split('\n').slice(0, 2).join(' / ');
    console.error(`nodespeed: CUDA backend build failed, building the CPU backend only${why ? ` (${why})` : ''}`);
    return false;
  }
  return true;
}

function nodeGyp() {
  const local = join(root, 'node_modules', '.bin', 'node-gyp');
  if (existsSync(local)) return [local, []];
  // node-gyp bundled with npm, for installs without devDependencies.
  const bundled = join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  if (existsSync(bundled)) return [process.execPath, [bundled]];
  return ['node-gyp', []];
}

// The first line that looks like a compiler/linker error, with the line after it for context.
function firstError(output) {
  const lines = output.split('\n');
  const i = lines.findIndex((l) => /(error|undefined reference|fatal)/i.test(l) && !/^gyp (ERR|info|WARN)/.test(l));
  if (i < 0) {
    // No compiler message (e.g. make or gyp itself failed): the informative gyp lines only.
    const boring = /gyp ERR! (node -v|node-gyp -v|cwd|command|System|Node-gyp failed|Try to update|not ok)/;
    const useful = lines.filter((l) => l.trim() && !boring.test(l) && !/^(gyp info|make: (Entering|Leaving))|^\s+(CXX|CC|SOLINK_MODULE|LINK|COPY)\(/.test(l));
    return (useful.length ? useful.slice(-3) : lines.filter((l) => l.trim()).slice(-3)).join('\n  ');
  }
  return lines.slice(i, i + 2).join('\n  ');
}

const cuda = buildCuda();
const [cmd, pre] = nodeGyp();
// Headers: Node's own (/usr/include/node) so no download is needed; NODESPEED_NODEDIR overrides.
const nodedir = process.env.NODESPEED_NODEDIR
  ?? (existsSync(join(dirname(process.execPath), '..', 'include', 'node', 'node_api.h')) ? resolve(dirname(process.execPath), '..') : '/usr');
// configure + build, not `rebuild`: node-gyp's clean step would delete build/cuda/libnscuda.a.
const quiet = verbose ? [] : ['--loglevel=error'];
function gyp(withCuda) {
  const steps = [
    [...pre, 'configure', ...quiet, `--nodedir=${nodedir}`, '--', `-Dcuda=${withCuda ? 1 : 0}`],
    [...pre, 'build', ...quiet, `--nodedir=${nodedir}`, `--jobs=${Math.max(1, cpus().length)}`],
  ];
  let r;
  for (const args of steps) {
    r = spawnSync(cmd, args, { cwd: root, stdio: verbose ? 'inherit' : ['ignore', 'pipe', 'pipe'], encoding: 'utf8' });
    if (r.error || r.status !== 0) break;
  }
  return r;
}
// make does not see build/cuda/libnscuda.a as an input of the link: drop the linked addon so a
// rebuilt CUDA archive is always linked in (a relink costs seconds).
if (cuda) for (const f of [['Release', 'nodespeed.node'], ['Release', 'obj.target', 'nodespeed.node']]) rmSync(join(root, 'build', ...f), { force: true });
let cudaLinked = cuda;
let r = gyp(cuda);
if (cuda && (r.error || r.status !== 0)) {
  // The CPU backend must not depend on the CUDA one: say why, then build without it.
  const out = `${r.stdout ?? ''}\n${r.stderr ?? ''}`;
  console.error(`nodespeed: building with the CUDA backend failed, building the CPU backend only\n  ${firstError(out)}`);
  cudaLinked = false;
  r = gyp(false);
}
if (r.error || r.status !== 0) {
  const out = `${r.stdout ?? ''}\n${r.stderr ?? ''}`;
  console.error(`nodespeed: native addon build failed${r.error ? ` (${r.error.message})` : ''}\n  ${firstError(out)}\n` +
    '  (run NODESPEED_BUILD_VERBOSE=1 npm run build:native for the full log)');
  process.exit(1);
}
if (verbose) console.error(`nodespeed: built build/Release/nodespeed.node (${cudaLinked ? 'CPU + CUDA' : 'CPU'})`);
