import { createHmac, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { fingerprint, keyType, knownHostKeyAlgorithms, recordHostKey, verifyHostKey } from '../../src/launcher/known-hosts.js';

function blob(type: string, body: Buffer): Buffer {
  const t = Buffer.from(type);
  const len = Buffer.alloc(4);
  len.writeUInt32BE(t.length);
  return Buffer.concat([len, t, body]);
}
const keyA = blob('ssh-ed25519', randomBytes(36));
const keyB = blob('ssh-ed25519', randomBytes(36));
const rsa = blob('ssh-rsa', randomBytes(64));
const line = (hosts: string, k: Buffer): string => `${hosts} ${keyType(k)} ${k.toString('base64')}`;

describe('known_hosts', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kh-'));
  const file = join(dir, 'known_hosts');

  it('matches plain names, [host]:port, patterns and hashed entries', () => {
    const salt = randomBytes(20);
    const hashed = `|1|${salt.toString('base64')}|${createHmac('sha1', salt).update('[hashed.example]:2222').digest('base64')}`;
    writeFileSync(file, ['# comment', line('plain.example,10.0.0.9', keyA), line('[ported.example]:2222', keyA), line('*.wild.example,!bad.wild.example', keyA), line(hashed, keyA), ''].join('\n'));
    expect(verifyHostKey([file], 'plain.example', 22, keyA)).toMatchObject({ status: 'known', line: 2 });
    expect(verifyHostKey([file], '10.0.0.9', 22, keyA).status).toBe('known');
    expect(verifyHostKey([file], 'ported.example', 2222, keyA).status).toBe('known');
    expect(verifyHostKey([file], 'ported.example', 22, keyA).status).toBe('unknown');
    expect(verifyHostKey([file], 'x.wild.example', 22, keyA).status).toBe('known');
    expect(verifyHostKey([file], 'bad.wild.example', 22, keyA).status).toBe('unknown');
    expect(verifyHostKey([file], 'hashed.example', 2222, keyA).status).toBe('known');
    expect(verifyHostKey([file], 'other.example', 22, keyA).status).toBe('unknown');
  });

  it('a different key of the same type is a change; a key of another type for a listed host is refused too; @revoked refuses', () => {
    writeFileSync(file, [line('h', keyA), '@revoked ' + line('r', keyB), line('r', keyB), line('both', rsa), line('both', keyA)].join('\n') + '\n');
    expect(verifyHostKey([file], 'h', 22, keyB)).toMatchObject({ status: 'changed', line: 1 });
    // OpenSSH refuses a key of another type for a host it knows (even with accept-new): so do we.
    expect(verifyHostKey([file], 'h', 22, rsa)).toEqual({ status: 'other-type', file, line: 1, types: ['ssh-ed25519'] });
    expect(verifyHostKey([file], 'r', 22, keyB)).toMatchObject({ status: 'revoked', line: 2 });
    // A host listed with keys of two types accepts either of them.
    expect(verifyHostKey([file], 'both', 22, rsa)).toMatchObject({ status: 'known', line: 4 });
    expect(verifyHostKey([file], 'both', 22, keyA)).toMatchObject({ status: 'known', line: 5 });
    expect(verifyHostKey([file], 'nobody', 22, rsa).status).toBe('unknown');
  });

  it('asks the server first for the key types known_hosts holds for it (OpenSSH\'s host key algorithm order)', () => {
    writeFileSync(file, [line('h', keyA), line('[r]:2222', rsa), '@revoked ' + line('x', rsa)].join('\n') + '\n');
    expect(knownHostKeyAlgorithms([file], 'h', 22)).toEqual(['ssh-ed25519']);
    expect(knownHostKeyAlgorithms([file], 'r', 2222)).toEqual(['rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa']);
    expect(knownHostKeyAlgorithms([file], 'x', 22)).toEqual([]);
    expect(knownHostKeyAlgorithms([file], 'unlisted', 22)).toEqual([]);
  });

  it('records keys the way OpenSSH does', () => {
    const f2 = join(dir, 'sub', 'known_hosts');
    recordHostKey(f2, '127.0.0.2', 2222, keyA);
    recordHostKey(f2, 'h22', 22, keyB);
    expect(readFileSync(f2, 'utf8')).toBe(`${line('[127.0.0.2]:2222', keyA)}\n${line('h22', keyB)}\n`);
    expect(verifyHostKey([f2], '127.0.0.2', 2222, keyA).status).toBe('known');
    expect(fingerprint(keyA)).toMatch(/^SHA256:[A-Za-z0-9+/]{43}$/);
  });
});
