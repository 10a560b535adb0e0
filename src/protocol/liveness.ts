// Liveness judged so that a busy coordinator does not kill healthy workers. A worker gives up on a
// coordinator that sent nothing for the heartbeat timeout (a hung or cut-off coordinator must not
// keep its workers serving) — but first it asks the coordinator's liveness responder, which runs on
// a thread of its own (coordinator/liveness-thread.ts): an answer keyed by the job's secret means the
// process is alive and only its event loop is late, so the worker keeps waiting; no answer (SIGSTOP,
// a dead host, a partition) and it leaves as before.
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { connect } from 'node:net';

export const LIVENESS_LABEL = 'nodespeed coordinator liveness v1';
export const LIVENESS_CHALLENGE_BYTES = 32;

export function livenessMac(key: Uint8Array, challenge: Uint8Array): Buffer {
  return createHmac('sha256', key).update(LIVENESS_LABEL).update(challenge).digest();
}

/** Asks the responder at host:port; true when it answers with the job key's MAC of our challenge within timeoutMs. */
export function probeLiveness(host: string, port: number, key: Uint8Array, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const challenge = randomBytes(LIVENESS_CHALLENGE_BYTES);
    const want = livenessMac(key, challenge);
    const s = connect({ host, port });
    let got = Buffer.alloc(0);
    let done = false;
    const finish = (ok: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => finish(false), timeoutMs);
    s.on('connect', () => s.write(challenge));
    s.on('data', (d: Buffer) => {
      got = Buffer.concat([got, d]);
      if (got.length >= want.length) finish(timingSafeEqual(got.subarray(0, want.length), want));
    });
    s.on('error', () => finish(false));
    s.on('close', () => finish(false));
  });
}
