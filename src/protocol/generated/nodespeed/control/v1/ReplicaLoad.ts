// Original file: proto/control.proto

import type { Long } from '@grpc/proto-loader';

export interface ReplicaLoadIn {
  'running'?: (number);
  'queued'?: (number);
  'kvBlocksTotal'?: (number);
  'kvBlocksFree'?: (number);
  'kvBlockSize'?: (number);
  'steps'?: (number | string | Long);
  'generatedTokens'?: (number | string | Long);
  'recentStepBatch'?: (number)[];
  'maxStepBatch'?: (number);
  /**
   * most micro-batches in the pipeline at once
   */
  'maxInFlight'?: (number);
  /**
   * The driver's measured step time, ms = base + per_token x tokens in the step (a least-squares fit
   * over its recent steps, newer ones weighing more): the router's TTFT estimate. Both 0 before any step.
   */
  'stepMsBase'?: (number | string);
  'stepMsPerToken'?: (number | string);
  /**
   * sequences taken out of the batch for a higher class, since start
   */
  'preemptions'?: (number);
  /**
   * Models that mix windowed and global layers: the windowed layers' own pool (0 when none).
   */
  'kvWindowBlocksTotal'?: (number);
  'kvWindowBlocksFree'?: (number);
}

export interface ReplicaLoad {
  'running': (number);
  'queued': (number);
  'kvBlocksTotal': (number);
  'kvBlocksFree': (number);
  'kvBlockSize': (number);
  'steps': (string);
  'generatedTokens': (string);
  'recentStepBatch': (number)[];
  'maxStepBatch': (number);
  /**
   * most micro-batches in the pipeline at once
   */
  'maxInFlight': (number);
  /**
   * The driver's measured step time, ms = base + per_token x tokens in the step (a least-squares fit
   * over its recent steps, newer ones weighing more): the router's TTFT estimate. Both 0 before any step.
   */
  'stepMsBase': (number);
  'stepMsPerToken': (number);
  /**
   * sequences taken out of the batch for a higher class, since start
   */
  'preemptions': (number);
  /**
   * Models that mix windowed and global layers: the windowed layers' own pool (0 when none).
   */
  'kvWindowBlocksTotal': (number);
  'kvWindowBlocksFree': (number);
}
