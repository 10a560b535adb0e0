// Prometheus metrics of the coordinator (requests, tokens, replica load, failover), served in the
// text exposition format over HTTP by `nodespeed launch --metrics-port N`.
//
// prom-client with a registry of our own, never the global default one: an application that
// embeds the coordinator (launchCluster) keeps its own default registry to itself, and two
// coordinators in one process (tests) do not collide on metric names.
//
// Two kinds of sources:
//   - events only the API sees (a request accepted or refused, tokens streamed to a client) are
//     counted as they happen, through the ApiMetrics hooks;
//   - everything the coordinator already keeps (failover counters, membership epoch, replica
//     load) is read at scrape time in collect(), so a scrape can never disagree with ClusterStatus.
//     The failover counters are prom Counters fed by the difference since the last scrape: they
//     only ever grow, and Prometheus' rate() sees a proper counter.
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';

import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

import type { Failover, FailoverCounters } from './failover.js';
import { groupOf } from './layout.js';
import type { Membership } from './membership.js';
import { bearerMatches, httpsOptions } from './public-auth.js';
import type { PublicTls } from './public-auth.js';
import type { RequestStore } from './requests.js';
import type { Router } from './router.js';
import { RequestStatus } from '../protocol/lifecycle.js';

/** What the public API reports as it happens (see InferenceApi). */
export interface ApiMetrics {
  accepted(): void;
  /** A request refused before it was accepted, by gRPC status name (INVALID_ARGUMENT, ...). */
  rejected(code: string): void;
  /** Tokens sent to a client (each token once: a replay's re-sent prefix is not counted). */
  streamed(tokens: number): void;
}

export interface MetricsSources {
  members: Membership;
  store: RequestStore;
  failover: Failover;
  /** Its class counters and latency windows (ClusterStatus classes). */
  router?: Router;
}

/** A counter that follows a monotonic number kept elsewhere, read at scrape time. */
function mirroredCounter(registry: Registry, name: string, help: string, read: () => number): Counter {
  let seen = 0;
  return new Counter({
    name, help, registers: [registry],
    collect() {
      const now = read();
      if (now > seen) this.inc(now - seen);
      seen = Math.max(seen, now);
    },
  });
}

type Labels = Record<string, string>;

/** mirroredCounter with labels: `read` gives every label set's current total. */
function mirroredLabeledCounter(registry: Registry, name: string, help: string, labelNames: string[],
  read: () => Array<[Labels, number]>): Counter<string> {
  const seen = new Map<string, number>();
  return new Counter({
    name, help, labelNames, registers: [registry],
    collect() {
      for (const [labels, now] of read()) {
        const key = JSON.stringify(labels);
        const was = seen.get(key) ?? 0;
        if (now > was) this.inc(labels, now - was);
        else if (!seen.has(key)) this.inc(labels, 0);
        seen.set(key, Math.max(was, now));
      }
    },
  });
}

export class CoordinatorMetrics implements ApiMetrics {
  readonly registry = new Registry();
  private readonly requests: Counter;
  private readonly rejections: Counter<'code'>;
  private readonly tokens: Counter;

  constructor(src: MetricsSources) {
    const r = this.registry;
    const { members, store, failover } = src;
    // Process CPU, memory and event-loop lag of the coordinator: a stalled event loop delays
    // heartbeats and gets healthy workers declared dead, so it is worth watching.
    collectDefaultMetrics({ register: r });

    this.requests = new Counter({ name: 'nodespeed_requests_total', help: 'Generate/Complete requests accepted', registers: [r] });
    this.rejections = new Counter({
      name: 'nodespeed_requests_rejected_total', help: 'Requests refused before acceptance, by gRPC status', labelNames: ['code'], registers: [r],
    });
    this.tokens = new Counter({
      name: 'nodespeed_generated_tokens_total', help: 'Tokens streamed to clients (a replayed prefix counts once)', registers: [r],
    });
    new Gauge({
      name: 'nodespeed_requests_in_flight', help: 'Requests accepted and not finished', registers: [r],
      collect() { this.set(store.size); },
    });
    new Gauge({
      name: 'nodespeed_requests_pending', help: 'Accepted requests waiting for a serving replica (e.g. during a failover)', registers: [r],
      collect() { this.set(store.pending().length); },
    });
    // Per-replica state from the drivers' last load report (a re-forming replica has none: 0).
    const perReplica = (name: string, help: string, read: (rep: Membership['replicas'][number]) => number) => new Gauge({
      name, help, labelNames: ['replica'], registers: [r],
      collect() {
        this.reset();
        for (const rep of members.replicas) this.set({ replica: String(rep.id) }, read(rep));
      },
    });
    perReplica('nodespeed_replica_queue_depth', 'Requests routed to the replica and not admitted to its batch yet', (rep) => rep.load?.queued ?? 0);
    perReplica('nodespeed_replica_running', 'Sequences in the replica\'s batch', (rep) => rep.load?.running ?? 0);
    perReplica('nodespeed_kv_blocks_total', 'KV cache blocks of the replica', (rep) => rep.load?.kvBlocksTotal ?? rep.kvBlocks);
    perReplica('nodespeed_kv_blocks_used', 'KV cache blocks in use', (rep) => rep.load ? rep.load.kvBlocksTotal - rep.load.kvBlocksFree : 0);
    // Models that mix windowed and global layers: the windowed layers' own pool (0 for others).
    perReplica('nodespeed_kv_window_blocks_total', 'KV cache blocks of the replica\'s windowed layers (a ring per sequence; 0: no such pool)',
      (rep) => rep.load?.kvWindowBlocksTotal ?? rep.kvWindowBlocks);
    perReplica('nodespeed_kv_window_blocks_used', 'KV cache blocks of the windowed layers in use',
      (rep) => rep.load ? rep.load.kvWindowBlocksTotal - rep.load.kvWindowBlocksFree : 0);
    perReplica('nodespeed_replica_serving', '1 while the replica serves, 0 while it forms, loads or is lost', (rep) => (rep.state === 'serving' ? 1 : 0));
    perReplica('nodespeed_replica_ranks', 'Ranks of the replica (tp x pp: fewer after failover re-formed it with a smaller layout)', (rep) => rep.ranks.length);
    new Gauge({
      name: 'nodespeed_replica_precision_info', help: 'Always 1: what the replica computes with (weights, matrix-product inputs, KV cache storage)',
      labelNames: ['replica', 'weights', 'activations', 'kv_cache'], registers: [r],
      collect() {
        this.reset();
        for (const rep of members.replicas) {
          const p = rep.precision;
          this.set({ replica: String(rep.id), weights: p.weights, activations: p.activations, kv_cache: p.kvCache }, 1);
        }
      },
    });
    new Gauge({
      name: 'nodespeed_replicas_serving', help: 'Replicas serving now', registers: [r],
      collect() { this.set(members.replicas.filter((rep) => rep.state === 'serving').length); },
    });
    new Gauge({
      name: 'nodespeed_membership_generation', help: 'Membership generation (grows by one each time a replica is re-formed)', registers: [r],
      collect() { this.set(Number(members.epoch)); },
    });

    new Gauge({
      name: 'nodespeed_spares', help: 'Spare workers joined and waiting to take a lost rank (--spares)', registers: [r],
      collect() { this.set(failover.status().spares); },
    });

    const c = (k: keyof FailoverCounters) => () => failover.counters[k];
    mirroredCounter(r, 'nodespeed_failures_total', 'Workers lost (one per incident, as in ClusterStatus failures)', c('failures'));
    mirroredCounter(r, 'nodespeed_recoveries_total', 'Lost replicas serving again', c('recoveries'));
    mirroredCounter(r, 'nodespeed_replicas_shrunk_total', 'Of those, replicas re-formed with a smaller layout (recovery shrunk)', () => failover.shrinks);
    mirroredCounter(r, 'nodespeed_replayed_requests_total', 'In-flight requests re-queued from a lost replica', c('replayedRequests'));
    mirroredCounter(r, 'nodespeed_replayed_tokens_total', 'Tokens those requests had already streamed (replayed as prompt)', c('replayedTokens'));
    if (src.router) this.classMetrics(src.router, members, store);
    const recovery = new Histogram({
      name: 'nodespeed_recovery_seconds', help: 'Loss of a worker to its replica serving again', registers: [r],
      buckets: [0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120],
    });
    failover.on('recovered', (rec) => recovery.observe((rec.recoveryMs ?? 0) / 1000));
  }

  /**
   * Per request class (label `class`): routings by group and overflows past the class's first group,
   * refusals, preemptions, the requests waiting / streaming / preempted now, and TTFT and ITL
   * percentiles over the class's recent requests (ClusterStatus classes). Per replica: its group,
   * device, precision and layout (`nodespeed_replica_info`, value 1).
   */
  private classMetrics(router: Router, members: Membership, store: RequestStore): void {
    const r = this.registry;
    const all = () => router.stats.all();
    mirroredLabeledCounter(r, 'nodespeed_class_routed_total', 'Requests routed to a replica, by class and the replica\'s group (a replay counts again)',
      ['class', 'group'], () => all().flatMap((k) => [...k.routedByGroup].map(([group, n]): [Labels, number] => [{ class: k.cls.name, group }, n])));
    mirroredLabeledCounter(r, 'nodespeed_class_overflow_total', 'Of those, routed to a group other than the class\'s first (its preferred groups could not meet it)',
      ['class', 'group'], () => all().flatMap((k) => [...k.overflowByGroup].map(([group, n]): [Labels, number] => [{ class: k.cls.name, group }, n])));
    mirroredLabeledCounter(r, 'nodespeed_class_rejected_total', 'Requests refused RESOURCE_EXHAUSTED: no replica the class may use could take them',
      ['class'], () => all().map((k): [Labels, number] => [{ class: k.cls.name }, k.rejected]));
    mirroredLabeledCounter(r, 'nodespeed_class_preemptions_total', 'Times a request of the class was taken out of its replica\'s batch for a more urgent class',
      ['class'], () => all().map((k): [Labels, number] => [{ class: k.cls.name }, k.preemptions]));
    const now = (pick: (s: RequestStatus, first: boolean) => boolean) => function (this: Gauge<string>) {
      this.reset();
      const live = [...store.values()];
      for (const c of router.classes.list)
        this.set({ class: c.name }, live.filter((x) => x.sched.cls.name === c.name && pick(x.status, x.firstTokenAt !== undefined)).length);
    };
    new Gauge({ name: 'nodespeed_class_queue', help: 'Requests of the class accepted with no token yet (waiting for a replica or for admission)',
      labelNames: ['class'], registers: [r], collect: now((_, first) => !first) });
    new Gauge({ name: 'nodespeed_class_running', help: 'Requests of the class streaming now', labelNames: ['class'], registers: [r],
      collect: now((s, first) => first && s === RequestStatus.RUNNING) });
    new Gauge({ name: 'nodespeed_class_preempted', help: 'Requests of the class out of their replica\'s batch now, to resume by recompute',
      labelNames: ['class'], registers: [r], collect: now((s) => s === RequestStatus.PREEMPTED) });
    const latency = (name: string, help: string, pick: (k: ReturnType<Router['stats']['all']>[number]) => { percentiles(): { count: number; p50Ms: number; p90Ms: number; p99Ms: number } }) =>
      new Gauge({
        name, help, labelNames: ['class', 'quantile'], registers: [r],
        collect() {
          this.reset();
          for (const k of all()) {
            const p = pick(k).percentiles();
            if (!p.count) continue;
            for (const [q, v] of [['0.5', p.p50Ms], ['0.9', p.p90Ms], ['0.99', p.p99Ms]] as const) this.set({ class: k.cls.name, quantile: q }, v / 1000);
          }
        },
      });
    latency('nodespeed_class_ttft_seconds', 'Time to first token of the class\'s recent requests (at most 1024, the last 10 minutes), by quantile', (k) => k.ttft);
    latency('nodespeed_class_itl_seconds', 'Time between two tokens of one stream, the class\'s recent tokens, by quantile', (k) => k.itl);
    new Gauge({
      name: 'nodespeed_replica_info', help: 'A replica\'s group, device and layout (value 1; its precision: nodespeed_replica_precision_info)',
      labelNames: ['replica', 'group', 'device', 'layout'],
      registers: [r],
      collect() {
        this.reset();
        for (const rep of members.replicas) {
          const g = groupOf(members.layout, rep.id);
          this.set({ replica: String(rep.id), group: g.name, device: g.serving.device, layout: `tp ${rep.tp} x pp ${rep.pp}` }, 1);
        }
      },
    });
  }

  accepted(): void {
    this.requests.inc();
  }

  rejected(code: string): void {
    this.rejections.inc({ code });
  }

  streamed(tokens: number): void {
    if (tokens > 0) this.tokens.inc(tokens);
  }
}

export interface MetricsServer {
  /** host:port it listens on. */
  address: string;
  port: number;
  close(): Promise<void>;
}

/** Serves the registry at GET /metrics (Prometheus text format; 404 elsewhere) behind the API's own TLS and bearer token, when set. */
export async function serveMetrics(registry: Registry, bind: string, port: number,
  o: { tls?: PublicTls; authToken?: string } = {}): Promise<MetricsServer> {
  const handler = (req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' || path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('nodespeed: metrics are at GET /metrics\n');
      return;
    }
    if (o.authToken && !bearerMatches(req.headers.authorization, o.authToken)) {
      res.writeHead(401, { 'content-type': 'text/plain', 'www-authenticate': 'Bearer' }).end('authorization: a valid "Bearer <token>" is required\n');
      return;
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
      (err: unknown) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`${(err as Error).message}\n`),
    );
  };
  const server: Server = o.tls ? createHttpsServer(httpsOptions(o.tls), handler) : createServer(handler);
  // Node's 5 s default races a scraper that reuses its connection after an idle pause (it sends on a
  // socket the server is closing: "other side closed"); a minute, as the HTTP API keeps them.
  server.keepAliveTimeout = 65_000;
  const host = bind.includes(':') ? `[${bind}]` : bind;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) => reject(new Error(`--metrics-port: cannot listen on ${host}:${port}: ${err.message}`)));
    server.listen(port, bind, () => resolve());
  });
  const actual = (server.address() as AddressInfo).port;
  return {
    address: `${host}:${actual}`, port: actual,
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}
