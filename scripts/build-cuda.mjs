#!/usr/bin/env node
// Compiles native/src/cuda/*.cu into build/cuda/libnscuda.a (sm_80 and sm_90a machine code in one
// fat archive). Called by scripts/build-native.mjs when nvcc is found; may also be run alone.
// Quiet on success; on failure prints one message with the first compiler error and exits 1, so
// the caller can fall back to the CPU-only build with a notice.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, rmSync, statSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const srcDir = join(root, 'native', 'src', 'cuda');
const outDir = join(root, 'build', 'cuda');
const objDir = join(outDir, 'obj');
const archive = join(outDir, 'libnscuda.a');

function findNvcc() {
  const candidates = [process.env.NVCC, process.env.CUDA_HOME && join(process.env.CUDA_HOME, 'bin', 'nvcc'),
    '/usr/local/cuda/bin/nvcc'].filter(Boolean);
  for (const c of candidates) if (existsSync(c)) return c;
  const which = spawnSync('sh', ['-c', 'command -v nvcc'], { encoding: 'utf8' });
  return which.status === 0 ? which.stdout.trim() : null;
}

function fail(what, output) {
  const lines = String(output ?? '').split('\n');
  const firstError = lines.find((l) => /error/i.test(l)) ?? lines.find((l) => l.trim()) ?? '';
  process.stderr.write(`nodespeed: CUDA build failed: ${what}${firstError ? `\n  ${firstError.trim()}` : ''}\n`);
  process.exit(1);
}

const nvcc = findNvcc();
if (!nvcc) fail('nvcc not found (set NVCC or CUDA_HOME)');

const sources = readdirSync(srcDir).filter((f) => f.endsWith('.cu')).sort();
if (sources.length === 0) fail(`no .cu sources in ${srcDir}`);
mkdirSync(objDir, { recursive: true });

const flags = [
  '-O3', '-std=c++17', '--expt-relaxed-constexpr', '-Xcompiler', '-fPIC', '-Xcompiler', '-fvisibility=hidden',
  '-gencode=arch=compute_80,code=sm_80', '-gencode=arch=compute_90a,code=sm_90a',
  `-I${join(root, 'native', 'src')}`, '-DNS_WITH_CUDA',
];
if (process.env.NODESPEED_CUDA_VERBOSE) flags.push('-Xptxas', '-v');

// Compile in parallel (each nvcc is single-threaded); rebuild only sources newer than their object
// or than any header they may include (this folder's, common/'s, engine.h, cpu/rope.h).
const headerDirs = [srcDir, join(root, 'native', 'src', 'common')];
const headerTime = Math.max(0, ...headerDirs.flatMap((d) => readdirSync(d).filter((f) => f.endsWith('.h')).map((f) => statSync(join(d, f)).mtimeMs)),
  statSync(join(root, 'native', 'src', 'engine.h')).mtimeMs, statSync(join(root, 'native', 'src', 'cpu', 'rope.h')).mtimeMs);
const jobs = Math.max(1, Math.min(sources.length, Number(process.env.NODESPEED_JOBS) || cpus().length));
const objects = sources.map((s) => join(objDir, s.replace(/\.cu$/, '.o')));
const todo = sources.map((s, i) => ({ src: join(srcDir, s), obj: objects[i] })).filter(({ src, obj }) =>
  !existsSync(obj) || statSync(obj).mtimeMs < Math.max(statSync(src).mtimeMs, headerTime));

const { spawn } = await import('node:child_process');
function compile({ src, obj }) {
  return new Promise((res) => {
    const p = spawn(nvcc, [...flags, '-c', src, '-o', obj], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { out += d; });
    p.on('error', (e) => res({ src, code: 1, out: String(e) }));
    p.on('close', (code) => res({ src, code, out }));
  });
}
const queue = [...todo];
const results = [];
await Promise.all(Array.from({ length: jobs }, async () => {
  while (queue.length) results.push(await compile(queue.shift()));
}));
const bad = results.find((r) => r.code !== 0);
if (bad) {
  try { rmSync(bad.src.replace(srcDir, objDir).replace(/\.cu$/, '.o'), { force: true }); } catch {}
  fail(`nvcc ${bad.src.slice(root.length + 1)}`, bad.out);
}
if (process.env.NODESPEED_CUDA_VERBOSE) for (const r of results) process.stdout.write(r.out);

rmSync(archive, { force: true });
const ar = spawnSync('ar', ['rcs', archive, ...objects], { encoding: 'utf8' });
if (ar.status !== 0) fail('ar could not write build/cuda/libnscuda.a', ar.stderr);
