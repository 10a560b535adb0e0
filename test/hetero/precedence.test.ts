// Where a request waits in the coordinator before it reaches a replica, a more urgent class goes
// first. A real launch, real gRPC clients: a flood of batch prompts that take the tokenizer threads
// tens of ms each, then a realtime prompt behind them; the realtime one is tokenized next, not after
// the flood. Every prompt of the test tokenizes to more tokens than the context holds, so it is
// refused right after tokenizing and the order of the refusals is the order of the tokenizing.
// --max-queue counts the requests still being tokenized: a flood past it is refused at once. And
// the steps a replica sends while the coordinator is not reading reach the client merged, whole.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import * as grpc from '@grpc/grpc-js';

import { NodespeedError } from '../../src/client/index.js';
import { PY_TINY, launch, reference, stream, workerProcesses } from '../serving/helpers.js';
import type { PyTinyCase } from '../serving/helpers.js';
import type { LaunchedCluster } from '../serving/helpers.js';

const FLOOD = 60;

/** ~20 KB of text, within the prompt-bytes limit but ~14k tokens, far past py-tiny's 512-token context. */
function longPrompt(salt: number): string {
  return Array.from({ length: 4000 }, (_, i) => `x${(i * 7919 + salt) % 1000} `).join('');
}

let cluster: LaunchedCluster;
beforeAll(async () => {
  cluster = await launch(PY_TINY, ['--num_cpu_workers', '1']);
}, 90_000);
afterAll(async () => {
  expect(await cluster?.stop()).toBe(0);
  expect(workerProcesses()).toEqual([]);
});

describe('between the client and the replica, under load', () => {
  it('a realtime prompt behind a flood of batch prompts is tokenized next, not after the flood', async () => {
    const answered: string[] = [];
    const ask = (name: string, priority: string, salt: number) =>
      cluster.client.complete({ prompt: longPrompt(salt), maxTokens: 4, priority }).then(
        () => answered.push(`${name}: answered`),
        (err: unknown) => {
          expect(err).toBeInstanceOf(NodespeedError);
          expect((err as NodespeedError).details).toMatch(/^prompt: is \d+ tokens, which leaves no room in the model's context of 512/);
          answered.push(name);
        });
    const flood = Array.from({ length: FLOOD }, (_, i) => ask(`batch${i}`, 'batch', i));
    const rt = ask('realtime', 'realtime', 9999);
    await Promise.all([...flood, rt]);
    expect(answered.length).toBe(FLOOD + 1);
    // Tokenized first in-first out, it would be last. Ahead of it: the prompts the tokenizer threads
    // held when it arrived (two each) and those tokenized before it arrived at all.
    const at = answered.indexOf('realtime');
    console.log(`realtime tokenized at position ${at + 1} of ${FLOOD + 1}`);
    expect(at).toBeLessThan(FLOOD / 3);
  }, 120_000);

  it('steps sent while the coordinator does not read reach the client as merged messages, with no gap, repeat or change', async () => {
    const c = reference<PyTinyCase>(PY_TINY).cases[0]!;
    const req = { promptIds: c.ids, maxTokens: 300, ignoreEos: true, logprobs: 3 };
    const whole = await cluster.client.complete(req);
    let stopped = false;
    const streamed = stream(cluster.client, req);
    // The coordinator stopped for a moment (SIGSTOP) once the stream runs: the replica's steps pile
    // up in its control stream (merged per request when they go out together) and then in the coordinator.
    const t = setInterval(() => {
      if (stopped) return;
      stopped = true;
      process.kill(cluster.proc.pid!, 'SIGSTOP');
      setTimeout(() => process.kill(cluster.proc.pid!, 'SIGCONT'), 1500);
    }, 100);
    const got = await streamed.finally(() => clearInterval(t));
    expect(got.tokenIds).toEqual(whole.tokenIds);
    expect(got.text).toBe(whole.text);
    expect(got.logprobs).toEqual(whole.logprobs);
    console.log(`${got.messages} messages for ${got.tokenIds.length} tokens`);
    expect(got.messages).toBeLessThan(got.tokenIds.length);
  }, 60_000);

  it('--max-queue counts the prompts waiting to be tokenized: past it a request is refused at once, before tokenizing', async () => {
    const small = await launch(PY_TINY, ['--num_cpu_workers', '1', '--max-queue', '20']);
    try {
      const codes = await Promise.all(Array.from({ length: 60 }, (_, i) => small.client.complete({ prompt: longPrompt(i), maxTokens: 4, priority: 'batch' })
        .then(() => 'answered', (err: unknown) => {
          const e = err as NodespeedError;
          if (e.code === grpc.status.RESOURCE_EXHAUSTED) expect(e.details).toMatch(/^queue full: \d+ requests in flight \(--max-queue 20\)/);
          else expect(e.details).toMatch(/^prompt: is \d+ tokens/);
          return grpc.status[e.code];
        })));
      const count = (c: string) => codes.filter((x) => x === c).length;
      console.log(`60 prompts at --max-queue 20: ${count('INVALID_ARGUMENT')} tokenized, ${count('RESOURCE_EXHAUSTED')} refused as queue full`);
      expect(count('RESOURCE_EXHAUSTED')).toBeGreaterThan(0);
      expect(count('INVALID_ARGUMENT') + count('RESOURCE_EXHAUSTED')).toBe(60);
    } finally {
      expect(await small.stop()).toBe(0);
    }
  }, 120_000);
});
