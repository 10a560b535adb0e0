// The coordinator: one gRPC server carrying the public API (nodespeed.v1.Inference), the workers'
// control streams (nodespeed.control.v1.Control), grpc.health.v1 and server reflection. Runs inside
// `nodespeed launch`.
import * as grpc from '@grpc/grpc-js';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation } from 'grpc-health-check';

import {
  CONTROL_SERVICE, INFERENCE_SERVICE, controlPackageDefinition, inferencePackageDefinition, serviceDefinition,
} from '../protocol/proto.js';
import { RequestStatus } from '../protocol/lifecycle.js';
import { InferenceApi } from './api.js';
import { Failover } from './failover.js';
import type { ApiOptions } from './api.js';
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
}

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
  private readonly server = new grpc.Server({ 'grpc.keepalive_permit_without_calls': 1 });
  private state = 'starting';
  port = 0;

  constructor(readonly o: CoordinatorOptions) {
    this.members = new Membership(o.layout, o);
    this.router = new Router(this.members, this.store, o.log);
    const failover = new Failover(this.members, this.store, this.router, { requestTimeoutMs: o.requestTimeoutMs, joinTimeoutMs: o.joinTimeoutMs ?? 0, log: o.log,
      ...(o.shrink ? { shrink: o.shrink } : {}) });
    this.failover = failover;
    this.metrics = o.metricsPort === undefined ? undefined : new CoordinatorMetrics({ members: this.members, store: this.store, failover });
    this.api = new InferenceApi(this.members, this.store, this.router, {
      model: o.model, failover: () => ({ ...failover.status() }), maxQueue: o.maxQueue, ...(o.authToken ? { authToken: o.authToken } : {}), state: () => this.state,
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
    this.server.addService(serviceDefinition(inference, INFERENCE_SERVICE), this.api.handlers());
    this.server.addService(serviceDefinition(control, CONTROL_SERVICE), {
      Connect: (call: Parameters<Membership['handleStream']>[0]) => this.members.handleStream(call),
    });
    this.health.addToServer(this.server);
    // Reflection describes the public API only; the control plane is internal.
    new ReflectionService(inference).addToServer(this.server);
    const host = this.o.bind.includes(':') ? `[${this.o.bind}]` : this.o.bind;
    this.port = await new Promise<number>((resolve, reject) =>
      this.server.bindAsync(`${host}:${this.o.port}`, grpc.ServerCredentials.createInsecure(), (err, port) => {
        if (err) reject(new Error(`cannot listen on ${host}:${this.o.port}: ${err.message}`));
        else resolve(port);
      }));
    if (this.metrics) {
      try {
        this.metricsServer = await serveMetrics(this.metrics.registry, this.o.bind, this.o.metricsPort!);
      } catch (err) {
        this.server.forceShutdown();
        throw err;
      }
      this.o.log(`coordinator: Prometheus metrics at http://${this.metricsServer.address}/metrics`);
    }
    if (this.o.httpPort !== undefined) {
      const registry = this.metrics?.registry;
      const service = new CoordinatorService(this.api, { decode: (ids) => this.o.model.decode?.(ids) ?? '' },
        registry ? async () => ({ contentType: registry.contentType, body: await registry.metrics() }) : undefined);
      try {
        this.httpApi = await serveHttpApi(service, { bind: this.o.bind, port: this.o.httpPort, ...(this.o.authToken ? { authToken: this.o.authToken } : {}) });
      } catch (err) {
        this.server.forceShutdown();
        await this.metricsServer?.close();
        throw new Error(`--http-port ${this.o.httpPort}: cannot listen on ${this.o.bind}:${this.o.httpPort} (${(err as Error).message})`);
      }
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
    await new Promise<void>((resolve) => {
      const t = setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, 2000);
      this.server.tryShutdown(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }
}
