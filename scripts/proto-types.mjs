#!/usr/bin/env node
// TypeScript types of proto/*.proto, made by proto-loader-gen-types (it ships with
// @grpc/proto-loader, the library that loads these files at run time) with the loader's own
// options, so each type is exactly what the loader hands us (decoded: camelCase, uint64 as decimal
// strings, enums as their names, oneof name in `msg`) or accepts (the `...In` input types).
//
//   npm run proto:gen     writes src/protocol/generated/ (checked in)
//   npm run proto:check   regenerates into a temporary folder and fails if the checked-in types
//                         differ from what proto/*.proto gives (run by `npm test`)
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const OUT = join('src', 'protocol', 'generated');
export const PROTOS = ['control.proto', 'inference.proto'];

/** The loader options of src/protocol/proto.ts, as the generator's flags (a unit test keeps them equal). */
export const GENERATOR_OPTIONS = { keepCase: false, longs: 'String', enums: 'String', defaults: true, oneofs: true };

function generate(outDir) {
  rmSync(outDir, { recursive: true, force: true });
  const bin = join(root, 'node_modules', '@grpc', 'proto-loader', 'build', 'bin', 'proto-loader-gen-types.js');
  const o = GENERATOR_OPTIONS;
  const args = [bin, `--longs=${o.longs}`, `--enums=${o.enums}`, ...(o.defaults ? ['--defaults'] : []), ...(o.oneofs ? ['--oneofs'] : []),
    ...(o.keepCase ? ['--keepCase'] : []), '--includeComments', '--grpcLib=@grpc/grpc-js', '--importFileExtension=.js',
    '--inputTemplate=%sIn', '--outputTemplate=%s', '-I', 'proto', '-O', outDir, ...PROTOS];
  const r = spawnSync(process.execPath, args, { cwd: root, encoding: 'utf8' });
  if (r.status !== 0) {
    process.stderr.write(`proto-types: proto-loader-gen-types failed\n${r.stderr}${r.stdout}`);
    process.exit(1);
  }
}

function files(dir) {
  const out = [];
  const walk = (d) => {
    for (const name of readdirSync(d).sort()) {
      const p = join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else out.push(relative(dir, p));
    }
  };
  walk(dir);
  return out;
}

function check() {
  const tmp = mkdtempSync(join(tmpdir(), 'nodespeed-proto-'));
  try {
    generate(join(tmp, 'generated'));
    const want = join(tmp, 'generated');
    const have = join(root, OUT);
    const a = files(want);
    const b = (() => { try { return files(have); } catch { return []; } })();
    const problems = [
      ...a.filter((f) => !b.includes(f)).map((f) => `missing: ${join(OUT, f)}`),
      ...b.filter((f) => !a.includes(f)).map((f) => `not generated from proto/ (stale): ${join(OUT, f)}`),
      ...a.filter((f) => b.includes(f) && readFileSync(join(want, f), 'utf8') !== readFileSync(join(have, f), 'utf8'))
        .map((f) => `differs from proto/*.proto: ${join(OUT, f)}`),
    ];
    if (problems.length) {
      process.stderr.write(`proto-types: the checked-in types do not match proto/*.proto; run \`npm run proto:gen\`\n  ${problems.join('\n  ')}\n`);
      process.exit(1);
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  if (process.argv.includes('--check')) check();
  else generate(join(root, OUT));
}
