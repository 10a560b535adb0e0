// SSH connections with OpenSSH's conventions: ~/.ssh/config (HostName, Port, User, IdentityFile),
// default identities (id_ed25519, id_ecdsa, id_rsa) plus the agent, host keys checked against known_hosts.
// NODESPEED_SSH_DIR (or --ssh_dir) replaces ~/.ssh as a whole, so tests never touch the real one.
import { lookup } from 'node:dns/promises';
import { existsSync, readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { homedir, userInfo } from 'node:os';
import { join } from 'node:path';
import SSHConfig from 'ssh-config';
import ssh2 from 'ssh2';
import type { AuthMethod, Client as SshClient, ServerHostKeyAlgorithm } from 'ssh2';
import { fingerprint, keyType, knownHostKeyAlgorithms, knownHostsName, recordHostKey, verifyHostKey } from './known-hosts.js';
import type { HostKeyVerdict } from './known-hosts.js';
import { settings } from '../settings/index.js';

const { Client, utils } = ssh2;

export interface SshOptions {
  /** Replaces ~/.ssh (config, known_hosts, id_*). Default: $NODESPEED_SSH_DIR or ~/.ssh. */
  sshDir?: string;
  configFile?: string;
  /** Explicit identity files; tried before IdentityFile entries and the default ones. */
  identityFiles?: string[];
  knownHostsFile?: string;
  /**
   * StrictHostKeyChecking=accept-new: record the key of a host known_hosts does not list at all. A
   * changed key, or a key of another type for a host that is listed, is refused all the same.
   */
  acceptNew?: boolean;
  /** Handshake deadline, ms (default 10 000). */
  connectTimeoutMs?: number;
  user?: string;
  /** Use $SSH_AUTH_SOCK when set (default true). */
  useAgent?: boolean;
}

export interface SshTarget {
  /** The name as written in the hostfile (used in messages). */
  host: string;
  hostName: string;
  port: number;
  user: string;
  identityFiles: string[];
  knownHostsFiles: string[];
}

export type SshErrorKind = 'dns' | 'refused' | 'timeout' | 'unreachable' | 'auth' | 'hostkey-unknown' | 'hostkey-changed' | 'other';

export class SshError extends Error {
  override name = 'SshError';
  constructor(readonly kind: SshErrorKind, readonly host: string, message: string) {
    super(message);
  }
}

export function sshDir(opts: SshOptions): string {
  return opts.sshDir ?? settings().sshDir ?? join(homedir(), '.ssh');
}

function expandHome(p: string): string {
  return p === '~' || p.startsWith('~/') ? join(homedir(), p.slice(1)) : p.replace(/%d/g, homedir());
}

function first(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}

export function resolveTarget(host: string, portOverride: number | undefined, opts: SshOptions = {}): SshTarget {
  const dir = sshDir(opts);
  const configFile = opts.configFile ?? join(dir, 'config');
  let cfg: Record<string, string | string[]> = {};
  if (existsSync(configFile)) {
    try {
      cfg = SSHConfig.parse(readFileSync(configFile, 'utf8')).compute(host);
    } catch (err) {
      throw new SshError('other', host, `${configFile}: cannot parse SSH config: ${(err as Error).message}`);
    }
  }
  const hostName = first(cfg.HostName)?.replace(/%h/g, host) ?? host;
  const configPort = first(cfg.Port);
  const port = portOverride ?? (configPort ? Number(configPort) : 22);
  if (!Number.isInteger(port) || port <= 0 || port > 65535) throw new SshError('other', host, `invalid SSH port '${configPort}' for ${host}`);
  const fromConfig = ([] as string[]).concat(cfg.IdentityFile ?? []).map(expandHome);
  const defaults = ['id_ed25519', 'id_ecdsa', 'id_rsa'].map((n) => join(dir, n));
  const identityFiles = [...new Set([...(opts.identityFiles ?? []), ...fromConfig, ...defaults])].filter((f) => existsSync(f));
  const userKnown = opts.knownHostsFile ?? join(dir, 'known_hosts');
  const usingDefaults = !opts.sshDir && !settings().sshDir && !opts.knownHostsFile;
  const knownHostsFiles = usingDefaults ? [userKnown, '/etc/ssh/ssh_known_hosts'] : [userKnown];
  return { host, hostName, port, user: opts.user ?? first(cfg.User) ?? userInfo().username, identityFiles, knownHostsFiles };
}

function authMethods(t: SshTarget, opts: SshOptions): { methods: AuthMethod[]; tried: string[] } {
  const methods: AuthMethod[] = [];
  const tried: string[] = [];
  const agent = process.env.SSH_AUTH_SOCK;
  if (agent && opts.useAgent !== false) {
    methods.push({ type: 'agent', username: t.user, agent } as AuthMethod);
    tried.push('ssh-agent');
  }
  for (const file of t.identityFiles) {
    let key: Buffer;
    try {
      key = readFileSync(file);
    } catch {
      continue; // gone since the target was resolved (or unreadable): OpenSSH skips it too.
    }
    const parsed = utils.parseKey(key);
    if (parsed instanceof Error) continue; // encrypted or unsupported: OpenSSH would prompt; we cannot.
    methods.push({ type: 'publickey', username: t.user, key } as AuthMethod);
    tried.push(file);
  }
  return { methods, tried };
}

/** `user@host (hostName):port`, how SSH messages name their target. */
function where(t: SshTarget): string {
  return `${t.user}@${t.host}${t.hostName !== t.host ? ` (${t.hostName})` : ''}:${t.port}`;
}

function classify(err: NodeJS.ErrnoException & { level?: string }, t: SshTarget, tried: string[], timeoutMs: number): SshError {
  const target = where(t);
  switch (err.code) {
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return new SshError('dns', t.host, `ssh ${target}: cannot resolve host name '${t.hostName}' (DNS ${err.code})`);
    case 'ECONNREFUSED':
      return new SshError('refused', t.host, `ssh ${target}: connection refused (no SSH server on port ${t.port}?)`);
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return new SshError('unreachable', t.host, `ssh ${target}: host unreachable (${err.code})`);
    case 'ECONNRESET':
      return new SshError('refused', t.host, `ssh ${target}: connection reset during the handshake (sshd MaxStartups or a firewall?)`);
    case 'ETIMEDOUT':
      return new SshError('timeout', t.host, `ssh ${target}: connection timed out after ${timeoutMs} ms`);
  }
  if (err.level === 'client-authentication') {
    return new SshError('auth', t.host, `ssh ${target}: authentication failed (tried: ${tried.join(', ') || 'nothing'})`);
  }
  if (err.level === 'client-timeout') return new SshError('timeout', t.host, `ssh ${target}: connection timed out after ${timeoutMs} ms`);
  return new SshError('other', t.host, `ssh ${target}: ${err.message}`);
}

/**
 * Resolves the name first, on its own deadline: a name that does not resolve is a DNS failure, also
 * when the resolver is slow (getaddrinfo runs on libuv's 4 threads, so thousands of slow lookups used
 * to run past the connect deadline and read as "timeout").
 */
async function resolveHost(t: SshTarget, timeoutMs: number): Promise<string> {
  if (isIP(t.hostName)) return t.hostName;
  const fail = (why: string): SshError => new SshError('dns', t.host, `ssh ${where(t)}: cannot resolve host name '${t.hostName}' (${why})`);
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(fail(`no DNS answer within ${timeoutMs} ms`)), timeoutMs);
    timer.unref();
  });
  try {
    return (await Promise.race([lookup(t.hostName), deadline])).address;
  } catch (err) {
    if (err instanceof SshError) throw err;
    throw fail(`DNS ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Why a host key is refused. Only a host that known_hosts does not list at all may be fixed with
 * --ssh-accept-new; a changed key, or a key of another type for a listed host, is what a
 * man-in-the-middle looks like, and the way out is to verify the new key and edit known_hosts.
 */
function hostKeyRefusal(t: SshTarget, key: Buffer, v: Exclude<HostKeyVerdict, { status: 'known' }>): SshError {
  const name = knownHostsName(t.hostName, t.port);
  const desc = `${keyType(key)} ${fingerprint(key)}`;
  const fail = `ssh ${t.host}: host key verification failed:`;
  switch (v.status) {
    case 'unknown':
      return new SshError('hostkey-unknown', t.host, `${fail} unknown host key for ${name} (${desc}) — not in ${t.knownHostsFiles.join(' or ')}; ` +
        `check the fingerprint and add it (ssh-keyscan -p ${t.port} ${t.hostName} >> ${t.knownHostsFiles[0]}) or pass --ssh-accept-new`);
    case 'revoked':
      return new SshError('hostkey-changed', t.host, `${fail} the host key for ${name} is REVOKED (server offers ${desc}; ${v.file}:${v.line}) — refusing to connect`);
    case 'changed':
    case 'other-type': {
      const what = v.status === 'changed' ? `has CHANGED (server offers ${desc}; ${v.file}:${v.line} differs)`
        : `has CHANGED to another type (server offers ${desc}; ${v.file}:${v.line} lists only ${v.types.join(', ')} for it)`;
      return new SshError('hostkey-changed', t.host, `${fail} the host key for ${name} ${what} — possible man-in-the-middle attack; ` +
        `if the change is expected, verify the new key out of band, then remove the old entry (ssh-keygen -R '${name}' -f ${v.file}) and add the new one`);
    }
  }
}

/** Opens an authenticated connection, refusing unknown or changed host keys unless acceptNew. */
export async function connect(t: SshTarget, opts: SshOptions = {}): Promise<SshClient> {
  const timeoutMs = opts.connectTimeoutMs ?? 10_000;
  const { methods, tried } = authMethods(t, opts);
  const dir = sshDir(opts);
  if (methods.length === 0) {
    throw new SshError('auth', t.host, `ssh ${t.host}: no usable identity (id_ed25519, id_ecdsa, id_rsa in ${dir}, IdentityFile, --ssh_identity) and no SSH agent`);
  }
  const address = await resolveHost(t, timeoutMs);
  const preferred = knownHostKeyAlgorithms(t.knownHostsFiles, t.hostName, t.port) as ServerHostKeyAlgorithm[];
  return new Promise((resolve, reject) => {
    const client = new Client();
    let hostKeyError: SshError | undefined;
    let settled = false;
    const finish = (err: SshError | null): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (err) {
        client.removeAllListeners('ready');
        client.on('error', () => {});
        client.destroy();
        reject(err);
      } else resolve(client);
    };
    // ssh2's readyTimeout does not always cover a blackholed TCP connect; keep our own deadline too.
    const timer = setTimeout(() => finish(classify(Object.assign(new Error('timeout'), { code: 'ETIMEDOUT' }), t, tried, timeoutMs)), timeoutMs);
    client.on('ready', () => finish(null));
    client.on('error', (err) => finish(hostKeyError ?? classify(err, t, tried, timeoutMs)));
    client.on('close', () => finish(hostKeyError ?? new SshError('other', t.host, `ssh ${t.host}: connection closed during handshake`)));
    client.connect({
      host: address,
      port: t.port,
      username: t.user,
      readyTimeout: timeoutMs,
      keepaliveInterval: 5000,
      keepaliveCountMax: 3,
      authHandler: methods,
      // Ask first for the key types known_hosts holds for this host, as OpenSSH does.
      ...(preferred.length ? { algorithms: { serverHostKey: { remove: preferred, prepend: preferred, append: [] } } } : {}),
      hostVerifier: (key: Buffer): boolean => {
        const verdict = verifyHostKey(t.knownHostsFiles, t.hostName, t.port, key);
        if (verdict.status === 'known') return true;
        if (verdict.status === 'unknown' && opts.acceptNew) {
          recordHostKey(t.knownHostsFiles[0]!, t.hostName, t.port, key);
          return true;
        }
        hostKeyError = hostKeyRefusal(t, key, verdict);
        return false;
      },
    });
  });
}

/** Runs a short command on a connection and collects its output (for probes and kills). */
export function execCollect(client: SshClient, command: string, input?: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    client.exec(command, (err, ch) => {
      if (err) return reject(err);
      let stdout = '';
      let stderr = '';
      let code = 255;
      ch.on('data', (d: Buffer) => (stdout += d.toString()));
      ch.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      ch.on('exit', (c: number | null) => (code = c ?? 255));
      ch.on('close', () => resolve({ code, stdout, stderr }));
      ch.end(input);
    });
  });
}
