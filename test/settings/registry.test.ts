// The settings registry (src/settings/index.ts): parsing, rejection messages, what the launcher forwards,
// the struct the native addon gets, `nodespeed env`, and that nothing else reads NODESPEED_* variables.
import { execFile, execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

import { carriedEnv } from '../../src/launcher/env.js';
import { loadAddon } from '../../src/native/addon.js';
import {
  allSettings, BUILD_SETTINGS, forwardedEnv, isForwarded, isUserFacing, nativeSettings, parseSettings, settingNamed,
  settingsEnv, SettingsError, unknownSettings,
} from '../../src/settings/index.js';
import { ROOT } from '../launcher/cli-helpers.js';

const run = promisify(execFile);
const CLI = join(ROOT, 'bin', 'nodespeed');
const names = allSettings().map((s) => s.name);

describe('parsing', () => {
  it('unset or empty is the default', () => {
    const d = parseSettings({});
    expect(d).toMatchObject({ threads: 0, computeNice: 2, noAvx2: false, p2p: true, p2pTimeoutS: 60, cudaRound: 0, cudaGraphMax: 256,
      cudaFlashDecodeMin: undefined, cudaAttnSplitsMax: 16, cudaProfileStep: undefined, heartbeatMs: 1000, stepTimeoutMs: 30_000,
      ncclPath: undefined, stepTrace: undefined, requestTrace: undefined });
    expect(parseSettings({ NODESPEED_CUDA_GRAPH_MAX: '', NODESPEED_P2P: '', NODESPEED_AUTH_TOKEN: '' })).toEqual(d);
  });
  it('one boolean convention: 1/0, true/false, yes/no, on/off, any case', () => {
    for (const [raw, want] of [['1', true], ['true', true], ['YES', true], ['on', true], ['0', false], ['false', false], ['No', false], ['OFF', false]] as const) {
      expect(parseSettings({ NODESPEED_CUDA_GRAPHS: raw }).cudaGraphs).toBe(want);
      expect(parseSettings({ NODESPEED_NO_AVX2: raw }).noAvx2).toBe(want);
    }
  });
  it('numbers, paths and strings are typed', () => {
    const s = parseSettings({ NODESPEED_THREADS: '6', NODESPEED_P2P_TIMEOUT_S: '2.5', NODESPEED_CUDA_ROUND: '31', NODESPEED_CUDA_PROFILE_STEP: '0',
      NODESPEED_NCCL: '/opt/nccl/libnccl.so.2', NODESPEED_HEARTBEAT_MS: '200.5', NODESPEED_STEP_TIMEOUT_MS: '0', NODESPEED_CUDA_FLASH_DECODE_MIN: '2048' });
    expect(s).toMatchObject({ threads: 6, p2pTimeoutS: 2.5, cudaRound: 31, cudaProfileStep: 0, ncclPath: '/opt/nccl/libnccl.so.2',
      heartbeatMs: 200.5, stepTimeoutMs: 0, cudaFlashDecodeMin: 2048 });
  });
});

describe('bad values are rejected with a message naming the variable', () => {
  const bad: Array<[Record<string, string>, string]> = [
    [{ NODESPEED_CUDA_GRAPH_MAX: '999' }, 'NODESPEED_CUDA_GRAPH_MAX=999: expected an integer 1..256'],
    [{ NODESPEED_CUDA_GRAPH_MAX: '4x' }, 'NODESPEED_CUDA_GRAPH_MAX=4x: expected an integer 1..256'],
    [{ NODESPEED_CUDA_ATTN_SPLITS_MAX: '0' }, 'NODESPEED_CUDA_ATTN_SPLITS_MAX=0: expected an integer 1..16'],
    [{ NODESPEED_CUDA_ROUND: '32' }, 'NODESPEED_CUDA_ROUND=32: expected an integer 0..31'],
    [{ NODESPEED_THREADS: '-1' }, 'NODESPEED_THREADS=-1: expected an integer >= 0'],
    [{ NODESPEED_COMPUTE_NICE: '20' }, 'NODESPEED_COMPUTE_NICE=20: expected an integer 0..19'],
    [{ NODESPEED_P2P: 'maybe' }, 'NODESPEED_P2P=maybe: expected 1 or 0 (or true/false, yes/no, on/off)'],
    [{ NODESPEED_P2P_TIMEOUT_S: '0' }, 'NODESPEED_P2P_TIMEOUT_S=0: expected a number > 0'],
    [{ NODESPEED_P2P_TIMEOUT_S: 'soon' }, 'NODESPEED_P2P_TIMEOUT_S=soon: expected a number > 0'],
    [{ NODESPEED_HEARTBEAT_MS: '0' }, 'NODESPEED_HEARTBEAT_MS=0: expected a number > 0'],
    [{ NODESPEED_STEP_TIMEOUT_MS: '-1' }, 'NODESPEED_STEP_TIMEOUT_MS=-1: expected a number >= 0'],
  ];
  for (const [env, msg] of bad) {
    it(msg, () => {
      expect(() => parseSettings(env)).toThrow(SettingsError);
      expect(() => parseSettings(env)).toThrow(msg);
    });
  }
  it('every bad value at once, one line each', () => {
    expect(() => parseSettings({ NODESPEED_CUDA_LT: '2', NODESPEED_CUDA_GRAPH_MAX: '0' })).toThrow(
      'NODESPEED_CUDA_GRAPH_MAX=0: expected an integer 1..256\nNODESPEED_CUDA_LT=2: expected 1 or 0 (or true/false, yes/no, on/off)');
  });
  it('a flag standing for an entry is checked the same way', () => {
    expect(settingsEnv({ cudaRound: '31' })).toEqual({ NODESPEED_CUDA_ROUND: '31' });
    expect(() => settingsEnv({ cudaRound: '64' })).toThrow('NODESPEED_CUDA_ROUND=64: expected an integer 0..31');
  });
  it('names that are no setting are reported (a typo, a removed switch)', () => {
    expect(unknownSettings({ NODESPEED_CUDA_SKINNY: '1', NODESPEED_CUDA_GRAPHS: '0', NODESPEED_THREAD: '4', PATH: '/bin' }))
      .toEqual(['NODESPEED_CUDA_SKINNY', 'NODESPEED_THREAD']);
  });
});

describe('what the launcher forwards to every rank', () => {
  const FORWARDED = [
    'NODESPEED_THREADS', 'NODESPEED_NCCL', 'NODESPEED_CUBLAS', 'NODESPEED_CUBLASLT', 'NODESPEED_HEAP_GROWING_PERCENT', 'NODESPEED_COMPUTE_NICE', 'NODESPEED_NO_AVX2',
    'NODESPEED_P2P', 'NODESPEED_P2P_NORM', 'NODESPEED_P2P_TIMEOUT_S', 'NODESPEED_CUDA_ROUND', 'NODESPEED_CUDA_GEMV', 'NODESPEED_CUDA_GRAPHS',
    'NODESPEED_CUDA_GRAPH_MAX', 'NODESPEED_CUDA_FLASH', 'NODESPEED_CUDA_FLASH_DECODE_MIN', 'NODESPEED_CUDA_ATTN_SPLITS_MAX',
    'NODESPEED_CUDA_WARMUP', 'NODESPEED_CUDA_LT', 'NODESPEED_CUDA_PROFILE_STEP', 'NODESPEED_STEP_TRACE', 'NODESPEED_REQUEST_TRACE',
  ];
  it('exactly the user-facing worker entries', () => {
    expect(allSettings().filter(isForwarded).map((s) => s.name)).toEqual(FORWARDED);
    for (const s of allSettings().filter(isForwarded)) expect(isUserFacing(s)).toBe(true);
  });
  it('never a token, never a per-process or internal value', () => {
    for (const s of allSettings().filter((x) => x.secret)) expect(isForwarded(s)).toBe(false);
    const env = Object.fromEntries(names.map((n) => [n, '1']));
    expect(Object.keys(forwardedEnv(env)).sort()).toEqual([...FORWARDED].sort());
    const carried = carriedEnv({ ...env, NCCL_DEBUG: 'INFO', PATH: '/p', LD_LIBRARY_PATH: '/l', HOME: '/h', NODESPEED_CUDA_SKINNY: '1' });
    for (const n of ['NODESPEED_AUTH_TOKEN', 'NODESPEED_JOB_TOKEN', 'NODESPEED_SSH_DIR', 'NODESPEED_ADVERTISE_ADDR', 'NODESPEED_HOST',
      'NODESPEED_COORDINATOR', 'NODESPEED_NO_CUDA', 'NODESPEED_CUDA_SKINNY', 'HOME']) expect(carried).not.toHaveProperty(n);
    for (const n of [...FORWARDED, 'NCCL_DEBUG', 'PATH', 'LD_LIBRARY_PATH']) expect(carried).toHaveProperty(n);
  });
  it('the values travel as they were set', () => {
    expect(forwardedEnv({ NODESPEED_CUDA_LT: 'off', NODESPEED_CUBLASLT: '/x/libcublasLt.so', NODESPEED_AUTH_TOKEN: 's' }))
      .toEqual({ NODESPEED_CUDA_LT: 'off', NODESPEED_CUBLASLT: '/x/libcublasLt.so' });
  });
});

describe('the registry table', () => {
  it('every entry has a unique NODESPEED_ name, a doc line and a scope', () => {
    expect(new Set(names).size).toBe(names.length);
    for (const s of allSettings()) {
      expect(s.name).toMatch(/^NODESPEED_[A-Z0-9_]+$/);
      expect(s.doc.length).toBeGreaterThan(10);
      expect(s.doc).not.toContain('\n');
      expect(['worker', 'process', 'internal', 'test', 'build']).toContain(s.scope);
    }
    expect(BUILD_SETTINGS.map((s) => s.name)).toEqual(['NODESPEED_NO_CUDA', 'NODESPEED_BUILD_VERBOSE', 'NODESPEED_CUDA_VERBOSE',
      'NODESPEED_JOBS', 'NODESPEED_NODEDIR']);
  });
  it('every default parses back to itself', () => {
    for (const s of allSettings()) {
      if (s.default === undefined || s.type === 'flag') continue;
      const raw = typeof s.default === 'boolean' ? (s.default ? '1' : '0') : String(s.default);
      expect(s.parse(raw)).toEqual(s.default);
    }
  });
});

// Source files under `dir` (recursively) with the given extensions.
function sources(dir: string, exts: string[]): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    return statSync(p).isDirectory() ? sources(p, exts) : exts.some((e) => f.endsWith(e)) ? [p] : [];
  });
}

describe('one place reads them', () => {
  const ts = sources(join(ROOT, 'src'), ['.ts']);
  const native = sources(join(ROOT, 'native', 'src'), ['.cc', '.cu', '.h']);
  const scripts = sources(join(ROOT, 'scripts'), ['.mjs']);
  const gpuHost = [...sources(join(ROOT, 'bench'), ['.mjs', '.sh', '.py', '.cu']).filter((f) => !f.includes('/results/')),
    ...sources(join(ROOT, 'test', 'gpu'), ['.ts', '.mjs', '.py', '.cu']), join(ROOT, 'README.md'), ...sources(join(ROOT, 'docs'), ['.md'])];
  it('TypeScript reads process.env for NODESPEED_* in src/settings/index.ts only', () => {
    const readers = ts.filter((f) => /process\.env(\.NODESPEED_|\[['"`]NODESPEED_)/.test(readFileSync(f, 'utf8')));
    expect(readers.map((f) => relative(ROOT, f))).toEqual([]);
  });
  it('native code calls getenv in common/dl.cc only (the dynamic loader\'s own variables)', () => {
    const readers = native.filter((f) => /\bgetenv\s*\(/.test(readFileSync(f, 'utf8')));
    expect(readers.map((f) => relative(ROOT, f))).toEqual(['native/src/common/dl.cc']);
    expect(readFileSync(join(ROOT, 'native', 'src', 'common', 'dl.cc'), 'utf8')).not.toMatch(/getenv\("NODESPEED_/);
  });
  it('every NODESPEED_* name in src/, native/src, scripts/, bench/, test/gpu/ and the docs is in the registry', () => {
    const unknown = new Set<string>();
    // Constants of the code that happen to start with NODESPEED_ (e.g. launcher/backends.ts NODESPEED_BIN) are no variables.
    const declared = new Set(ts.flatMap((f) => [...readFileSync(f, 'utf8').matchAll(/\b(?:const|let|var)\s+(NODESPEED_[A-Z0-9_]+)/g)].map((m) => m[1]!)));
    for (const f of [...ts, ...native, ...scripts, ...gpuHost])
      for (const m of readFileSync(f, 'utf8').matchAll(/\bNODESPEED_[A-Z0-9_]*[A-Z0-9]\b/g))
        if (!settingNamed(m[0]) && !declared.has(m[0])) unknown.add(`${relative(ROOT, f)}: ${m[0]}`);
    expect([...unknown]).toEqual([]);
  });
});

describe('the native struct', () => {
  it('the addon takes the registry\'s struct and gives it back unchanged', () => {
    const addon = loadAddon();
    const before = addon.settings();
    const custom = nativeSettings(parseSettings({ NODESPEED_THREADS: '3', NODESPEED_NCCL: '/n.so', NODESPEED_CUDA_GRAPH_MAX: '8',
      NODESPEED_CUDA_FLASH_DECODE_MIN: '64', NODESPEED_P2P_TIMEOUT_S: '1.5', NODESPEED_CUDA_PROFILE_STEP: '4', NODESPEED_CUDA_LT: '0' }));
    try {
      addon.configure(custom);
      expect(addon.settings()).toEqual(custom);
      expect(addon.info().cpu.threads).toBe(3);
    } finally {
      addon.configure(before);
    }
  });
  it('a field missing or unknown on either side is an error', () => {
    const addon = loadAddon();
    const { cudaLt: _, ...missing } = nativeSettings(parseSettings({}));
    expect(() => addon.configure(missing as never)).toThrow('configure(settings): settings.cudaLt is missing');
    expect(() => addon.configure({ ...nativeSettings(parseSettings({})), cudaSkinny: true } as never))
      .toThrow('configure(settings): settings.cudaSkinny is not a native setting');
    expect(() => addon.configure({ ...nativeSettings(parseSettings({})), cudaGraphMax: '8' } as never))
      .toThrow('configure(settings): settings.cudaGraphMax must be a number');
  });
  it('the native defaults (programs built without the addon\'s JS) are the registry\'s', () => {
    const script = `process.stdout.write(JSON.stringify(require(${JSON.stringify(join(ROOT, 'build', 'Release', 'nodespeed.node'))}).settings()))`;
    const fresh = JSON.parse(execFileSync(process.execPath, ['-e', script], { encoding: 'utf8' }));
    expect(fresh).toEqual(nativeSettings(parseSettings({})));
  });
});

describe('flags that stand for a registry entry', () => {
  it('generate --hf-rounding hands NODESPEED_CUDA_ROUND=31 to the addon before it loads', async () => {
    const dist = (p: string) => JSON.stringify(join(ROOT, 'dist', p));
    const script = `import { generateLocal } from ${dist('cli/generate.js')}; import { loadAddon } from ${dist('native/addon.js')};
      const o = { model: ${JSON.stringify(join(ROOT, 'models', 'py-tiny'))}, device: 'cpu', dtype: 'auto', maxTokens: 1, temperature: 0, topK: 0,
        topP: 1, stop: [], json: true, hfRounding: process.argv[1] === 'flag' };
      await generateLocal('def', o, { write: () => true });
      process.stdout.write(String(loadAddon().settings().cudaRound));`;
    const mask = async (arg: string) => (await run(process.execPath, ['--input-type=module', '-e', script, arg])).stdout;
    expect(await mask('flag')).toBe('31');
    expect(await mask('none')).toBe('0');
  });
  it('launch --hf-rounding is a documented flag of launch, demo and generate', async () => {
    for (const cmd of ['launch', 'demo', 'generate']) expect((await run(process.execPath, [CLI, cmd, '--help'])).stdout).toContain('--hf-rounding');
  });
});

describe('nodespeed env', () => {
  it('lists every entry with type, default, scope and value; secrets hidden', async () => {
    const { stdout } = await run(process.execPath, [CLI, 'env', '--all'],
      { env: { ...process.env, NODESPEED_CUDA_GRAPH_MAX: '64', NODESPEED_AUTH_TOKEN: 'hunter2' } });
    for (const n of names) expect(stdout).toContain(n);
    expect(stdout).toMatch(/NODESPEED_CUDA_GRAPH_MAX\s+int 1\.\.256\s+256\s+64\s+\[debug\] largest decode batch run as a CUDA graph/);
    expect(stdout).toMatch(/NODESPEED_AUTH_TOKEN\s+string\s+-\s+<set>/);
    expect(stdout).not.toContain('hunter2');
    expect(stdout).toContain('worker settings: read by workers; `launch` and `run` forward them to every rank');
  });
  it('--json shows a bad value with its reason instead of failing, and the names that are no setting', async () => {
    const { stdout } = await run(process.execPath, [CLI, 'env', '--json'],
      { env: { ...process.env, NODESPEED_CUDA_ROUND: '99', NODESPEED_CUDA_SKINNY: '1' } });
    const out = JSON.parse(stdout) as { settings: Array<{ name: string; value?: string; error?: string; forwarded: boolean }>; unknown: string[] };
    expect(out.settings.map((r) => r.name)).toEqual(names);
    expect(out.settings.find((r) => r.name === 'NODESPEED_CUDA_ROUND')).toMatchObject({ value: '99', forwarded: true,
      error: 'NODESPEED_CUDA_ROUND=99: expected an integer 0..31' });
    expect(out.unknown).toContain('NODESPEED_CUDA_SKINNY');
  });
  it('any other command refuses to start on a bad value, naming it; an unknown name is reported', async () => {
    const bad = run(process.execPath, [CLI, 'status', '--server', '127.0.0.1:1', '--timeout', '1'],
      { env: { ...process.env, NODESPEED_CUDA_GRAPH_MAX: '999' } });
    await expect(bad).rejects.toMatchObject({ stderr: expect.stringContaining('NODESPEED_CUDA_GRAPH_MAX=999: expected an integer 1..256') });
    const typo = run(process.execPath, [CLI, 'status', '--server', '127.0.0.1:1', '--timeout', '1'],
      { env: { ...process.env, NODESPEED_CUDA_GRAPHMAX: '4' } });
    await expect(typo).rejects.toMatchObject({ stderr: expect.stringContaining('nodespeed: NODESPEED_CUDA_GRAPHMAX is not a nodespeed setting and is ignored') });
  });
});
