// The per-job PKI: certificates that real TLS (node:tls, OpenSSL) accepts for mutual
// authentication inside one job, and refuses across jobs or without a certificate.
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import * as tls from 'node:tls';
import { X509Certificate } from 'node:crypto';

import { describe, expect, it } from 'vitest';

import { JobPki } from '../../src/launcher/pki.js';
import { CONTROL_SERVER_NAME, decodeJobSecrets, encodeJobSecrets, slotOfCommonName, takeJobSecrets } from '../../src/protocol/job-secrets.js';
import type { TlsIdentity } from '../../src/protocol/job-secrets.js';

async function server(id: TlsIdentity): Promise<{ port: number; peers: string[]; close: () => void }> {
  const peers: string[] = [];
  const s = tls.createServer({ ca: id.ca, cert: id.cert, key: id.key, requestCert: true, rejectUnauthorized: true }, (sock) => {
    peers.push(String(sock.getPeerCertificate().subject?.CN));
    sock.end('hello');
  });
  s.on('tlsClientError', () => {});
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  return { port: (s.address() as AddressInfo).port, peers, close: () => s.close() };
}

function dial(port: number, id: Partial<TlsIdentity> & { ca: string }): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = tls.connect({ host: '127.0.0.1', port, servername: CONTROL_SERVER_NAME, ca: id.ca, ...(id.cert ? { cert: id.cert, key: id.key } : {}) });
    let data = '';
    sock.on('data', (d) => (data += d.toString()));
    sock.on('end', () => resolve(data));
    sock.on('error', reject);
  });
}

describe('per-job PKI', () => {
  it('a worker certificate of the job is accepted by the coordinator and names its slot; none, or another job\'s, is refused', async () => {
    const job = await JobPki.create();
    const other = await JobPki.create();
    const srv = await server(await job.serverIdentity());
    try {
      const w3 = await job.workerIdentity(3);
      expect(await dial(srv.port, w3)).toBe('hello');
      expect(srv.peers).toEqual(['nodespeed-slot-3']);
      expect(slotOfCommonName(srv.peers[0])).toBe(3);
      // No client certificate, or one issued by another job's CA: the handshake fails (with TLS 1.3
      // the client may only see the connection end, without the server's greeting).
      const refused = (p: Promise<string>) => p.then((got) => got || 'closed', (err: Error) => `error: ${err.message}`);
      expect(await refused(dial(srv.port, { ca: w3.ca }))).not.toBe('hello');
      expect(await refused(dial(srv.port, { ...(await other.workerIdentity(3)), ca: w3.ca }))).not.toBe('hello');
      expect(srv.peers).toEqual(['nodespeed-slot-3']);
      // A worker refuses a coordinator whose certificate another CA issued.
      const fake = await server(await other.serverIdentity());
      try {
        await expect(dial(fake.port, w3)).rejects.toThrow(/self.signed|unable to verify|certificate/i);
      } finally {
        fake.close();
      }
    } finally {
      srv.close();
    }
  });

  it('certificates carry the usages TLS checks: server only for the coordinator, client only for workers, CA only signs', async () => {
    const job = await JobPki.create();
    const ca = new X509Certificate(job.caPem);
    const srv = new X509Certificate((await job.serverIdentity()).cert);
    const w = new X509Certificate((await job.workerIdentity(0)).cert);
    expect(ca.ca).toBe(true);
    expect(srv.ca).toBe(false);
    expect(srv.checkIssued(ca)).toBe(true);
    expect(w.checkIssued(ca)).toBe(true);
    expect(srv.checkHost(CONTROL_SERVER_NAME)).toBe(CONTROL_SERVER_NAME);
    expect(srv.keyUsage).toEqual(['1.3.6.1.5.5.7.3.1']);
    expect(w.keyUsage).toEqual(['1.3.6.1.5.5.7.3.2']);
    expect(w.subject).toBe('CN=nodespeed-slot-0');
    // A worker's certificate cannot serve as the coordinator's: a worker cannot pose as it to its peers.
    const s2 = await server({ ...(await job.workerIdentity(1)), ca: job.caPem });
    try {
      await expect(dial(s2.port, await job.workerIdentity(2))).rejects.toThrow(/purpose|certificate/i);
    } finally {
      s2.close();
    }
  });

  it('the secrets travel as one variable that the worker takes out of its environment', async () => {
    const job = await JobPki.create();
    const secrets = { control: await job.workerIdentity(5), dataPlaneKey: 'ab'.repeat(32) };
    const env: NodeJS.ProcessEnv = { NODESPEED_JOB_SECRETS: encodeJobSecrets(secrets) };
    expect(takeJobSecrets(env)).toEqual(secrets);
    expect(env.NODESPEED_JOB_SECRETS).toBeUndefined();
    expect(() => takeJobSecrets(env)).toThrow('NODESPEED_JOB_SECRETS is not set');
    expect(() => decodeJobSecrets('not json')).toThrow('NODESPEED_JOB_SECRETS is not valid');
    expect(() => decodeJobSecrets(encodeJobSecrets({ ...secrets, dataPlaneKey: 'short' }))).toThrow('dataPlaneKey must be 32 bytes');
    expect(slotOfCommonName('nodespeed-slot-x')).toBeUndefined();
    expect(slotOfCommonName(undefined)).toBeUndefined();
  });
});
