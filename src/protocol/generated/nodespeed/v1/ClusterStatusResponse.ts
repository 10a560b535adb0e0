// Original file: proto/inference.proto

import type { ReplicaStatusIn as _nodespeed_v1_ReplicaStatusIn, ReplicaStatus as _nodespeed_v1_ReplicaStatus } from '../../nodespeed/v1/ReplicaStatus.js';
import type { WorkerStatusIn as _nodespeed_v1_WorkerStatusIn, WorkerStatus as _nodespeed_v1_WorkerStatus } from '../../nodespeed/v1/WorkerStatus.js';
import type { FailureStatusIn as _nodespeed_v1_FailureStatusIn, FailureStatus as _nodespeed_v1_FailureStatus } from '../../nodespeed/v1/FailureStatus.js';
import type { FailoverCountersIn as _nodespeed_v1_FailoverCountersIn, FailoverCounters as _nodespeed_v1_FailoverCounters } from '../../nodespeed/v1/FailoverCounters.js';
import type { QuarantinedRequestIn as _nodespeed_v1_QuarantinedRequestIn, QuarantinedRequest as _nodespeed_v1_QuarantinedRequest } from '../../nodespeed/v1/QuarantinedRequest.js';
import type { Long } from '@grpc/proto-loader';

export interface ClusterStatusResponseIn {
  'model'?: (string);
  /**
   * the layout launched; a replica re-formed smaller shows its own (ReplicaStatus tp/pp)
   */
  'tp'?: (number);
  'pp'?: (number);
  'replicaCount'?: (number);
  /**
   * the membership epoch: moves on each time a replica is re-formed
   */
  'generation'?: (number | string | Long);
  'replicas'?: (_nodespeed_v1_ReplicaStatusIn)[];
  'workers'?: (_nodespeed_v1_WorkerStatusIn)[];
  'hosts'?: (string)[];
  /**
   * accepted, waiting for a replica
   */
  'pendingRequests'?: (number);
  /**
   * accepted and not finished
   */
  'activeRequests'?: (number);
  /**
   * starting | serving | stopping
   */
  'state'?: (string);
  /**
   * oldest first
   */
  'failures'?: (_nodespeed_v1_FailureStatusIn)[];
  'failover'?: (_nodespeed_v1_FailoverCountersIn | null);
  /**
   * spare workers joined and waiting to take a lost rank (--spares)
   */
  'spares'?: (number);
  /**
   * oldest first (the last 100)
   */
  'quarantined'?: (_nodespeed_v1_QuarantinedRequestIn)[];
}

export interface ClusterStatusResponse {
  'model': (string);
  /**
   * the layout launched; a replica re-formed smaller shows its own (ReplicaStatus tp/pp)
   */
  'tp': (number);
  'pp': (number);
  'replicaCount': (number);
  /**
   * the membership epoch: moves on each time a replica is re-formed
   */
  'generation': (string);
  'replicas': (_nodespeed_v1_ReplicaStatus)[];
  'workers': (_nodespeed_v1_WorkerStatus)[];
  'hosts': (string)[];
  /**
   * accepted, waiting for a replica
   */
  'pendingRequests': (number);
  /**
   * accepted and not finished
   */
  'activeRequests': (number);
  /**
   * starting | serving | stopping
   */
  'state': (string);
  /**
   * oldest first
   */
  'failures': (_nodespeed_v1_FailureStatus)[];
  'failover': (_nodespeed_v1_FailoverCounters | null);
  /**
   * spare workers joined and waiting to take a lost rank (--spares)
   */
  'spares': (number);
  /**
   * oldest first (the last 100)
   */
  'quarantined': (_nodespeed_v1_QuarantinedRequest)[];
}
