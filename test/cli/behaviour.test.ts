// The CLI as a new user meets it: output through pipes, help and usage errors, flag ranges, prompts
// from stdin, checkpoints that cannot load, ports in use, --server's flags, huge hostfiles.
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, requireBuild, runCli } from '../launcher/cli-helpers.js';
import { launch, PY_TINY } from '../serving/helpers.js';

let dir: string;
/** py-tiny with one tensor's shape swapped in the safetensors header (the data stays the same size). */
let broken: string;

beforeAll(() => {
  requireBuild();
  dir = mkdtempSync(join(tmpdir(), 'nodespeed-cli-behaviour-'));
  broken = join(dir, 'broken');
  cpSync(PY_TINY, broken, { recursive: true });
  const file = join(broken, 'model.safetensors');
  const buf = readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, { shape: number[] }>;
  header['model.layers.1.mlp.up_proj.weight']!.shape.reverse();
  const json = Buffer.from(JSON.stringify(header).padEnd(n, ' '));
  writeFileSync(file, Buffer.concat([buf.subarray(0, 8), json, buf.subarray(8 + n)]));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/**
 * A process with stdin from `input`, collecting everything. Asynchronous on purpose: a spawnSync that
 * blocks the test worker for a minute on a loaded machine starves vitest's own RPC.
 */
function exec(file: string, args: string[], opts: { input?: Buffer | string; env?: NodeJS.ProcessEnv; cwd?: string } = {}) {
  return new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
    const child = spawn(file, args, { cwd: opts.cwd ?? dir, env: { ...process.env, ...opts.env }, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString().trimEnd() });
    });
    child.stdin.end(opts.input ?? '');
  });
}

/** The CLI, as a user runs it. */
const cli = (args: string[], opts: { input?: Buffer | string; env?: NodeJS.ProcessEnv; cwd?: string } = {}) => exec(process.execPath, [CLI, ...args], opts);

describe('output through a pipe', () => {
  const gen = (code: number) => `for (let i = 0; i < 40000; i++) process.stdout.write(\`line \${i} \${'x'.repeat(60)}\\n\`);\nprocess.exitCode = ${code};\n`;

  it.each([0, 3])('run | slow reader: all 40,000 lines arrive and the exit status is the rank\'s (%i)', async (code) => {
    writeFileSync(join(dir, `gen${code}.mjs`), gen(code));
    // The reader sleeps before reading: the launcher's writes back up behind a full pipe.
    const out = join(dir, `out${code}.txt`);
    const r = await exec('bash', ['-c', `node ${CLI} run -q --num_cpu_workers 1 gen${code}.mjs | (sleep 2; cat > ${out}); echo "status=\${PIPESTATUS[0]}"`]);
    expect(r.stdout.trim()).toBe(`status=${code}`);
    const lines = readFileSync(out, 'utf8').split('\n').filter((l) => l !== '');
    expect(lines).toHaveLength(40000);
    expect(lines[39999]).toBe(`[localhost:0] line 39999 ${'x'.repeat(60)}`);
  });

  it('a reader that stops early ends the run like SIGPIPE does (141), not with an unhandled EPIPE', async () => {
    const r = await exec('bash', ['-c', `node ${CLI} run -q --num_cpu_workers 1 gen0.mjs | head -1; echo "status=\${PIPESTATUS[0]}"`]);
    expect(r.stdout.split('\n')[0]).toBe(`[localhost:0] line 0 ${'x'.repeat(60)}`);
    expect(r.stdout).toContain('status=141');
    expect(r.stderr).not.toMatch(/EPIPE|at /);
  });
});

describe('help and usage errors', () => {
  it('model init --help shows its defaults; its usage errors no longer crash on the BigInt default', async () => {
    const help = await cli(['model', 'init', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/--seed <s>\s+weights seed \(same seed, same bytes\) \(default: 0\)/);
    expect(help.stdout).toMatch(/--max-shard-gb <gb>\s+largest safetensors file, in GB \(default: 2\)/);
    const usage = await cli(['model', 'init', 'out']);
    expect([usage.code, usage.stderr]).toEqual([1, "error: required option '--preset <preset>' not specified\n(run 'nodespeed model init --help' for usage)"]);
  });

  it('a usage error prints the error and a pointer to --help, not the whole help', async () => {
    const r = await cli(['launch', '--model', PY_TINY, '--tp']);
    expect([r.code, r.stderr]).toEqual([1, "error: option '--tp <n>' argument missing\n(run 'nodespeed launch --help' for usage)"]);
    const unknown = await cli(['run', '--num_nodez', '1', 'x.py']);
    expect(unknown.stderr).toBe("error: unknown option '--num_nodez'\n(Did you mean --num_nodes?)\n(run 'nodespeed run --help' for usage)");
  });

  it('demo --help shows the demo\'s own defaults', async () => {
    const h = (await cli(['demo', '--help'])).stdout.replace(/\s+/g, ' ');
    expect(h).toContain('--tp <n> tensor-parallel ranks per pipeline stage (default: 2)');
    expect(h).toMatch(/--device <device> .*default: "cpu"\)/);
    expect(h).toContain('--port <port> port of the gRPC API (0: any free port) (default: 0)');
    expect(h).toContain('--bind <addr> address the gRPC server listens on (default: "127.0.0.1")');
    expect(h).toContain('--max-tokens <n> tokens to generate (default: 64)');
    expect(h).toContain('(default: --tp x --pp)');
  });
});

describe('integer flags are checked against what the wire carries', () => {
  it.each([
    [['generate', '--server', 'localhost:1', '--max-tokens', '4294967297', 'hi'], "--max-tokens must be an integer from 1 to 2147483647 (got '4294967297')"],
    [['generate', '--model', PY_TINY, '--max-tokens', '2147483648', 'hi'], "--max-tokens must be an integer from 1 to 2147483647 (got '2147483648')"],
    [['generate', '--model', PY_TINY, '--top-k', '4294967296', 'hi'], "--top-k must be an integer from 0 to 4294967295 (got '4294967296')"],
    [['launch', '--model', PY_TINY, '--kv-blocks', '4294967296'], "--kv-blocks must be an integer from 0 to 4294967295 (got '4294967296')"],
    [['launch', '--model', PY_TINY, '--port', '65536'], "--port must be an integer from 0 to 65535 (got '65536')"],
    [['launch', '--model', PY_TINY, '--heartbeat-timeout', '3000000'], "--heartbeat-timeout must be a number of seconds > 0 and at most 2147483 (got '3000000')"],
    [['demo', '--max-tokens', '1e3'], "--max-tokens must be an integer from 1 to 2147483647 (got '1e3')"],
    [['run', '--master_port', '70000', 'x.py'], "--master_port must be an integer from 1 to 65535 (got '70000')"],
  ])('%j', async (args, message) => {
    const r = await cli(args);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(message);
  });
});

describe('generate', () => {
  it('a prompt from stdin with -, the same answer as the argument; invalid UTF-8 in either is an error', async () => {
    const prompt = 'def fibonacci(n):\n';
    const arg = await cli(['generate', '--model', PY_TINY, '--max-tokens', '8', '--json', prompt]);
    const stdin = await cli(['generate', '--model', PY_TINY, '--max-tokens', '8', '--json', '-'], { input: prompt });
    expect(arg.code, arg.stderr).toBe(0);
    expect(JSON.parse(stdin.stdout).token_ids).toEqual(JSON.parse(arg.stdout).token_ids);
    const badStdin = await cli(['generate', '--model', PY_TINY, '-'], { input: Buffer.from([0x61, 0x62, 0xff, 0x63]) });
    expect([badStdin.code, badStdin.stderr]).toEqual([1, 'the prompt on stdin is not valid UTF-8 (byte 0xff at offset 2)']);
    // Through a shell, as a user passes bytes: bash's $'\xc3' is a lone lead byte.
    const badArg = await exec('bash', ['-c', `node ${CLI} generate --model ${PY_TINY} $'ab\\xc3'`]);
    expect([badArg.code, badArg.stderr]).toEqual([1, 'the prompt argument is not valid UTF-8 (byte 0xc3 at offset 2)']);
    // A real U+FFFD is a character like any other.
    expect((await cli(['generate', '--model', PY_TINY, '--max-tokens', '1', 'a\uFFFDb'])).code).toBe(0);
  });

  it('--server refuses the flags it would ignore, and the server-only flags need --server', async () => {
    const r = await cli(['generate', '--server', 'localhost:1', '--model', PY_TINY, '--dtype', 'f32', 'hi']);
    expect([r.code, r.stderr]).toEqual([1, "error: --model, --dtype cannot be used with --server: the server's launch chose its model, device, dtype, threads and rounding\n(run 'nodespeed generate --help' for usage)"]);
    const local = await cli(['generate', '--model', PY_TINY, '--auth-token', 't', 'hi']);
    expect(local.stderr).toBe("error: --auth-token only apply with --server\n(run 'nodespeed generate --help' for usage)");
  });

  it('--server with --auth-token and --timeout against a real launch', async () => {
    const cluster = await launch(PY_TINY, ['--num_cpu_workers', '1', '--kv-blocks', '16'], { env: { NODESPEED_AUTH_TOKEN: 's3cret' } });
    try {
      const ok = await cli(['generate', '--server', cluster.address, '--auth-token', 's3cret', '--max-tokens', '4', '--json', 'def f(x):']);
      expect(ok.code, ok.stderr).toBe(0);
      expect(JSON.parse(ok.stdout).token_ids).toHaveLength(4);
      const fromEnv = await cli(['generate', '--server', cluster.address, '--max-tokens', '2', 'def f(x):'], { env: { NODESPEED_AUTH_TOKEN: 's3cret' } });
      expect(fromEnv.code, fromEnv.stderr).toBe(0);
      const denied = await cli(['generate', '--server', cluster.address, '--auth-token', 'guess', 'def f(x):']);
      expect(denied.code).toBe(1);
      expect(denied.stderr).toMatch(/UNAUTHENTICATED/);
    } finally {
      await cluster.stop();
    }
    const t0 = Date.now();
    const gone = await cli(['generate', '--server', '127.0.0.1:1', '--timeout', '1', 'hi']);
    expect(gone.stderr).toMatch(/^generate --server 127\.0\.0\.1:1: not reachable within 1 s \(--timeout\)/);
    expect(Date.now() - t0).toBeLessThan(30_000);
  });
});

describe('checkpoints, devices and ports are checked before anything starts', () => {
  const shape = "model.safetensors: tensor model.layers.1.mlp.up_proj.weight: shape [256, 688] does not match config.json, which implies [688, 256]";

  it('model info prints what it can and exits 1 on a checkpoint that cannot load', async () => {
    const r = await cli(['model', 'info', broken]);
    expect(r.code).toBe(1);
    expect(r.stdout).toContain('architecture  LlamaForCausalLM');
    expect(r.stderr).toBe(`${broken} cannot be loaded: ${broken}/${shape}`);
    expect((await cli(['model', 'info', PY_TINY])).code).toBe(0);
  });

  it('launch (and --dry-run) on a broken checkpoint: one precise line, no worker started', async () => {
    for (const extra of [[], ['--dry-run']]) {
      const r = await cli(['launch', '--model', broken, '--num_cpu_workers', '2', '--tp', '2', '--port', '0', ...extra]);
      expect([r.code, r.stderr]).toEqual([1, `${broken}/${shape}`]);
    }
  });

  it('--device cuda without a GPU names the cause (not NCCL)', async () => {
    const r = await cli(['launch', '--model', PY_TINY, '--device', 'cuda', '--num_cpu_workers', '2', '--tp', '2', '--port', '0']);
    // The cause depends on the build: an addon built without CUDA (CI builds so on a machine without
    // the driver), or one built with it on a machine without a driver. Either way one line naming it,
    // never an NCCL error.
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^--device cuda: this machine has no usable GPU \((not built with CUDA|no CUDA device \(.+\))\); use --device cpu$/);
    expect(r.stderr).not.toMatch(/nccl/i);
  });

  it('a worker that dies while starting: its first error line, once, no stack trace', async () => {
    // A "node" that fails the way a broken install does.
    const fake = join(dir, 'fake-node.sh');
    writeFileSync(fake, '#!/bin/sh\necho "Error: Cannot find module \'/opt/nodespeed/dist/worker/main.js\'" >&2\necho "    at Module._resolveFilename (node:internal)" >&2\nexit 1\n');
    spawnSync('chmod', ['+x', fake]);
    const r = await cli(['launch', '--model', PY_TINY, '--num_cpu_workers', '1', '--port', '0', '--no-progress', '--node', fake]);
    expect(r.code).toBe(1);
    const last = r.stderr.split('\n').pop();
    expect(last).toBe("rank 0 on localhost exited with code 1 before the cluster was ready: Error: Cannot find module '/opt/nodespeed/dist/worker/main.js'");
    expect(r.stderr.split('\n').filter((l) => l.includes('Cannot find module'))).toHaveLength(2); // the worker's own line, then the cause
  });

  describe('the default port in use', () => {
    let holder: Server;
    beforeAll(async () => {
      holder = createServer();
      await new Promise<void>((r) => holder.listen(0, '127.0.0.1', () => r()));
    });
    afterAll(() => holder.close());
    it('gives a clear message instead of gRPC\'s "No address added"', async () => {
      const port = (holder.address() as { port: number }).port;
      const r = await cli(['launch', '--model', PY_TINY, '--num_cpu_workers', '1', '--bind', '127.0.0.1', '--port', String(port)]);
      expect([r.code, r.stderr]).toEqual([1, `--port ${port}: 127.0.0.1:${port} is already in use (another nodespeed launch?); pass another --port, or --port 0 for any free port`]);
    });
  });
});

describe('a 10,000-host hostfile', () => {
  let hf: string;
  beforeAll(() => {
    hf = join(dir, 'hf-10k');
    writeFileSync(hf, Array.from({ length: 10_000 }, (_, i) => `host-${i}.invalid slots=8`).join('\n') + '\n');
  });

  it('launch --dry-run plans 80,000 ranks and prints a summary, not 80,000 lines', async () => {
    const r = await cli(['launch', '--model', PY_TINY, '-H', hf, '--dry-run']);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines.length).toBeLessThan(80);
    expect(lines[1]).toBe('world 80000 = 80000 replica(s) x pp 1 x tp 1');
    expect(r.stdout).toContain('... 79936 more replica(s) laid out the same way on the following hosts');
    expect(lines[lines.length - 1]).toMatch(/^ {2}rank 0 @host-0\.invalid .* \(and 79999 more rank\(s\) alike\)$/);
  });

  it('run on unreachable hosts stops at the first failures and summarizes them by cause', async () => {
    // A key to offer, so the failure is the names' (no key would fail first, as 'auth').
    const ssh = mkdtempSync(join(dir, 'ssh-'));
    spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(ssh, 'id_ed25519')]);
    const r = await cli(['run', '-H', hf, '-q', '/bin/true'], { env: { NODESPEED_SSH_DIR: ssh } });
    expect(r.code).toBe(1);
    const lines = r.stderr.split('\n');
    expect(lines.length).toBeLessThan(10);
    expect(lines[0]).toMatch(/^nodespeed run: \d+ host\(s\) could not start their ranks:$/);
    expect(lines[1]).toMatch(/^ {2}dns: \d+ \(host-\d+\.invalid, .*\), e\.g\. ssh \S+@host-\d+\.invalid:22: cannot resolve host name/);
    expect(lines[lines.length - 1]).toMatch(/^\(\d+ other rank\(s\) were not started: the job stopped at the first failure\)$/);
  });
});
