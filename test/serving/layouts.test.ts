// Greedy and seeded generation through the gRPC API equals the single-process engine (and the
// Hugging Face reference) on every layout: tp=2, pp=2, tp=2 x pp=2 and 2 replicas, for both
// fixture checkpoints. Real `nodespeed launch` processes with real worker processes.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { Engine, generateAll } from '../../src/engine/index.js';
import type { GenerateRequest, GenerateResult } from '../../src/engine/index.js';
import { loadTokenizer } from '../../src/model/index.js';
import { BF16, F32, launch, reference, requestMsg, stream, workerProcesses } from './helpers.js';
import type { FixtureCase, LaunchedCluster } from './helpers.js';

const LAYOUTS: { name: string; args: string[] }[] = [
  { name: 'tp=2', args: ['--num_cpu_workers', '2', '--tp', '2'] },
  { name: 'pp=2', args: ['--num_cpu_workers', '2', '--pp', '2'] },
  { name: 'tp=2 x pp=2', args: ['--num_cpu_workers', '4', '--tp', '2', '--pp', '2'] },
  { name: '2 replicas', args: ['--num_cpu_workers', '2', '--replicas', '2'] },
  // The 4-GPU layouts, on CPU workers: tp 4 over 2 KV heads replicates each KV head to two ranks.
  { name: 'tp=4', args: ['--num_cpu_workers', '4', '--tp', '4'] },
  { name: '2 replicas x tp=2', args: ['--num_cpu_workers', '4', '--tp', '2', '--replicas', '2'] },
];

const toMsg = requestMsg;

function greedyRequests(cases: FixtureCase[]): GenerateRequest[] {
  return cases.map((c) => ({ promptIds: c.ids.slice(1), maxTokens: 24, ignoreEos: true, temperature: 0 }));
}

function seededRequests(cases: FixtureCase[]): GenerateRequest[] {
  return cases.map((c, i) => ({ promptIds: c.ids, maxTokens: 16, ignoreEos: true, temperature: 0.9, topK: 40, topP: 0.95, seed: 1234 + 7 * i }));
}

// Every sampling control at once, different per case (penalty counts built on each sampling rank,
// the bias and logprobs through the step frame to TP followers and back from the last pipeline stage).
function controlledRequests(cases: FixtureCase[]): GenerateRequest[] {
  return cases.map((c, i) => ({
    promptIds: c.ids, maxTokens: 16, ignoreEos: true, temperature: i % 2 ? 0 : 0.8, seed: 99 + i, minP: 0.05,
    repetitionPenalty: 1.3, presencePenalty: 0.5, frequencyPenalty: 0.25, logitBias: [{ token: c.greedy_24[0]!, bias: -5 }, { token: 7, bias: 1.5 }],
    logprobs: 3, stopTokenIds: [c.greedy_24[5]!],
  }));
}

/**
 * ClusterStatus once the drivers' load reports (one per heartbeat) count every token the streams
 * received, so the statistics read cover all of this test's steps.
 */
async function reported(client: LaunchedCluster['client'], streams: Array<{ tokenIds: number[] }>) {
  const want = streams.reduce((n, s) => n + s.tokenIds.length, 0);
  const t0 = Date.now();
  for (;;) {
    const st = await client.clusterStatus();
    const got = st.replicas.reduce((n, r) => n + Number(r.generatedTokens), 0);
    if (got === want || Date.now() - t0 > 10_000) {
      expect(got, 'tokens the drivers report generated').toBe(want);
      return st;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

for (const dir of [F32, BF16]) {
  const name = dir.split('/').pop()!;
  describe(`${name} through the gRPC API`, () => {
    const { cases } = reference<FixtureCase>(dir);
    let local: { greedy: GenerateResult[]; seeded: GenerateResult[]; controlled: GenerateResult[] };

    beforeAll(async () => {
      const [engine, tok] = await Promise.all([Engine.load(dir, { device: 'cpu' }), loadTokenizer(dir)]);
      try {
        local = { greedy: await generateAll(engine, tok, greedyRequests(cases)), seeded: await generateAll(engine, tok, seededRequests(cases)),
          controlled: await generateAll(engine, tok, controlledRequests(cases)) };
      } finally {
        engine.dispose();
      }
    });

    it('the single-process engine matches the reference (the baseline every layout must equal)', () => {
      const exact = local.greedy.filter((r, i) => JSON.stringify(r.tokenIds) === JSON.stringify(cases[i]!.greedy_24));
      // bf16: one reference case has a 1.2e-4 near-tie that HF's bf16 path breaks the other way.
      expect(exact.length).toBeGreaterThanOrEqual(dir === F32 ? cases.length : cases.length - 1);
    });

    for (const layout of LAYOUTS) {
      it(`${layout.name}: greedy, seeded and fully controlled tokens (and logprobs) identical to the single-process engine`, async () => {
        const cluster = await launch(dir, layout.args);
        try {
          expect(cluster.readyLine).toMatch(/^nodespeed ready 127\.0\.0\.1:\d+ /);
          const greedy = await Promise.all(greedyRequests(cases).map((r) => stream(cluster.client, toMsg(r))));
          const seeded = await Promise.all(seededRequests(cases).map((r) => stream(cluster.client, toMsg(r))));
          greedy.forEach((g, i) => {
            expect(g.tokenIds, `greedy case ${i}`).toEqual(local.greedy[i]!.tokenIds);
            expect(g.text).toBe(local.greedy[i]!.text);
            expect(g.finishReason).toBe('FINISH_REASON_LENGTH');
            expect(g.usage).toEqual({ promptTokens: cases[i]!.ids.length - 1, completionTokens: 24 });
          });
          seeded.forEach((s, i) => expect(s.tokenIds, `seeded case ${i}`).toEqual(local.seeded[i]!.tokenIds));
          const controlled = await Promise.all(controlledRequests(cases).map((r) => stream(cluster.client, toMsg(r))));
          controlled.forEach((c, i) => {
            const want = local.controlled[i]!;
            expect(c.tokenIds, `controlled case ${i}`).toEqual(want.tokenIds);
            expect(c.logprobs.map((l) => l.topIds)).toEqual(want.logprobs!.map((l) => l.topIds));
            c.logprobs.forEach((l, k) => expect(l.logprob).toBeCloseTo(want.logprobs![k]!.logprob, 4));
          });
          // Sampling really sampled: the seeded runs are not the greedy continuations.
          expect(seeded.some((s, i) => JSON.stringify(s.tokenIds) !== JSON.stringify(local.greedy[i]!.tokenIds))).toBe(true);
          const st = await cluster.client.clusterStatus();
          expect(st.workers.every((w) => w.state === 'serving')).toBe(true);
          if (layout.args.includes('--pp')) {
            // The driver keeps 2 micro-batches in the 2-stage pipeline, each with part of the batch.
            const after = await reported(cluster.client, [...greedy, ...seeded, ...controlled]);
            expect(after.replicas[0]!.maxInFlight).toBe(2);
            expect(after.replicas[0]!.maxStepBatch).toBeLessThan(cases.length);
          }
          if (layout.name === '2 replicas') {
            // The router spread the 8 concurrent requests over both replicas.
            const after = await reported(cluster.client, [...greedy, ...seeded, ...controlled]);
            expect(after.replicas.map((r) => Number(r.generatedTokens) > 0)).toEqual([true, true]);
          }
        } finally {
          expect(await cluster.stop()).toBe(0);
        }
        expect(workerProcesses()).toEqual([]);
      }, 120_000);
    }
  });
}
