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
   * Models that mix windowed and global layers: the windowed layers' own pool (0 when none).
   */
  'kvWindowBlocksTotal': (number);
  'kvWindowBlocksFree': (number);
}
