// The coordinator, inside `nodespeed launch`: two gRPC servers on two ports. The public one carries
// the API (nodespeed.v1.Inference), grpc.health.v1 and server reflection, on --bind. The control
// plane (nodespeed.control.v1.Control: the workers' streams) has a port of its own on the address the
// workers dial, with mutual TLS against the job's CA (launcher/pki.ts), so nothing but this job's
// workers can reach it; beside it, the liveness responder workers ask before giving up on a silent
// coordinator (coordinator/liveness.ts).
import * as grpc from '@grpc/grpc-js';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation } from 'grpc-health-check';

import type { TlsIdentity } from '../protocol/job-secrets.js';
import { controlChannelOptions } from '../protocol/limits.js';
import type { RequestLimits } from '../protocol/limits.js';
import {
  CONTROL_SERVICE, INFERENCE_SERVICE, controlPackageDefinition, inferencePackageDefinition, serviceDefinition,
} from '../protocol/proto.js';
import { RequestStatus } from '../protocol/lifecycle.js';
import { enumNames, tokensFirstDeserializer } from '../protocol/tokens-decode.js';
import { InferenceApi, limitedDeserializer } from './api.js';
import { grpcServerCredentials } from './public-auth.js';
import type { PublicTls } from './public-auth.js';
import { Failover } from './failover.js';
import { LivenessResponder } from './liveness.js';
import type { ApiOptions } from './api.js';
import { ClassTable, defaultClasses } from './classes.js';
import type { ClassSpec } from './classes.js';
import type { Layout } from './layout.js';
import { Membership } from './membership.js';
import { CoordinatorService } from './http/service.js';
import { serveHttpApi } from './http/server.js';
import type { HttpApi } from './http/server.js';
import { CoordinatorMetrics, serveMetrics } from './metrics.js';
import type { MetricsServer } from './metrics.js';
import type { MembershipOptions, Replica } from './membership.js';
import { RequestStore } from './requests.js';
import { Router } from './router.js';
import type { ShrinkContext } from './shrink.js';

export interface CoordinatorOptions extends MembershipOptions {
  layout: Layout;
  model: ApiOptions['model'];
  authToken?: string;
  /** Address to bind, e.g. 0.0.0.0 or 127.0.0.1. */
  bind: string;
  /** 0 picks a free port. */
  port: number;
  /** A request that waits this long for a serving replica (after a failure) fails UNAVAILABLE. */
  requestTimeoutMs: number;
  /** Serve Prometheus metrics over HTTP on this port of `bind` (0: any free port); absent: off. */
  metricsPort?: number;
  /** Serve the OpenAI-compatible HTTP API on this port of `bind` (0: any free port); absent: off. */
  httpPort?: number;
  /** A restarted rank that has not joined after this long fails its replica's re-form attempt (0: no limit). */
  joinTimeoutMs?: number;
  /** Lets failover re-form a replica with a smaller layout (recovery (c)); absent: such a replica is retired. */
  shrink?: ShrinkContext;
  /** The request classes; absent: realtime, standard and batch over every group (classes.ts). */
  classes?: ClassSpec[];
  /** The control plane: its address (the one workers dial), port (0: any free one) and certificate. */
  control: ControlPlaneOptions;
  /** What one request may ask for (protocol/limits.ts). */
  limits: RequestLimits;
  /** TLS of the public API and /metrics (--tls-cert, --tls-key, --tls-client-ca); absent: plaintext. */
  tls?: PublicTls;
  /** A request in flight through this many replica losses is failed instead of replayed (default 2). */
  quarantineAfter?: number;
}

export interface ControlPlaneOptions {
  host: string;
  port: number;
  /** The coordinator's certificate and key, and the job CA every worker's certificate must chain to. */
  identity: TlsIdentity;
  /** The job's data-plane key: the liveness responder answers with it. */
  key: Uint8Array;
}

// grpc-js's channelz (its call, message and socket counters, read only through a channelz service,
// which this server does not offer) costs each call its trackers and each message a clock read.
const NO_CHANNELZ = { 'grpc.enable_channelz': 0 } as const;

export class Coordinator {
  readonly members: Membership;
  readonly store = new RequestStore();
  readonly router: Router;
  readonly api: InferenceApi;
  readonly failover: Failover;
  /** Only with metricsPort: nothing is counted when nobody can scrape it. */
  readonly metrics: CoordinatorMetrics | undefined;
  metricsServer: MetricsServer | undefined;
  httpApi: HttpApi | undefined;
  readonly health = new HealthImplementation({ '': 'NOT_SERVING', [INFERENCE_SERVICE]: 'NOT_SERVING' });
  private readonly server: grpc.Server;
  // Both ends of every control stream take and send messages up to the same bound (protocol/limits.ts).
  private readonly controlServer = new grpc.Server({ 'grpc.keepalive_permit_without_calls': 1, ...NO_CHANNELZ, ...controlChannelOptions() });
  private liveness: LivenessResponder | undefined;
  private state = 'starting';
  port = 0;
  controlPort = 0;

  constructor(readonly o: CoordinatorOptions) {
    // The transport takes messages up to twice --max-request-bytes, so that a request between the
    // two is answered INVALID_ARGUMENT naming the limit (without being decoded); beyond that gRPC
    // itself refuses it RESOURCE_EXHAUSTED from its length prefix, before reading it.
    this.server = new grpc.Server({ 'grpc.keepalive_permit_without_calls': 1, 'grpc.max_receive_message_length': 2 * o.limits.requestBytes, ...NO_CHANNELZ });
    this.members = new Membership(o.layout, { ...o, slotCertificates: true, livenessPort: () => this.livenessPort });
    const groups = o.layout.groups.map((g) => g.name);
    const classes = new ClassTable(o.classes ?? defaultClasses(groups), groups);
    this.router = new Router(this.members, this.store, classes, { log: o.log });
    const failover = new Failover(this.members, this.store, this.router, { requestTimeoutMs: o.requestTimeoutMs, joinTimeoutMs: o.joinTimeoutMs ?? 0, log: o.log,
      quarantineAfter: o.quarantineAfter ?? 2,
      ...(o.shrink ? { shrink: o.shrink } : {}) });
    this.failover = failover;
    this.metrics = o.metricsPort === undefined ? undefined : new CoordinatorMetrics({ members: this.members, store: this.store, failover, router: this.router });
    this.api = new InferenceApi(this.members, this.store, this.router, {
      model: o.model, failover: () => ({ ...failover.status() }), maxQueue: o.maxQueue, limits: o.limits, ...(o.authToken ? { authToken: o.authToken } : {}), state: () => this.state,
      ...(this.metrics ? { metrics: this.metrics } : {}),
    });
    this.members.on('replica-serving', () => this.updateHealth());
    this.members.on('replica-lost', () => this.updateHealth());
    this.failover.on('retired', () => this.updateHealth());
  }

  private updateHealth(): void {
    const serving = this.members.replicas.some((r) => r.state === 'serving');
    if (this.state !== 'stopping') this.state = serving ? 'serving' : 'starting';
    const s = serving ? 'SERVING' : 'NOT_SERVING';
    this.health.setStatus('', s);
    this.health.setStatus(INFERENCE_SERVICE, s);
  }

  async start(): Promise<number> {
    const inference = inferencePackageDefinition();
    const control = controlPackageDefinition();
    // Generate and Complete refuse what exceeds --max-request-bytes before decoding it.
    const service = { ...serviceDefinition(inference, INFERENCE_SERVICE) };
    for (const method of ['Generate', 'Complete'])
      service[method] = { ...service[method]!, requestDeserialize: limitedDeserializer(service[method]!.requestDeserialize, this.o.limits.requestBytes) };
    this.server.addService(service, this.api.handlers());
    this.health.addToServer(this.server);
    // Reflection describes the public API only; the control plane is internal.
    new ReflectionService(inference).addToServer(this.server);
    // The workers' token reports (most of what the control plane carries under load) are decoded
    // straight into plain objects; every other message by the generic decoder.
    const controlService = { ...serviceDefinition(control, CONTROL_SERVICE) };
    controlService.Connect = { ...controlService.Connect!,
      requestDeserialize: tokensFirstDeserializer(controlService.Connect!.requestDeserialize, enumNames(control, 'nodespeed.v1.FinishReason')) };
    this.controlServer.addService(controlService, {
      Connect: (call: Parameters<Membership['handleStream']>[0]) => this.members.handleStream(call),
    });
    const c = this.o.control;
    const id = c.identity;
    const controlCredentials = grpc.ServerCredentials.createSsl(Buffer.from(id.ca), [{ private_key: Buffer.from(id.key), cert_chain: Buffer.from(id.cert) }], true);
    this.controlPort = await bind(this.controlServer, c.host, c.port, controlCredentials, 'the control plane');
    try {
      this.liveness = await LivenessResponder.start(c.host, c.key);
      this.port = await bind(this.server, this.o.bind, this.o.port, grpcServerCredentials(this.o.tls), 'the API');
    } catch (err) {
      this.controlServer.forceShutdown();
      await this.liveness?.stop();
      throw err;
    }
    if (this.metrics) {
      try {
        this.metricsServer = await serveMetrics(this.metrics.registry, this.o.bind, this.o.metricsPort!,
          { ...(this.o.tls ? { tls: this.o.tls } : {}), ...(this.o.authToken ? { authToken: this.o.authToken } : {}) });
      } catch (err) {
        this.server.forceShutdown();
        this.controlServer.forceShutdown();
        await this.liveness?.stop();
        throw err;
      }
      this.o.log(`coordinator: Prometheus metrics at ${this.o.tls ? 'https' : 'http'}://${this.metricsServer.address}/metrics`);
    }
    if (this.o.httpPort !== undefined) {
      const registry = this.metrics?.registry;
      const openai = new CoordinatorService(this.api,
        registry ? async () => ({ contentType: registry.contentType, body: await registry.metrics() }) : undefined);
      try {
        // The same TLS, token and request-size limit as the gRPC API (public-auth.ts, protocol/limits.ts).
        this.httpApi = await serveHttpApi(openai, { bind: this.o.bind, port: this.o.httpPort, maxBodyBytes: this.o.limits.requestBytes,
          ...(this.o.tls ? { tls: this.o.tls } : {}), ...(this.o.authToken ? { authToken: this.o.authToken } : {}) });
      } catch (err) {
        this.server.forceShutdown();
        this.controlServer.forceShutdown();
        await this.liveness?.stop();
        await this.metricsServer?.close();
        throw new Error(`--http-port ${this.o.httpPort}: cannot listen on ${this.o.bind}:${this.o.httpPort} (${(err as Error).message})`);
      }
      this.o.log(`coordinator: OpenAI-compatible HTTP API at ${this.o.tls ? 'https' : 'http'}://${this.httpApi.address}/v1`);
    }
    return this.port;
  }

  /** Resolves when every replica serves; rejects when one is lost before that. */
  whenAllServing(): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (this.members.replicas.every((r) => r.state === 'serving')) {
          cleanup();
          resolve();
        }
      };
      const lost = (r: Replica, reason: string) => {
        cleanup();
        reject(new Error(`replica ${r.id} failed while starting: ${reason}`));
      };
      const cleanup = () => {
        this.members.off('replica-serving', check);
        this.members.off('replica-lost', lost);
      };
      this.members.on('replica-serving', check);
      this.members.on('replica-lost', lost);
      check();
    });
  }

  /** Stops the workers (Stop message), fails what is still in flight, closes the server. */
  async stop(reason = 'shutting down'): Promise<void> {
    this.state = 'stopping';
    this.failover.dispose();
    for (const rec of [...this.store.values()])
      this.store.finish(rec, { status: RequestStatus.FAILED, code: grpc.status.UNAVAILABLE, message: `server ${reason}` });
    this.members.stopAll(reason);
    await this.metricsServer?.close();
    await this.httpApi?.close();
    await Promise.all([shutdown(this.server), shutdown(this.controlServer), this.liveness?.stop()]);
  }

  /** The port workers' liveness probes go to (on the control plane's address). */
  get livenessPort(): number {
    return this.liveness?.port ?? 0;
  }
}

function bind(server: grpc.Server, host: string, port: number, credentials: grpc.ServerCredentials, what: string): Promise<number> {
  const h = host.includes(':') ? `[${host}]` : host;
  return new Promise<number>((resolve, reject) =>
    server.bindAsync(`${h}:${port}`, credentials, (err, bound) => {
      if (err) reject(new Error(`cannot listen on ${h}:${port} for ${what}: ${err.message}`));
      else resolve(bound);
    }));
}

function shutdown(server: grpc.Server): Promise<void> {
  return new Promise<void>((resolve) => {
    const t = setTimeout(() => {
      server.forceShutdown();
      resolve();
    }, 2000);
    server.tryShutdown(() => {
      clearTimeout(t);
      resolve();
    });
  });
}
