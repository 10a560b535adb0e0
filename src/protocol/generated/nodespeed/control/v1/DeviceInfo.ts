// Original file: proto/control.proto

import type { Long } from '@grpc/proto-loader';

export interface DeviceInfoIn {
  /**
   * cpu | cuda
   */
  'kind'?: (string);
  'name'?: (string);
  'totalMemory'?: (number | string | Long);
  'freeMemory'?: (number | string | Long);
  'threads'?: (number);
}

export interface DeviceInfo {
  /**
   * cpu | cuda
   */
  'kind': (string);
  'name': (string);
  'totalMemory': (string);
  'freeMemory': (string);
  'threads': (number);
}
