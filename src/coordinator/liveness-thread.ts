// The coordinator's liveness responder, on a thread of its own: it answers a worker's challenge
// with an HMAC under the job's key. A coordinator whose event loop is busy still answers (this
// thread is not that loop); a stopped, hung or unreachable one does not. Workers ask it only when
// the coordinator has been silent past the heartbeat timeout, to tell "busy" from "gone".
import { createServer } from 'node:net';
import { parentPort, workerData } from 'node:worker_threads';

import { LIVENESS_CHALLENGE_BYTES, livenessMac } from '../protocol/liveness.js';

const { host, key } = workerData as { host: string; key: Uint8Array };
const server = createServer((s) => {
  s.setTimeout(2000, () => s.destroy());
  s.on('error', () => {});
  let got = Buffer.alloc(0);
  s.on('data', (d: Buffer) => {
    got = Buffer.concat([got, d]);
    if (got.length < LIVENESS_CHALLENGE_BYTES) return;
    s.end(livenessMac(key, got.subarray(0, LIVENESS_CHALLENGE_BYTES)));
  });
});
server.maxConnections = 256;
server.on('error', (err) => parentPort!.postMessage({ error: err.message }));
server.listen(0, host, () => parentPort!.postMessage({ port: (server.address() as { port: number }).port }));
