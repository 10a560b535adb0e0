// `nodespeed status --server ADDR [--json]`: the cluster as the coordinator sees it: its replica
// groups (device, precision, layout), the request classes (queue, routings and overflows,
// preemptions, TTFT and ITL percentiles), the replicas, the workers and the failures. --json prints
// the whole ClusterStatus (every worker with rank, replica, stage, TP rank, host, pid and state,
// every failure and the failover counters).
import { Command } from 'commander';

import { NodespeedClient } from '../client/index.js';
import { secondsArg } from './args.js';
import { addServerFlags, clientOptions } from './server-flags.js';
import type { ServerFlags } from './server-flags.js';
import type { ClassStatusMsg, ClusterStatusMsg, FailureStatusMsg, LatencyPercentilesMsg, PrecisionMsg } from '../client/index.js';

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

/** "12/15/20" (ms, p50/p90/p99) or "-" before any sample. */
function pct(p: LatencyPercentilesMsg | null | undefined): string {
  return p && p.count ? [p.p50Ms, p.p90Ms, p.p99Ms].map((v) => (v < 10 ? v.toFixed(1) : v.toFixed(0))).join('/') : '-';
}

/** "12 (gpu 10, cpu 2)": routings, by group. */
function routed(c: ClassStatusMsg): string {
  const by = Object.entries(c.routedByGroup ?? {}).filter(([, n]) => Number(n) > 0);
  return by.length ? `${c.routed} (${by.map(([g, n]) => `${g} ${n}`).join(', ')})` : String(c.routed);
}

export function formatStatus(s: ClusterStatusMsg): string {
  const groups = s.groups ?? [];
  const shape = groups.length > 1 ? `${groups.length} groups, ${s.replicaCount} replica(s)` : `${s.replicaCount} replica(s) x pp ${s.pp} x tp ${s.tp}`;
  const head = `${s.model}: ${s.state}, ${shape}, generation ${s.generation}, ` +
    `${s.activeRequests} request(s) in flight (${s.pendingRequests} waiting for a replica)`;
  // PRECISION: weights / matrix-product inputs / KV cache, e.g. int8/bf16/bf16 or fp8/fp8/fp8.
  const precision = (p: PrecisionMsg | null | undefined) => (p ? `${p.weights}/${p.activations}/${p.kvCache}` : '-');
  const groupTable = table(['GROUP', 'DEVICE', 'PRECISION', 'LAYOUT', 'REPLICAS', 'THREADS', 'MAX SEQS'],
    groups.map((g) => [g.name, g.device, precision(g.precision), `tp ${g.tp} x pp ${g.pp}`, g.replicas.join(',') || '-', g.threads ? String(g.threads) : '-',
      g.maxSeqs ? String(g.maxSeqs) : '-']));
  const classTable = table(['CLASS', 'PRIORITY', 'GROUPS', 'TTFT TARGET', 'WAITING', 'RUNNING', 'PREEMPTED', 'ROUTED', 'OVERFLOW', 'REJECTED',
    'PREEMPTIONS', 'TTFT ms p50/p90/p99', 'ITL ms p50/p90/p99'],
  (s.classes ?? []).map((c) => [c.name, String(c.priority), c.groups.join('>'), c.ttftP99TargetMs ? `p99 <= ${c.ttftP99TargetMs} ms` : '-',
    String(c.waiting), String(c.running), String(c.preempted), routed(c), c.overflowed, c.rejected, c.preemptions, pct(c.ttft), pct(c.itl)]));
  // LAYOUT: the replica's own (smaller than its group's after a `shrunk` recovery) and its ranks.
  // KV FREE: free/total blocks, and for models whose windowed layers keep a pool of their own, "+ free/total" of that pool.
  const replicas = table(['REPLICA', 'GROUP', 'STATE', 'LAYOUT', 'PRECISION', 'RANKS', 'RUNNING', 'QUEUED', 'KV FREE', 'STEPS', 'TOKENS', 'MAX BATCH',
    'STEP ms', 'PREEMPTED'],
    s.replicas.map((r) => [String(r.id), r.group || '-', r.state, `tp ${r.tp || s.tp} x pp ${r.pp || s.pp}`, precision(r.precision), (r.ranks ?? []).join(',') || '-',
      String(r.running), String(r.queued), `${r.kvBlocksFree}/${r.kvBlocksTotal}${r.kvWindowBlocksTotal ? ` + ${r.kvWindowBlocksFree}/${r.kvWindowBlocksTotal}` : ''}`, r.steps, r.generatedTokens, String(r.maxStepBatch),
      r.stepMs ? r.stepMs.toFixed(1) : '-', String(r.preemptions ?? 0)]));
  const workers = table(['RANK', 'REPLICA', 'STAGE', 'TP', 'LAYERS', 'HOST', 'PID', 'STATE', 'HEARTBEAT'],
    s.workers.map((w) => [String(w.rank), String(w.replica), String(w.stage), String(w.tpRank), `${w.layerStart}-${w.layerEnd - 1}`,
      w.host, String(w.pid), w.state, w.lastHeartbeatMsAgo >= 0 ? `${Math.round(w.lastHeartbeatMsAgo)} ms ago` : '-']));
  return `${head}\n\n${groupTable}\n\n${classTable}\n\n${replicas}\n\n${workers}\n\n${formatFailover(s)}\n`;
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
