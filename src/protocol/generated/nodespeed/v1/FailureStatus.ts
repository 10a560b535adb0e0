// Original file: proto/inference.proto

import type { Long } from '@grpc/proto-loader';

/**
 * One lost worker and what failover did about it.
 */
export interface FailureStatusIn {
  'rank'?: (number);
  'host'?: (string);
  /**
   * the lost process
   */
  'pid'?: (number);
  'replica'?: (number);
  /**
   * e.g. "control stream closed", "no heartbeat for 5003 ms", "process exited (SIGKILL)"
   */
  'cause'?: (string);
  /**
   * when it was declared lost
   */
  'atUnixMs'?: (number | string);
  /**
   * replacing | spare (a spare took the rank) | respawning | respawned | shrinking | shrunk (a
   * smaller layout on the ranks that could be restarted: ReplicaStatus tp/pp/ranks) | retired
   */
  'recovery'?: (string);
  /**
   * loss to serving again; 0 until recovered
   */
  'recoveryMs'?: (number | string);
  /**
   * the membership epoch the replica was re-formed in
   */
  'generation'?: (number | string | Long);
  /**
   * in-flight requests re-queued from the lost replica
   */
  'replayedRequests'?: (number);
  /**
   * tokens those requests had already streamed
   */
  'replayedTokens'?: (number);
}

/**
 * One lost worker and what failover did about it.
 */
export interface FailureStatus {
  'rank': (number);
  'host': (string);
  /**
   * the lost process
   */
  'pid': (number);
  'replica': (number);
  /**
   * e.g. "control stream closed", "no heartbeat for 5003 ms", "process exited (SIGKILL)"
   */
  'cause': (string);
  /**
   * when it was declared lost
   */
  'atUnixMs': (number);
  /**
   * replacing | spare (a spare took the rank) | respawning | respawned | shrinking | shrunk (a
   * smaller layout on the ranks that could be restarted: ReplicaStatus tp/pp/ranks) | retired
   */
  'recovery': (string);
  /**
   * loss to serving again; 0 until recovered
   */
  'recoveryMs': (number);
  /**
   * the membership epoch the replica was re-formed in
   */
  'generation': (string);
  /**
   * in-flight requests re-queued from the lost replica
   */
  'replayedRequests': (number);
  /**
   * tokens those requests had already streamed
   */
  'replayedTokens': (number);
}
