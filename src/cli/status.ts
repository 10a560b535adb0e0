// `nodespeed status --server ADDR [--json]`: the cluster as the coordinator sees it. --json prints
// the whole ClusterStatus (every worker with rank, replica, stage, TP rank, host, pid and state,
// every failure and the failover counters).
import { Command } from 'commander';

import { NodespeedClient } from '../client/index.js';
import { secondsArg } from './args.js';
import { addServerFlags, clientOptions } from './server-flags.js';
import type { ServerFlags } from './server-flags.js';
import type { ClusterStatusMsg, FailureStatusMsg } from '../client/index.js';

function table(header: string[], rows: string[][]): string {
  const w = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  return [header, ...rows].map((r) => r.map((c, i) => c.padEnd(w[i]!)).join('  ').trimEnd()).join('\n');
}

/**
 * One line per failure, so a log scraper or a person can read each incident whole:
 *   2026-11-23T13:10:01.123Z rank 1 @host pid 4242 (replica 0): process exited (SIGKILL) -> respawned in 3412 ms (generation 3); replayed 32 requests, 512 tokens
 */
export function formatFailure(f: FailureStatusMsg, now = Date.now()): string {
  // recoveryMs is set once the replica serves again, whatever re-formed it (respawn, a spare).
  const outcome = f.recovery === 'retired' ? 'retired'
    : f.recoveryMs > 0 ? `${f.recovery} in ${Math.round(f.recoveryMs)} ms` : `${f.recovery} (${Math.round(now - f.atUnixMs)} ms so far)`;
  return `${new Date(f.atUnixMs).toISOString()} rank ${f.rank} @${f.host} pid ${f.pid} (replica ${f.replica}): ${f.cause} -> ${outcome} ` +
    `(generation ${f.generation}); replayed ${f.replayedRequests} requests, ${f.replayedTokens} tokens`;
}

function formatFailover(s: ClusterStatusMsg): string {
  const c = s.failover ?? { failures: 0, recoveries: 0, replayedRequests: 0, replayedTokens: 0 };
  const head = `failover: ${c.failures} failure(s), ${c.recoveries} recovered, ${c.replayedRequests} request(s) replayed ` +
    `(${c.replayedTokens} tokens already streamed), ${s.spares ?? 0} spare(s) waiting`;
  const failures = s.failures ?? [];
  return failures.length ? `${head}\nfailures (oldest first):\n${failures.map((f) => `  ${formatFailure(f)}`).join('\n')}` : head;
}

export function formatStatus(s: ClusterStatusMsg): string {
  const head = `${s.model}: ${s.state}, ${s.replicaCount} replica(s) x pp ${s.pp} x tp ${s.tp}, generation ${s.generation}, ` +
    `${s.activeRequests} request(s) in flight (${s.pendingRequests} waiting for a replica)`;
  // LAYOUT: the replica's own (smaller than the job's after a `shrunk` recovery) and its ranks.
  // PRECISION: weights / matrix-product inputs / KV cache, e.g. int8/bf16/bf16 or fp8/fp8/fp8.
  // KV FREE: free/total blocks, and for models whose windowed layers keep a pool of their own, "+ free/total" of that pool.
  const replicas = table(['REPLICA', 'STATE', 'LAYOUT', 'PRECISION', 'RANKS', 'RUNNING', 'QUEUED', 'KV FREE', 'STEPS', 'TOKENS', 'MAX BATCH'],
    s.replicas.map((r) => [String(r.id), r.state, `tp ${r.tp || s.tp} x pp ${r.pp || s.pp}`,
      r.precision ? `${r.precision.weights}/${r.precision.activations}/${r.precision.kvCache}` : '-', (r.ranks ?? []).join(',') || '-', String(r.running),
      String(r.queued), `${r.kvBlocksFree}/${r.kvBlocksTotal}${r.kvWindowBlocksTotal ? ` + ${r.kvWindowBlocksFree}/${r.kvWindowBlocksTotal}` : ''}`, r.steps, r.generatedTokens, String(r.maxStepBatch)]));
  const workers = table(['RANK', 'REPLICA', 'STAGE', 'TP', 'LAYERS', 'HOST', 'PID', 'STATE', 'HEARTBEAT'],
    s.workers.map((w) => [String(w.rank), String(w.replica), String(w.stage), String(w.tpRank), `${w.layerStart}-${w.layerEnd - 1}`,
      w.host, String(w.pid), w.state, w.lastHeartbeatMsAgo >= 0 ? `${Math.round(w.lastHeartbeatMsAgo)} ms ago` : '-']));
  return `${head}\n\n${replicas}\n\n${workers}\n\n${formatFailover(s)}\n`;
}

export function register(program: Command): void {
  const cmd = program
    .command('status')
    .description('Show the replicas and workers of a running `nodespeed launch`')
    .requiredOption('--server <addr>', 'address of the gRPC API, host:port')
    .option('--json', 'print the full ClusterStatus as JSON', false);
  addServerFlags(cmd)
    .option('--timeout <s>', 'seconds to wait for the server', secondsArg('--timeout'), 10)
    .action(async (o: ServerFlags & { server: string; json: boolean; timeout: number }) => {
      const client = new NodespeedClient(o.server, clientOptions(o));
      try {
        const s = await client.clusterStatus({ timeoutMs: Number(o.timeout) * 1000 });
        process.stdout.write(o.json ? `${JSON.stringify(s, null, 2)}\n` : formatStatus(s));
      } catch (err) {
        throw new Error(`nodespeed status --server ${o.server}: ${(err as Error).message}`);
      } finally {
        client.close();
      }
    });
}
