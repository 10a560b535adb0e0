// The flags of the commands that talk to a running `nodespeed launch` (`status`, `generate --server`):
// the API's bearer token and TLS, turned into the client's options in one place.
import * as grpc from '@grpc/grpc-js';
import type { Command } from 'commander';

import type { ClientOptions } from '../client/index.js';
import { readAuthToken, readFlagFile } from '../coordinator/public-auth.js';

export interface ServerFlags {
  authToken?: string;
  authTokenFile?: string;
  tls?: boolean;
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
}

/** Option keys of addServerFlags, for commands that refuse them without --server. */
export const SERVER_FLAG_KEYS = ['authToken', 'authTokenFile', 'tls', 'tlsCa', 'tlsCert', 'tlsKey'] as const;

export function addServerFlags(cmd: Command, scope = ''): Command {
  return cmd
    .option('--auth-token <token>', `${scope}bearer token (ps shows it: prefer --auth-token-file or NODESPEED_AUTH_TOKEN)`)
    .option('--auth-token-file <file>', `${scope}bearer token from this file's first line`)
    .option('--tls', `${scope}connect over TLS, checking the server's certificate against the system's CAs`)
    .option('--tls-ca <file>', `${scope}connect over TLS, checking the server's certificate against this CA (PEM)`)
    .option('--tls-cert <file>', `${scope}client certificate for a server that requires one (PEM, with --tls-key; implies TLS)`)
    .option('--tls-key <file>', `${scope}the private key of --tls-cert (PEM)`);
}

/** The token (--auth-token, else --auth-token-file, else NODESPEED_AUTH_TOKEN) and the channel's credentials. */
export function clientOptions(f: ServerFlags): ClientOptions {
  if (f.authToken !== undefined && f.authTokenFile !== undefined) throw new Error('--auth-token and --auth-token-file: give one of them');
  const authToken = f.authToken ?? readAuthToken(f.authTokenFile);
  if (!!f.tlsCert !== !!f.tlsKey) throw new Error(`${f.tlsCert ? '--tls-key' : '--tls-cert'} is missing: a client certificate needs both --tls-cert and --tls-key`);
  const token = authToken ? { authToken } : {};
  if (!f.tls && !f.tlsCa && !f.tlsCert) return token;
  const pem = (flag: string, file: string | undefined) => (file === undefined ? null : Buffer.from(readFlagFile(flag, file)));
  return { ...token, credentials: grpc.credentials.createSsl(pem('--tls-ca', f.tlsCa), pem('--tls-key', f.tlsKey), pem('--tls-cert', f.tlsCert)) };
}
