// The public API's protection, shared by every server that faces clients (gRPC, /metrics, HTTP):
// optional TLS (a certificate and key, and optionally a client CA for mutual TLS) and an optional
// bearer token, compared in constant time. The token comes from a file or the launcher's
// environment, never a command line (ps shows those), and is never passed to workers.
import { timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';

import * as grpc from '@grpc/grpc-js';

import { settings } from '../settings/index.js';

/** PEM contents. */
export interface PublicTls {
  cert: string;
  key: string;
  /** With it, clients must present a certificate this CA issued (mutual TLS). */
  clientCa?: string;
}

/** A file a flag names, its read error naming the flag and the file. */
export function readFlagFile(flag: string, file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw new Error(`${flag} ${file}: cannot read it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
}

/** --tls-cert, --tls-key and --tls-client-ca read and checked to be PEM, each error naming its flag and file. */
export function readPublicTls(certFile: string | undefined, keyFile: string | undefined, clientCaFile: string | undefined): PublicTls | undefined {
  if (!certFile && !keyFile) {
    if (clientCaFile) throw new Error('--tls-client-ca needs --tls-cert and --tls-key (client certificates are checked over TLS)');
    return undefined;
  }
  if (!certFile || !keyFile) throw new Error(`${certFile ? '--tls-key' : '--tls-cert'} is missing: TLS needs both --tls-cert and --tls-key`);
  const pem = (flag: string, file: string, what: RegExp) => {
    const text = readFlagFile(flag, file);
    if (!what.test(text)) throw new Error(`${flag} ${file}: not a PEM ${flag === '--tls-key' ? 'private key' : 'certificate'}`);
    return text;
  };
  const cert = pem('--tls-cert', certFile, /-----BEGIN CERTIFICATE-----/);
  const key = pem('--tls-key', keyFile, /-----BEGIN (RSA |EC |ENCRYPTED )?PRIVATE KEY-----/);
  return { cert, key, ...(clientCaFile ? { clientCa: pem('--tls-client-ca', clientCaFile, /-----BEGIN CERTIFICATE-----/) } : {}) };
}

/** The bearer token: --auth-token-file's first line, else NODESPEED_AUTH_TOKEN; undefined when neither is given. */
export function readAuthToken(file: string | undefined): string | undefined {
  if (file) {
    const token = readFlagFile('--auth-token-file', file).split(/\r?\n/)[0]!.trim();
    if (!token) throw new Error(`--auth-token-file ${file}: the first line is empty`);
    return token;
  }
  const v = settings().authToken?.trim();
  return v ? v : undefined;
}

export function grpcServerCredentials(tls: PublicTls | undefined): grpc.ServerCredentials {
  if (!tls) return grpc.ServerCredentials.createInsecure();
  return grpc.ServerCredentials.createSsl(tls.clientCa ? Buffer.from(tls.clientCa) : null,
    [{ private_key: Buffer.from(tls.key), cert_chain: Buffer.from(tls.cert) }], !!tls.clientCa);
}

/** Options for https.createServer with the same certificate and client CA. */
export function httpsOptions(tls: PublicTls): { cert: string; key: string; ca?: string; requestCert: boolean; rejectUnauthorized: boolean } {
  return { cert: tls.cert, key: tls.key, ...(tls.clientCa ? { ca: tls.clientCa } : {}), requestCert: !!tls.clientCa, rejectUnauthorized: !!tls.clientCa };
}

/** Whether an Authorization header value is `Bearer <token>` (constant time). */
export function bearerMatches(header: string | undefined, token: string): boolean {
  const want = Buffer.from(`Bearer ${token}`);
  const got = Buffer.from(header ?? '');
  return got.length === want.length && timingSafeEqual(got, want);
}

/** Whether an address to bind reaches only this machine (127.0.0.0/8, ::1, localhost). */
export function isLoopbackBind(bind: string): boolean {
  if (bind === 'localhost') return true;
  if (isIP(bind) === 4) return bind.startsWith('127.');
  return bind === '::1';
}
