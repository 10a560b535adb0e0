// Shared by the failover tests: 32 seeded streams of 64 tokens, their fault-free result
// from the single-process engine, a stream follower that fails on a repeated or missing token and
// records when each token arrived (and on which replica, when the test asks ClusterStatus), small
// waits, the CLI and the metrics endpoint, and a cluster with a host reached over a real sshd. Every
// test compares every stream with the fault-free run: exact tokens, no gap, no repeat.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { expect } from 'vitest';

import { Engine, generateAll } from '../../src/engine/index.js';
import type { GenerateRequest, GenerateResult } from '../../src/engine/index.js';
import { loadTokenizer } from '../../src/model/index.js';
import type { CallOptions, ClusterStatusMsg, NodespeedClient } from '../../src/client/index.js';
import type { FailoverStatusMsg } from '../../src/coordinator/failover.js';
import { startSshd } from '../helpers/sshd.js';
import type { SshdHarness } from '../helpers/sshd.js';
import { BIN, PY_TINY, launch, reference, requestMsg, root, workerProcesses } from '../serving/helpers.js';
import type { LaunchedCluster, PyTinyCase } from '../serving/helpers.js';

export const STREAMS = 32;
export const TOKENS = 64;

export type Status = ClusterStatusMsg & FailoverStatusMsg;

/**
 * 32 seeded sampling requests of `tokens` each, half of them with penalties, min-p and a logit bias;
 * `promptTokens` > 0 makes every prompt that long (a long prefill).
 */
export function requests(promptTokens = 0, tokens = TOKENS): GenerateRequest[] {
  const { cases } = reference<PyTinyCase>(PY_TINY);
  const all = cases.flatMap((c) => c.ids);
  return Array.from({ length: STREAMS }, (_, i) => {
    let promptIds = cases[i % cases.length]!.ids;
    // Different long prompts: the case texts' ids, rotated by the stream index, repeated.
    if (promptTokens > 0) promptIds = Array.from({ length: promptTokens }, (_, k) => all[(k + 7 * i) % all.length]!);
    const r: GenerateRequest = { promptIds, maxTokens: tokens, ignoreEos: true, temperature: 0.8, topK: 40, topP: 0.95, seed: 1000 + 17 * i };
    // Every other stream with the controls whose state a replay must rebuild (token counts) or carry.
    return i % 2 ? { ...r, repetitionPenalty: 1.15, presencePenalty: 0.4, frequencyPenalty: 0.3, minP: 0.05, logitBias: [{ token: 4, bias: -2 }] } : r;
  });
}

/** The same requests on one in-process engine, without any fault (`quantize`: with those weights). */
export async function faultFree(reqs: GenerateRequest[], quantize: 'none' | 'int8' = 'none'): Promise<GenerateResult[]> {
  const [engine, tok] = await Promise.all([Engine.load(PY_TINY, { device: 'cpu', kvBlocks: 1024, quantize }), loadTokenizer(PY_TINY)]);
  try {
    return await generateAll(engine, tok, reqs);
  } finally {
    engine.dispose();
  }
}

export interface Received { tokenIds: number[]; arrivals: number[] }

/** One stream; fails on a repeated or missing index, records each token's arrival time. */
export async function follow(client: NodespeedClient, r: GenerateRequest, out: Received, opts: CallOptions = {}, onTokens?: () => void): Promise<void> {
  for await (const m of client.generate(requestMsg(r), opts)) {
    if (m.index !== out.tokenIds.length) throw new Error(`stream gap/repeat: message index ${m.index}, ${out.tokenIds.length} tokens received`);
    out.tokenIds.push(...m.tokenIds);
    for (const _ of m.tokenIds) out.arrivals.push(Date.now());
    onTokens?.();
  }
}

export interface Streams {
  got: Received[];
  all: Promise<void[]>;
  received(): number;
  /** Called after each message of any stream (one at a time). */
  onTokens: (() => void) | null;
}

export function startStreams(client: NodespeedClient, reqs: GenerateRequest[]): Streams {
  const got: Received[] = reqs.map(() => ({ tokenIds: [], arrivals: [] }));
  const s: Streams = { got, all: Promise.resolve([]), received: () => got.reduce((n, g) => n + g.tokenIds.length, 0), onTokens: null };
  s.all = Promise.all(reqs.map((r, i) => follow(client, r, got[i]!, {}, () => s.onTokens?.())));
  s.all.catch(() => {});
  return s;
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls until `ok` holds; throws with `what` after `ms`. */
export async function until(what: string, ok: () => boolean | Promise<boolean>, ms = 30_000, every = 10): Promise<void> {
  const t0 = Date.now();
  while (!(await ok())) {
    if (Date.now() - t0 > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(every);
  }
}

export async function status(cluster: LaunchedCluster): Promise<Status> {
  return await cluster.client.clusterStatus() as Status;
}

/**
 * Sends `signal` to `pid` from inside the stream handler the moment `fraction` of all tokens are in:
 * a test process starved between two polls would otherwise see the streams only after they ended.
 * Returns the time and each stream's token count at that moment.
 */
export function signalMidStream(s: Streams, pid: number, signal: NodeJS.Signals, fraction = 1 / 4): Promise<{ at: number; counts: number[] }> {
  return new Promise((resolve, reject) => {
    s.onTokens = () => {
      if (s.received() < STREAMS * TOKENS * fraction) return;
      s.onTokens = null;
      const at = Date.now();
      process.kill(pid, signal);
      resolve({ at, counts: s.got.map((g) => g.tokenIds.length) });
    };
    s.all.then(() => reject(new Error(`every stream ended before ${fraction} of the tokens arrived`)), reject);
  });
}

/** Waits until `fraction` of all tokens have been delivered (mid-stream) and returns the time. */
export async function midStream(s: Streams, fraction = 1 / 4, tokens = TOKENS): Promise<number> {
  await until(`${fraction} of the tokens`, () => s.received() >= STREAMS * tokens * fraction, 30_000, 5);
  return Date.now();
}

/**
 * Waits until each of `replicas` is mid-way through its streams as the coordinator sees it
 * (requests routed to it and unfinished, at least `tokens` generated). The test process, starved on
 * a loaded 2-core box, can receive tokens in late bursts, so counting what it received may find the
 * streams already done; and the replica's own running/queued counts arrive a heartbeat late.
 */
export async function replicasMidStream(cluster: LaunchedCluster, replicas: number[], tokens: number): Promise<number> {
  let seen = '';
  try {
    await until(`replicas ${replicas.join(', ')} mid-stream`, async () => {
      const st = await status(cluster);
      seen = replicas.map((id) => {
        const r = st.replicas[id]!;
        return `replica ${id}: ${r.state}, ${r.requests} requests, ${r.generatedTokens} tokens`;
      }).join('; ');
      return replicas.every((id) => st.replicas[id]!.requests > 0 && Number(st.replicas[id]!.generatedTokens) >= tokens);
    }, 30_000, 5);
  } catch (e) {
    throw new Error(`${(e as Error).message} (${tokens} tokens wanted; last seen: ${seen})`);
  }
  return Date.now();
}

/** Every stream equals the fault-free run: same tokens, none missing, none repeated. */
export function expectFaultFree(got: Received[], local: GenerateResult[]): void {
  got.forEach((g, i) => expect(g.tokenIds, `stream ${i}`).toEqual(local[i]!.tokenIds));
}

/** Tokens that arrived in (from, to): proof that some replica kept serving in that window. */
export function tokensBetween(got: Received[], from: number, to: number): number {
  return got.flatMap((g) => g.arrivals.filter((t) => t > from && t < to)).length;
}

/** The first token any stream received after `t`. */
export function firstTokenAfter(got: Received[], t: number): number {
  return Math.min(...got.flatMap((g) => g.arrivals.filter((a) => a > t)));
}

/** Whether the process runs (a zombie, killed and not reaped yet, does not). */
export function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

/** Parent pid from /proc (to find the sshd session process that serves a remote worker). */
export function parentOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
}

export function commOf(pid: number): string {
  return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
}

/** The recovery-relevant lines of the launcher's log, for the test output. */
export function failoverLines(log: string): string {
  return log.split('\n').filter((l) => /lost|failover|launcher: restarted|spare|retired|watchdog|spoke after|not restarted|re-formed as/.test(l)).join('\n');
}

/** The `nodespeed` CLI, run to completion. */
export function cli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  return spawnSync(process.execPath, [BIN, ...args], { cwd: root, encoding: 'utf8', timeout: 60_000 });
}

/** Prometheus text format → sample name (with labels) → value. */
export function parseMetrics(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}

export async function scrape(address: string): Promise<Map<string, number>> {
  const res = await fetch(`http://${address}/metrics`);
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
  return parseMetrics(await res.text());
}

/**
 * Runs `body` on a fresh `nodespeed launch` of py-tiny with `hostfile` (its text), where 127.0.0.2 is
 * reached through a real sshd, then stops the cluster and the sshd and checks no worker is left.
 * `sshd.stop()` makes 127.0.0.2 gone: sshd and every process under it die (the workers there), and
 * nothing can be started there again.
 */
export async function onSshHosts(hostfile: string, args: string[], body: (cluster: LaunchedCluster, sshd: SshdHarness) => Promise<void>): Promise<void> {
  const sshd = await startSshd({ hosts: ['127.0.0.2'] });
  const work = mkdtempSync(join(tmpdir(), 'nodespeed-failover-ssh-'));
  try {
    writeFileSync(join(work, 'hostfile'), hostfile);
    const cluster = await launch(PY_TINY, ['-H', join(work, 'hostfile'), ...args], { env: sshd.env, timeoutMs: 90_000 });
    try {
      await body(cluster, sshd);
    } finally {
      expect(await cluster.stop()).toBe(0);
    }
  } finally {
    await sshd.stop();
    rmSync(work, { recursive: true, force: true });
  }
  expect(workerProcesses()).toEqual([]);
}
