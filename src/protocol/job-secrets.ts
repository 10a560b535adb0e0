// What a worker needs to prove it belongs to its job, handed over by the launcher in one
// environment variable (local ranks: the child's environment; remote ranks: the script sent on the
// SSH channel's stdin), never on a command line where `ps` shows it:
//   - its control-plane TLS identity: the job CA, and the client certificate and key of its slot;
//   - the data plane's key: the per-job secret its communicators' handshakes are keyed with.
// The worker reads the variable once and removes it from its environment.
import { settings } from '../settings/index.js';

/** The environment variable carrying the job's secrets to a worker (base64 of JSON). */
export const JOB_SECRETS_VAR = 'NODESPEED_JOB_SECRETS';

/** The name the coordinator's certificate carries and workers check, whatever address they dial. */
export const CONTROL_SERVER_NAME = 'nodespeed-coordinator';

/** PEM text. */
export interface TlsIdentity {
  /** The job CA's certificate: the only issuer the other end is checked against. */
  ca: string;
  cert: string;
  key: string;
}

export interface JobSecrets {
  control: TlsIdentity;
  /** 32 bytes, hex: the key of the data plane's HMAC handshake (and its encryption keys). */
  dataPlaneKey: string;
}

/** The common name of a launcher slot's client certificate. */
export function slotCommonName(slot: number): string {
  return `nodespeed-slot-${slot}`;
}

/** The slot a client certificate's common name stands for, or undefined. */
export function slotOfCommonName(cn: unknown): number | undefined {
  const m = typeof cn === 'string' ? /^nodespeed-slot-(\d{1,9})$/.exec(cn) : null;
  return m ? Number(m[1]) : undefined;
}

export function encodeJobSecrets(s: JobSecrets): string {
  return Buffer.from(JSON.stringify(s)).toString('base64');
}

export function decodeJobSecrets(value: string): JobSecrets {
  let s: JobSecrets;
  try {
    s = JSON.parse(Buffer.from(value, 'base64').toString('utf8')) as JobSecrets;
  } catch {
    throw new Error(`${JOB_SECRETS_VAR} is not valid (base64 JSON expected): the worker is started by \`nodespeed launch\``);
  }
  const pemOk = (v: unknown) => typeof v === 'string' && v.includes('-----BEGIN ');
  if (!s || !s.control || !pemOk(s.control.ca) || !pemOk(s.control.cert) || !pemOk(s.control.key))
    throw new Error(`${JOB_SECRETS_VAR}: control.ca, control.cert and control.key must be PEM`);
  if (typeof s.dataPlaneKey !== 'string' || !/^[0-9a-f]{64}$/.test(s.dataPlaneKey))
    throw new Error(`${JOB_SECRETS_VAR}: dataPlaneKey must be 32 bytes in hex`);
  return s;
}

/** Reads the secrets and removes the variable, so nothing this process starts inherits it. */
export function takeJobSecrets(env: NodeJS.ProcessEnv = process.env): JobSecrets {
  const v = (env === process.env ? settings() : settings(env)).jobSecrets;
  if (!v) throw new Error(`${JOB_SECRETS_VAR} is not set (the worker is started by \`nodespeed launch\`, which hands each worker its certificate)`);
  delete env[JOB_SECRETS_VAR];
  return decodeJobSecrets(v);
}
