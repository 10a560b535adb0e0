// Original file: proto/inference.proto

import type { PrecisionIn as _nodespeed_v1_PrecisionIn, Precision as _nodespeed_v1_Precision } from '../../nodespeed/v1/Precision.js';

/**
 * One replica group (`launch --config`: the deployment file's `groups`; without one: "default").
 */
export interface GroupStatusIn {
  'name'?: (string);
  /**
   * cuda | cpu
   */
  'device'?: (string);
  /**
   * What its replicas compute with: the group's precision (weights) and KV cache dtype, resolved
   * against the checkpoint (docs/QUANTIZATION.md).
   */
  'precision'?: (_nodespeed_v1_PrecisionIn | null);
  /**
   * the layout it was launched with
   */
  'tp'?: (number);
  'pp'?: (number);
  /**
   * CPU threads per worker; 0: the backend decides
   */
  'threads'?: (number);
  /**
   * ReplicaStatus ids
   */
  'replicas'?: (number)[];
  /**
   * most sequences in one replica's batch
   */
  'maxSeqs'?: (number);
}

/**
 * One replica group (`launch --config`: the deployment file's `groups`; without one: "default").
 */
export interface GroupStatus {
  'name': (string);
  /**
   * cuda | cpu
   */
  'device': (string);
  /**
   * What its replicas compute with: the group's precision (weights) and KV cache dtype, resolved
   * against the checkpoint (docs/QUANTIZATION.md).
   */
  'precision': (_nodespeed_v1_Precision | null);
  /**
   * the layout it was launched with
   */
  'tp': (number);
  'pp': (number);
  /**
   * CPU threads per worker; 0: the backend decides
   */
  'threads': (number);
  /**
   * ReplicaStatus ids
   */
  'replicas': (number)[];
  /**
   * most sequences in one replica's batch
   */
  'maxSeqs': (number);
}
