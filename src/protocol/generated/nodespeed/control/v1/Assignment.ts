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
   * The worker gives up on a coordinator that sends nothing (not even a heartbeat) for this long,
   * unless the coordinator's liveness responder (on the control address, this port) still answers
   * its challenge: then only the coordinator's event loop is late, and the worker waits.
   */
  'heartbeatTimeoutMs'?: (number | string);
  'livenessPort'?: (number);
  /**
   * Encrypt the replica's TCP data plane between hosts (--encrypt-data-plane).
   */
  'encryptDataPlane'?: (boolean);
  /**
   * none | int8 | fp8 (a float checkpoint's linears quantized at load)
   */
  'quantize'?: (string);
  /**
   * auto | fp8
   */
  'kvCacheDtype'?: (string);
  /**
   * driver: most sequences in one step's batch (0: no limit)
   */
  'maxSeqs'?: (number);
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
   * The worker gives up on a coordinator that sends nothing (not even a heartbeat) for this long,
   * unless the coordinator's liveness responder (on the control address, this port) still answers
   * its challenge: then only the coordinator's event loop is late, and the worker waits.
   */
  'heartbeatTimeoutMs': (number);
  'livenessPort': (number);
  /**
   * Encrypt the replica's TCP data plane between hosts (--encrypt-data-plane).
   */
  'encryptDataPlane': (boolean);
  /**
   * none | int8 | fp8 (a float checkpoint's linears quantized at load)
   */
  'quantize': (string);
  /**
   * auto | fp8
   */
  'kvCacheDtype': (string);
  /**
   * driver: most sequences in one step's batch (0: no limit)
   */
  'maxSeqs': (number);
}
