// The coordinator's liveness responder (protocol/liveness.ts says why it exists): a thread of its
// own answering workers' challenges, so a busy event loop here is not mistaken for a dead coordinator.
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';

const THREAD_SCRIPT = join(resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', 'dist', 'coordinator', 'liveness-thread.js'));

export class LivenessResponder {
  private constructor(private readonly worker: Worker, readonly port: number) {}

  /** Starts the responder thread listening on host (the control plane's address); resolves with its port. */
  static start(host: string, key: Uint8Array): Promise<LivenessResponder> {
    return new Promise((res, rej) => {
      const worker = new Worker(THREAD_SCRIPT, { workerData: { host, key }, execArgv: [] });
      worker.once('error', (err) => rej(new Error(`liveness responder on ${host}: ${err.message}`)));
      worker.once('message', (m: { port?: number; error?: string }) => {
        if (m.error || !m.port) {
          void worker.terminate();
          rej(new Error(`liveness responder on ${host}: ${m.error ?? 'no port'}`));
          return;
        }
        worker.unref();
        res(new LivenessResponder(worker, m.port));
      });
    });
  }

  async stop(): Promise<void> {
    await this.worker.terminate();
  }
}
