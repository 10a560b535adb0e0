// Original file: proto/control.proto

import type { ReplicaLoadIn as _nodespeed_control_v1_ReplicaLoadIn, ReplicaLoad as _nodespeed_control_v1_ReplicaLoad } from '../../../nodespeed/control/v1/ReplicaLoad.js';
import type { Long } from '@grpc/proto-loader';

export interface HeartbeatIn {
  'epoch'?: (number | string | Long);
  'sentAtMs'?: (number | string);
  /**
   * Filled by a replica driver: its scheduler's state.
   */
  'load'?: (_nodespeed_control_v1_ReplicaLoadIn | null);
}

export interface Heartbeat {
  'epoch': (string);
  'sentAtMs': (number);
  /**
   * Filled by a replica driver: its scheduler's state.
   */
  'load': (_nodespeed_control_v1_ReplicaLoad | null);
}
