// Original file: proto/inference.proto

import type { LatencyPercentilesIn as _nodespeed_v1_LatencyPercentilesIn, LatencyPercentiles as _nodespeed_v1_LatencyPercentiles } from '../../nodespeed/v1/LatencyPercentiles.js';
import type { Long } from '@grpc/proto-loader';

/**
 * One request class: where it may run, its target, and what happened to its requests since launch.
 */
export interface ClassStatusIn {
  'name'?: (string);
  /**
   * the integer its name stands for; its range runs to the next class's
   */
  'priority'?: (number);
  /**
   * the groups it may use, in order of preference
   */
  'groups'?: (string)[];
  /**
   * 0: none
   */
  'ttftP99TargetMs'?: (number | string);
  /**
   * accepted, no token yet (waiting for a replica or for admission)
   */
  'waiting'?: (number);
  /**
   * streaming
   */
  'running'?: (number);
  /**
   * out of their replica's batch now, to resume by recompute
   */
  'preempted'?: (number);
  /**
   * routings to a replica (a replay after a failover counts again)
   */
  'routed'?: (number | string | Long);
  /**
   * of those, to a group other than the class's first
   */
  'overflowed'?: (number | string | Long);
  /**
   * RESOURCE_EXHAUSTED: no allowed replica could take it
   */
  'rejected'?: (number | string | Long);
  /**
   * times one of its requests was preempted
   */
  'preemptions'?: (number | string | Long);
  'routedByGroup'?: ({[key: string]: number | string | Long});
  /**
   * accepted to first token
   */
  'ttft'?: (_nodespeed_v1_LatencyPercentilesIn | null);
  /**
   * between two tokens of one stream
   */
  'itl'?: (_nodespeed_v1_LatencyPercentilesIn | null);
  'finished'?: (number | string | Long);
}

/**
 * One request class: where it may run, its target, and what happened to its requests since launch.
 */
export interface ClassStatus {
  'name': (string);
  /**
   * the integer its name stands for; its range runs to the next class's
   */
  'priority': (number);
  /**
   * the groups it may use, in order of preference
   */
  'groups': (string)[];
  /**
   * 0: none
   */
  'ttftP99TargetMs': (number);
  /**
   * accepted, no token yet (waiting for a replica or for admission)
   */
  'waiting': (number);
  /**
   * streaming
   */
  'running': (number);
  /**
   * out of their replica's batch now, to resume by recompute
   */
  'preempted': (number);
  /**
   * routings to a replica (a replay after a failover counts again)
   */
  'routed': (string);
  /**
   * of those, to a group other than the class's first
   */
  'overflowed': (string);
  /**
   * RESOURCE_EXHAUSTED: no allowed replica could take it
   */
  'rejected': (string);
  /**
   * times one of its requests was preempted
   */
  'preemptions': (string);
  'routedByGroup': ({[key: string]: string});
  /**
   * accepted to first token
   */
  'ttft': (_nodespeed_v1_LatencyPercentiles | null);
  /**
   * between two tokens of one stream
   */
  'itl': (_nodespeed_v1_LatencyPercentiles | null);
  'finished': (string);
}
