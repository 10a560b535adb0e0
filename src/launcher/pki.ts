// The job's own public key infrastructure, made in memory at launch: a CA whose private key never
// leaves this process, the coordinator's control-plane server certificate, and one client
// certificate per launcher slot. The control plane is mutual TLS against this CA only, so nothing
// outside the job (not even another nodespeed job on the same hosts) can join it or pose as its
// coordinator. ECDSA P-256 keys, made and signed by the platform's WebCrypto (OpenSSL) through
// @peculiar/x509, which only writes the ASN.1.
import 'reflect-metadata'; // @peculiar/x509's dependency injection (tsyringe) needs it loaded first
import { webcrypto } from 'node:crypto';

import * as x509 from '@peculiar/x509';

import { CONTROL_SERVER_NAME, slotCommonName } from '../protocol/job-secrets.js';
import type { TlsIdentity } from '../protocol/job-secrets.js';

const crypto = webcrypto as unknown as Crypto;
x509.cryptoProvider.set(crypto);

const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
/**
 * A job may serve for a long time and its CA key exists only in the launcher's memory (a new job,
 * a new CA), so certificates outlive any job; the clock skew allowance covers hosts a little behind.
 */
const VALID_DAYS = 3650;
const SKEW_MS = 60 * 60 * 1000;

function pem(label: string, der: ArrayBuffer): string {
  const b64 = Buffer.from(der).toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '');
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}

function validity(): { notBefore: Date; notAfter: Date } {
  const now = Date.now();
  return { notBefore: new Date(now - SKEW_MS), notAfter: new Date(now + VALID_DAYS * 86_400_000) };
}

export class JobPki {
  private serial = 1;

  private constructor(private readonly ca: x509.X509Certificate, private readonly caKeys: CryptoKeyPair) {}

  static async create(): Promise<JobPki> {
    const keys = await crypto.subtle.generateKey(ALG, false, ['sign', 'verify']) as CryptoKeyPair;
    const ca = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: '01', name: 'CN=nodespeed job CA', ...validity(), keys, signingAlgorithm: ALG,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      ],
    });
    return new JobPki(ca, keys);
  }

  get caPem(): string {
    return this.ca.toString('pem') + '\n';
  }

  /** A certificate of this CA for a TLS server or client under `commonName`, valid for `names` (subjectAltName). */
  async issue(commonName: string, role: 'server' | 'client', names: x509.JsonGeneralName[]): Promise<TlsIdentity> {
    const usage = role === 'server' ? x509.ExtendedKeyUsage.serverAuth : x509.ExtendedKeyUsage.clientAuth;
    const keys = await crypto.subtle.generateKey(ALG, true, ['sign', 'verify']) as CryptoKeyPair;
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: (++this.serial).toString(16).padStart(2, '0'), subject: `CN=${commonName}`, issuer: this.ca.subject, ...validity(),
      publicKey: keys.publicKey, signingKey: this.caKeys.privateKey, signingAlgorithm: ALG,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyAgreement, true),
        new x509.ExtendedKeyUsageExtension([usage]),
        new x509.SubjectAlternativeNameExtension(names),
        await x509.AuthorityKeyIdentifierExtension.create(this.caKeys.publicKey),
      ],
    });
    const key = await crypto.subtle.exportKey('pkcs8', keys.privateKey);
    return { ca: this.caPem, cert: cert.toString('pem') + '\n', key: pem('PRIVATE KEY', key) };
  }

  /**
   * The coordinator's control-plane certificate. Workers check it against the job CA under one fixed
   * name (CONTROL_SERVER_NAME), whatever address they dial, so --advertise-addr needs no certificate change.
   */
  serverIdentity(): Promise<TlsIdentity> {
    return this.issue(CONTROL_SERVER_NAME, 'server', [{ type: 'dns', value: CONTROL_SERVER_NAME }]);
  }

  /** The client certificate of one launcher slot: the coordinator admits its Join only for that slot. */
  workerIdentity(slot: number): Promise<TlsIdentity> {
    const cn = slotCommonName(slot);
    return this.issue(cn, 'client', [{ type: 'dns', value: cn }]);
  }
}
