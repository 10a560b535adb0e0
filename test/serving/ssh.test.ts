// Workers on three loopback "hosts" (127.0.0.2-4) started over SSH by the launcher through a real
// OpenSSH sshd: 2 replicas x pp=2, one replica on one host, the other with its pipeline stages on
// two hosts (activations cross "hosts" over the TCP data plane). Greedy and seeded output equals
// the single-process engine.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { Engine, generateAll } from '../../src/engine/index.js';
import { loadTokenizer } from '../../src/model/index.js';
import { sshdAvailable, startSshd } from '../helpers/sshd.js';
import type { SshdHarness } from '../helpers/sshd.js';
import { F32, launch, reference, stream, workerProcesses } from './helpers.js';
import type { FixtureCase } from './helpers.js';

const suite = sshdAvailable() ? describe : describe.skip;

suite('serving with workers on three hosts over SSH (real sshd)', () => {
  let sshd: SshdHarness;
  let work: string;

  beforeAll(async () => {
    sshd = await startSshd();
    work = mkdtempSync(join(tmpdir(), 'nodespeed-serve-ssh-'));
  });
  afterAll(async () => {
    await sshd?.stop();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('2 replicas x pp=2 on 127.0.0.2-4: same greedy and seeded tokens as one process', async () => {
    const hostfile = join(work, 'hostfile');
    writeFileSync(hostfile, '127.0.0.2 slots=2 device=cpu\n127.0.0.3 slots=1 device=cpu\n127.0.0.4 slots=1 device=cpu\n');
    const { cases } = reference<FixtureCase>(F32);
    const reqs = cases.flatMap((c, i) => [
      { promptIds: c.ids.slice(1), maxTokens: 24, ignoreEos: true, temperature: 0 },
      { promptIds: c.ids, maxTokens: 16, ignoreEos: true, temperature: 0.9, topK: 40, topP: 0.95, seed: 500 + i },
    ]);
    const [engine, tok] = await Promise.all([Engine.load(F32, { device: 'cpu' }), loadTokenizer(F32)]);
    const local = await generateAll(engine, tok, reqs).finally(() => engine.dispose());
    const cluster = await launch(F32, ['-H', hostfile, '--pp', '2', '--replicas', '2', '--heartbeat-interval', '0.25'], { env: sshd.env });
    try {
      const st = await cluster.client.clusterStatus();
      expect(st.hosts).toEqual(['127.0.0.2', '127.0.0.3', '127.0.0.4']);
      expect(st.workers.map((w) => [w.host, w.replica, w.stage])).toEqual([
        ['127.0.0.2', 0, 0], ['127.0.0.2', 0, 1], ['127.0.0.3', 1, 0], ['127.0.0.4', 1, 1]]);
      const got = await Promise.all(reqs.map((r) => stream(cluster.client, {
        promptIds: r.promptIds, maxTokens: r.maxTokens, ignoreEos: true, temperature: r.temperature,
        ...(r.topK ? { topK: r.topK, topP: r.topP!, seed: String(r.seed) } : {}),
      })));
      got.forEach((g, i) => expect(g.tokenIds, `request ${i}`).toEqual(local[i]!.tokenIds));
      cases.forEach((c, i) => expect(got[2 * i]!.tokenIds).toEqual(c.greedy_24));
      // Both replicas served (the cross-host one included).
      await new Promise((r) => setTimeout(r, 600));
      const after = await cluster.client.clusterStatus();
      expect(after.replicas.map((r) => Number(r.generatedTokens) > 0)).toEqual([true, true]);
    } finally {
      expect(await cluster.stop()).toBe(0);
    }
    expect(workerProcesses()).toEqual([]);
  }, 120_000);
});
