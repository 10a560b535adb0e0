// Original file: proto/control.proto

import type { PeerIn as _nodespeed_control_v1_PeerIn, Peer as _nodespeed_control_v1_Peer } from '../../../nodespeed/control/v1/Peer.js';
import type { Long } from '@grpc/proto-loader';

export interface AssignmentIn {
  'epoch'?: (number | string | Long);
  'rank'?: (number);
  'replica'?: (number);
  'stage'?: (number);
  'tpRank'?: (number);
  'tp'?: (number);
  'pp'?: (number);
  'layerStart'?: (number);
  'layerEnd'?: (number);
  'modelDir'?: (string);
  /**
   * auto | f32 | bf16 | f16
   */
  'dtype'?: (string);
  /**
   * cpu | cuda
   */
  'device'?: (string);
  'deviceIndex'?: (number);
  /**
   * The ranks of this worker's replica, in (stage, tp_rank) order: replica-local rank i is ranks[i].
   */
  'peers'?: (_nodespeed_control_v1_PeerIn)[];
  /**
   * 0 = the backend sizes its cache
   */
  'kvBlocks'?: (number);
  /**
   * 0 = the backend decides
   */
  'threads'?: (number);
  'heartbeatIntervalMs'?: (number | string);
  /**
   * driver: most tokens per step (long prefills are chunked)
   */
  'maxBatchTokens'?: (number);
  /**
   * driver: most requests waiting for KV blocks
   */
  'maxQueue'?: (number);
  /**
   * The worker gives up on a coordinator that sends nothing (not even a heartbeat) for this long.
   */
  'heartbeatTimeoutMs'?: (number | string);
}

export interface Assignment {
  'epoch': (string);
  'rank': (number);
  'replica': (number);
  'stage': (number);
  'tpRank': (number);
  'tp': (number);
  'pp': (number);
  'layerStart': (number);
  'layerEnd': (number);
  'modelDir': (string);
  /**
   * auto | f32 | bf16 | f16
   */
  'dtype': (string);
  /**
   * cpu | cuda
   */
  'device': (string);
  'deviceIndex': (number);
  /**
   * The ranks of this worker's replica, in (stage, tp_rank) order: replica-local rank i is ranks[i].
   */
  'peers': (_nodespeed_control_v1_Peer)[];
  /**
   * 0 = the backend sizes its cache
   */
  'kvBlocks': (number);
  /**
   * 0 = the backend decides
   */
  'threads': (number);
  'heartbeatIntervalMs': (number);
  /**
   * driver: most tokens per step (long prefills are chunked)
   */
  'maxBatchTokens': (number);
  /**
   * driver: most requests waiting for KV blocks
   */
  'maxQueue': (number);
  /**
   * The worker gives up on a coordinator that sends nothing (not even a heartbeat) for this long.
   */
  'heartbeatTimeoutMs': (number);
}
