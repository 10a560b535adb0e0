// OpenSSH known_hosts verification: plain, `[host]:port`, hashed (|1|salt|hash), wildcard and negated
// patterns; @revoked lines reject a key, @cert-authority lines are ignored (no certificate support).
import { createHash, createHmac } from 'node:crypto';
import { appendFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { dirname } from 'node:path';

export type HostKeyVerdict =
  | { status: 'known'; file: string; line: number }
  | { status: 'unknown' }
  | { status: 'changed'; file: string; line: number }
  /** The host is known, but only with keys of other types (OpenSSH refuses such a key even with accept-new). */
  | { status: 'other-type'; file: string; line: number; types: string[] }
  | { status: 'revoked'; file: string; line: number };

/** `host` for port 22, `[host]:port` otherwise — the name OpenSSH records. */
export function knownHostsName(host: string, port: number): string {
  return port === 22 ? host : `[${host}]:${port}`;
}

export function keyType(blob: Buffer): string {
  const len = blob.readUInt32BE(0);
  return blob.subarray(4, 4 + len).toString('latin1');
}

export function fingerprint(blob: Buffer): string {
  return 'SHA256:' + createHash('sha256').update(blob).digest('base64').replace(/=+$/, '');
}

function globMatch(pattern: string, name: string): boolean {
  const re = new RegExp('^' + pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.') + '$', 'i');
  return re.test(name);
}

function hostMatches(field: string, name: string): boolean {
  if (field.startsWith('|1|')) {
    const [, , salt, hash] = field.split('|');
    if (!salt || !hash) return false;
    return createHmac('sha1', Buffer.from(salt, 'base64')).update(name).digest('base64') === hash;
  }
  let matched = false;
  for (const pattern of field.split(',')) {
    if (pattern.startsWith('!')) {
      if (globMatch(pattern.slice(1), name)) return false;
    } else if (globMatch(pattern, name)) matched = true;
  }
  return matched;
}

interface KnownEntry {
  file: string;
  line: number;
  marker: string;
  type: string;
  key: Buffer;
}

/** Every known_hosts line that names the host (`[host]:port` when port != 22), @cert-authority lines left out. */
function entriesFor(files: string[], host: string, port: number): KnownEntry[] {
  const name = knownHostsName(host, port);
  const out: KnownEntry[] = [];
  for (const file of files) {
    if (!existsSync(file)) continue;
    const lines = readFileSync(file, 'utf8').split('\n');
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i]!.trim();
      if (line === '' || line.startsWith('#')) continue;
      let fields = line.split(/\s+/);
      let marker = '';
      if (fields[0]!.startsWith('@')) [marker, ...fields] = fields as [string, ...string[]];
      const [hosts, type, b64] = fields;
      if (!hosts || !type || !b64 || marker === '@cert-authority') continue;
      if (hostMatches(hosts, name)) out.push({ file, line: i + 1, marker, type, key: Buffer.from(b64, 'base64') });
    }
  }
  return out;
}

/**
 * Like OpenSSH: a revoked key is refused; the same key is known; another key of the same type is a
 * change; a host known only with keys of other types is refused too (OpenSSH's "host key for X has
 * changed ... a different type"), so accept-new never adds a second, unverified key for a known host.
 */
export function verifyHostKey(files: string[], host: string, port: number, blob: Buffer): HostKeyVerdict {
  const type = keyType(blob);
  const entries = entriesFor(files, host, port);
  const revoked = entries.find((e) => e.marker === '@revoked' && e.key.equals(blob));
  if (revoked) return { status: 'revoked', file: revoked.file, line: revoked.line };
  const keys = entries.filter((e) => e.marker === '');
  const same = keys.find((e) => e.key.equals(blob));
  if (same) return { status: 'known', file: same.file, line: same.line };
  const sameType = keys.find((e) => e.type === type);
  if (sameType) return { status: 'changed', file: sameType.file, line: sameType.line };
  if (keys.length) return { status: 'other-type', file: keys[0]!.file, line: keys[0]!.line, types: [...new Set(keys.map((e) => e.type))] };
  return { status: 'unknown' };
}

/** Host key algorithms per known_hosts key type (an RSA key is offered under three signature algorithms). */
const ALGORITHMS: Record<string, string[]> = {
  'ssh-ed25519': ['ssh-ed25519'],
  'ecdsa-sha2-nistp256': ['ecdsa-sha2-nistp256'],
  'ecdsa-sha2-nistp384': ['ecdsa-sha2-nistp384'],
  'ecdsa-sha2-nistp521': ['ecdsa-sha2-nistp521'],
  'ssh-rsa': ['rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa'],
};

/**
 * The host key algorithms to ask for first: those of the key types known_hosts already holds for the
 * host (OpenSSH's order_hostkeyalgs), so a server with several host keys presents the one we can
 * verify instead of one we would have to refuse as of another type.
 */
export function knownHostKeyAlgorithms(files: string[], host: string, port: number): string[] {
  const types = new Set(entriesFor(files, host, port).filter((e) => e.marker === '').map((e) => e.type));
  return [...types].flatMap((t) => ALGORITHMS[t] ?? []);
}

/** Records a new key like StrictHostKeyChecking=accept-new does. */
export function recordHostKey(file: string, host: string, port: number, blob: Buffer): void {
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  const text = existsSync(file) ? readFileSync(file, 'utf8') : '';
  const sep = text === '' || text.endsWith('\n') ? '' : '\n';
  appendFileSync(file, `${sep}${knownHostsName(host, port)} ${keyType(blob)} ${blob.toString('base64')}\n`, { mode: 0o600 });
}
