// Original file: proto/inference.proto

import type { PrecisionIn as _nodespeed_v1_PrecisionIn, Precision as _nodespeed_v1_Precision } from '../../nodespeed/v1/Precision.js';
import type { Long } from '@grpc/proto-loader';

export interface ReplicaStatusIn {
  'id'?: (number);
  /**
   * forming | loading | serving | lost
   */
  'state'?: (string);
  /**
   * sequences in the replica's batch
   */
  'running'?: (number);
  /**
   * routed to the replica, not admitted yet (waiting for KV blocks)
   */
  'queued'?: (number);
  'kvBlocksTotal'?: (number);
  'kvBlocksFree'?: (number);
  'kvBlockSize'?: (number);
  'steps'?: (number | string | Long);
  'generatedTokens'?: (number | string | Long);
  /**
   * Sequences in each of the replica's last steps (oldest first): continuous batching at work.
   */
  'recentStepBatch'?: (number)[];
  'maxStepBatch'?: (number);
  'ranks'?: (number)[];
  /**
   * Most micro-batches the replica's pipeline held at once (pp > 1 keeps stages busy).
   */
  'maxInFlight'?: (number);
  /**
   * Requests the coordinator has routed to this replica and not finished, counted by the
   * coordinator itself (running and queued above come with the driver's heartbeat, a beat late).
   */
  'requests'?: (number);
  /**
   * The replica's own layout: ClusterStatusResponse tp/pp, or a smaller one after failover
   * re-formed it on the ranks it could restart (FailureStatus.recovery shrunk); `ranks` lists them.
   */
  'tp'?: (number);
  'pp'?: (number);
  /**
   * The numbers the replica computes with (docs/QUANTIZATION.md).
   */
  'precision'?: (_nodespeed_v1_PrecisionIn | null);
  /**
   * Models that mix windowed and global layers (Gemma 2/3): the windowed layers keep their KV in a
   * pool of their own, a ring of blocks per sequence; kv_blocks_* above count the global layers'.
   */
  'kvWindowBlocksTotal'?: (number);
  'kvWindowBlocksFree'?: (number);
  /**
   * its replica group (GroupStatus.name)
   */
  'group'?: (string);
  /**
   * sequences its scheduler took out of the batch for a higher class
   */
  'preemptions'?: (number);
  /**
   * measured time of one step at its current batch; 0 before any step
   */
  'stepMs'?: (number | string);
}

export interface ReplicaStatus {
  'id': (number);
  /**
   * forming | loading | serving | lost
   */
  'state': (string);
  /**
   * sequences in the replica's batch
   */
  'running': (number);
  /**
   * routed to the replica, not admitted yet (waiting for KV blocks)
   */
  'queued': (number);
  'kvBlocksTotal': (number);
  'kvBlocksFree': (number);
  'kvBlockSize': (number);
  'steps': (string);
  'generatedTokens': (string);
  /**
   * Sequences in each of the replica's last steps (oldest first): continuous batching at work.
   */
  'recentStepBatch': (number)[];
  'maxStepBatch': (number);
  'ranks': (number)[];
  /**
   * Most micro-batches the replica's pipeline held at once (pp > 1 keeps stages busy).
   */
  'maxInFlight': (number);
  /**
   * Requests the coordinator has routed to this replica and not finished, counted by the
   * coordinator itself (running and queued above come with the driver's heartbeat, a beat late).
   */
  'requests': (number);
  /**
   * The replica's own layout: ClusterStatusResponse tp/pp, or a smaller one after failover
   * re-formed it on the ranks it could restart (FailureStatus.recovery shrunk); `ranks` lists them.
   */
  'tp': (number);
  'pp': (number);
  /**
   * The numbers the replica computes with (docs/QUANTIZATION.md).
   */
  'precision': (_nodespeed_v1_Precision | null);
  /**
   * Models that mix windowed and global layers (Gemma 2/3): the windowed layers keep their KV in a
   * pool of their own, a ring of blocks per sequence; kv_blocks_* above count the global layers'.
   */
  'kvWindowBlocksTotal': (number);
  'kvWindowBlocksFree': (number);
  /**
   * its replica group (GroupStatus.name)
   */
  'group': (string);
  /**
   * sequences its scheduler took out of the batch for a higher class
   */
  'preemptions': (number);
  /**
   * measured time of one step at its current batch; 0 before any step
   */
  'stepMs': (number);
}
