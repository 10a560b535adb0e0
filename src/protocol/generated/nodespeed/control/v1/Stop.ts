// Original file: proto/control.proto

import type { Long } from '@grpc/proto-loader';

export interface StopIn {
  'epoch'?: (number | string | Long);
  'reason'?: (string);
}

export interface Stop {
  'epoch': (string);
  'reason': (string);
}
