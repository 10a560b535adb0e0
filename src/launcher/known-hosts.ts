// OpenSSH known_hosts verification: plain, `[host]:port`, hashed (|1|salt|hash), wildcard and negated
// patterns; @revoked lines reject a key, @cert-authority lines are ignored (no certificate support).
import { createHash, createHmac } from 'node:crypto';
import { appendFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { dirname } from 'node:path';

export type HostKeyVerdict =
  | { status: 'known'; file: string; line: number }
  | { status: 'unknown' }
  | { status: 'changed'; file: string; line: number }
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

export function verifyHostKey(files: string[], host: string, port: number, blob: Buffer): HostKeyVerdict {
  const name = knownHostsName(host, port);
  const type = keyType(blob);
  let verdict: HostKeyVerdict = { status: 'unknown' };
  for (const file of files) {
    if (!existsSync(file)) continue;
    const lines = readFileSync(file, 'utf8').split('\n');
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i]!.trim();
      if (line === '' || line.startsWith('#')) continue;
      let fields = line.split(/\s+/);
      let marker = '';
      if (fields[0]!.startsWith('@')) [marker, ...fields] = fields as [string, ...string[]];
      const [hosts, ktype, b64] = fields;
      if (!hosts || !ktype || !b64 || marker === '@cert-authority') continue;
      if (!hostMatches(hosts, name)) continue;
      const same = Buffer.from(b64, 'base64').equals(blob);
      if (marker === '@revoked') {
        if (same) return { status: 'revoked', file, line: i + 1 };
        continue;
      }
      if (same) {
        verdict = { status: 'known', file, line: i + 1 };
      } else if (ktype === type && verdict.status === 'unknown') {
        verdict = { status: 'changed', file, line: i + 1 };
      }
    }
  }
  return verdict;
}

/** Records a new key like StrictHostKeyChecking=accept-new does. */
export function recordHostKey(file: string, host: string, port: number, blob: Buffer): void {
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  const text = existsSync(file) ? readFileSync(file, 'utf8') : '';
  const sep = text === '' || text.endsWith('\n') ? '' : '\n';
  appendFileSync(file, `${sep}${knownHostsName(host, port)} ${keyType(blob)} ${blob.toString('base64')}\n`, { mode: 0o600 });
}
