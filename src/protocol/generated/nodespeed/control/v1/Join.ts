// Original file: proto/control.proto

import type { DeviceInfoIn as _nodespeed_control_v1_DeviceInfoIn, DeviceInfo as _nodespeed_control_v1_DeviceInfo } from '../../../nodespeed/control/v1/DeviceInfo.js';

export interface JoinIn {
  /**
   * the job token (from NODESPEED_JOB_TOKEN, never on a command line; the stream itself is mutual TLS)
   */
  'token'?: (string);
  /**
   * RANK from the launcher: its slot. A spare slot (--spares) gets no Assignment
   */
  'rank'?: (number);
  /**
   * until the coordinator hands it a lost rank, which then lives in this slot
   */
  'host'?: (string);
  'pid'?: (number);
  'device'?: (_nodespeed_control_v1_DeviceInfoIn | null);
  /**
   * addresses peers can reach this worker on
   */
  'listenAddresses'?: (string)[];
}

export interface Join {
  /**
   * the job token (from NODESPEED_JOB_TOKEN, never on a command line; the stream itself is mutual TLS)
   */
  'token': (string);
  /**
   * RANK from the launcher: its slot. A spare slot (--spares) gets no Assignment
   */
  'rank': (number);
  /**
   * until the coordinator hands it a lost rank, which then lives in this slot
   */
  'host': (string);
  'pid': (number);
  'device': (_nodespeed_control_v1_DeviceInfo | null);
  /**
   * addresses peers can reach this worker on
   */
  'listenAddresses': (string)[];
}
