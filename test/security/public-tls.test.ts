// The public API over TLS as a user runs it: `nodespeed launch --tls-cert --tls-key --tls-client-ca
// --auth-token-file --metrics-port 0`, reached by the typed client, by `nodespeed status` and
// `nodespeed generate --server` with their TLS flags, and by an HTTPS client for /metrics and the
// OpenAI-compatible HTTP API. One launch serves every check; the certificates come from a CA made
// for the test.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { NodespeedClient } from '../../src/client/index.js';
import { JobPki } from '../../src/launcher/pki.js';
import type { TlsIdentity } from '../../src/protocol/job-secrets.js';
import { BIN, PY_TINY, grpcError, launch, workerProcesses } from '../serving/helpers.js';
import type { LaunchedCluster } from '../serving/helpers.js';

const TOKEN = 'tls-s3cret';
let dir: string;
let server: TlsIdentity;
let client: TlsIdentity;
let stranger: TlsIdentity;
let cluster: LaunchedCluster;
let metrics: string;
let http: string;
const file = (name: string, text: string) => {
  writeFileSync(join(dir, name), text, { mode: 0o600 });
  return join(dir, name);
};

function tlsClient(id: Partial<TlsIdentity> & { ca: string }, authToken?: string): NodespeedClient {
  const credentials = grpc.credentials.createSsl(Buffer.from(id.ca), id.key ? Buffer.from(id.key) : null, id.cert ? Buffer.from(id.cert) : null);
  return new NodespeedClient(cluster.address, { credentials, ...(authToken ? { authToken } : {}) });
}

async function complete(c: NodespeedClient): Promise<number[] | string> {
  try {
    return (await c.complete({ prompt: 'import os\n\n', maxTokens: 5, ignoreEos: true }, { timeoutMs: 10_000 })).tokenIds;
  } catch (err) {
    return `${grpc.status[(err as { code: grpc.status }).code]}`;
  } finally {
    c.close();
  }
}

/** An HTTPS request to `address`: the status code, or the TLS error's code. */
function https(address: string, path: string, id: Partial<TlsIdentity> & { ca: string }, token?: string, body?: unknown): Promise<{ status: number | string; body: string }> {
  const [host, port] = [address.slice(0, address.lastIndexOf(':')), Number(address.slice(address.lastIndexOf(':') + 1))];
  return new Promise((resolve) => {
    const req = request({
      host, port, servername: '', path, method: body === undefined ? 'GET' : 'POST', ca: id.ca, ...(id.cert ? { cert: id.cert, key: id.key } : {}),
      headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode!, body }));
    });
    req.on('error', (err: NodeJS.ErrnoException) => resolve({ status: err.code ?? err.message, body: '' }));
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

const getMetrics = (id: Partial<TlsIdentity> & { ca: string }, token?: string) => https(metrics, '/metrics', id, token);

/** `nodespeed ARGS` with NODESPEED_AUTH_TOKEN unset, so only the flags carry the token. */
function cli(args: string[]) {
  const env = { ...process.env };
  delete env.NODESPEED_AUTH_TOKEN;
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', env, timeout: 60_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr.trim() };
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'nodespeed-public-tls-'));
  const ca = await JobPki.create();
  server = await ca.issue('localhost', 'server', [{ type: 'ip', value: '127.0.0.1' }, { type: 'dns', value: 'localhost' }]);
  client = await ca.issue('api-user', 'client', [{ type: 'dns', value: 'api-user' }]);
  stranger = await (await JobPki.create()).issue('api-user', 'client', [{ type: 'dns', value: 'api-user' }]);
  cluster = await launch(PY_TINY, ['--num_cpu_workers', '1', '--kv-blocks', '16', '--metrics-port', '0',
    '--tls-cert', file('server.pem', server.cert), '--tls-key', file('server.key', server.key), '--tls-client-ca', file('ca.pem', server.ca),
    '--auth-token-file', file('token', `${TOKEN}\n`)]);
  metrics = /metrics=(\S+)/.exec(cluster.readyLine)![1]!;
  http = / http=(\S+)/.exec(cluster.readyLine)![1]!;
}, 90_000);

afterAll(async () => {
  expect(await cluster?.stop()).toBe(0);
  expect(workerProcesses()).toEqual([]);
  rmSync(dir, { recursive: true, force: true });
});

describe('the public API over mutual TLS with a bearer token', () => {
  it('gRPC: plaintext, an unknown server CA and a missing or foreign client certificate get nothing; the token is still required over TLS', async () => {
    expect(cluster.readyLine).toMatch(/ tls=on auth=token$/);
    expect(await complete(cluster.client)).toBe('UNAVAILABLE');
    expect(await complete(tlsClient({ ca: stranger.ca, cert: client.cert, key: client.key }, TOKEN))).toBe('UNAVAILABLE');
    expect(await complete(tlsClient({ ca: server.ca }, TOKEN))).toBe('UNAVAILABLE');
    expect(await complete(tlsClient({ ca: server.ca, cert: stranger.cert, key: stranger.key }, TOKEN))).toBe('UNAVAILABLE');
    expect(await complete(tlsClient(client))).toBe('UNAUTHENTICATED');
    const anon = tlsClient(client);
    expect((await grpcError(anon.clusterStatus())).code).toBe(grpc.status.UNAUTHENTICATED);
    anon.close();
    expect(await complete(tlsClient(client, TOKEN))).toEqual([200, 333, 361, 414, 64]);
  });

  it('/metrics: HTTPS only, the client certificate and the token both required', async () => {
    expect((await getMetrics({ ca: server.ca }, TOKEN)).status).not.toBe(200);
    expect((await getMetrics(client)).status).toBe(401);
    const ok = await getMetrics(client, TOKEN);
    expect(ok.status).toBe(200);
    expect(ok.body).toMatch(/^nodespeed_/m);
  });

  it('the HTTP API: HTTPS only, the client certificate and the token both required on /v1 (not on /health)', async () => {
    const completion = { model: 'py-tiny', prompt: 'import os\n\n', max_tokens: 5, temperature: 0, ignore_eos: true };
    const plain = await new Promise<number | string>((resolve) => {
      const req = httpRequest(`http://${http}/health`, (res) => resolve(res.statusCode!));
      req.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
      req.end();
    });
    expect(plain).not.toBe(200);
    expect((await https(http, '/v1/completions', { ca: server.ca }, TOKEN, completion)).status).not.toBe(200);
    expect((await https(http, '/v1/completions', { ca: server.ca, cert: stranger.cert, key: stranger.key }, TOKEN, completion)).status).not.toBe(200);
    expect((await https(http, '/v1/completions', client, undefined, completion)).status).toBe(401);
    expect((await https(http, '/metrics', client)).status).toBe(401);
    expect((await https(http, '/health', client)).status).toBe(200);
    const ok = await https(http, '/v1/completions', client, TOKEN, completion);
    expect(ok.status, ok.body).toBe(200);
    expect(JSON.parse(ok.body).usage).toMatchObject({ completion_tokens: 5 });
  });

  it('nodespeed status and generate --server connect with --tls-ca/--tls-cert/--tls-key and --auth-token-file', () => {
    const tls = ['--tls-ca', join(dir, 'ca.pem'), '--tls-cert', file('client.pem', client.cert), '--tls-key', file('client.key', client.key)];
    const status = cli(['status', '--server', cluster.address, ...tls, '--auth-token-file', join(dir, 'token'), '--json']);
    expect(status.code, status.stderr).toBe(0);
    expect(JSON.parse(status.stdout).workers).toHaveLength(1);
    const gen = cli(['generate', '--server', cluster.address, ...tls, '--auth-token-file', join(dir, 'token'), '--max-tokens', '4', '--json', 'def f(x):']);
    expect(gen.code, gen.stderr).toBe(0);
    expect(JSON.parse(gen.stdout).token_ids).toHaveLength(4);
    const noToken = cli(['status', '--server', cluster.address, ...tls]);
    expect([noToken.code, noToken.stderr]).toEqual([1, expect.stringMatching(/UNAUTHENTICATED/)]);
    const halfCert = cli(['status', '--server', cluster.address, '--tls-cert', join(dir, 'client.pem')]);
    expect([halfCert.code, halfCert.stderr]).toEqual([1, expect.stringContaining('--tls-key is missing: a client certificate needs both --tls-cert and --tls-key')]);
  });
});
