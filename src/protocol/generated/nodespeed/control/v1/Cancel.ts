// Original file: proto/control.proto

import type { Long } from '@grpc/proto-loader';

export interface CancelIn {
  'epoch'?: (number | string | Long);
  'requestId'?: (string);
  'reason'?: (string);
}

export interface Cancel {
  'epoch': (string);
  'requestId': (string);
  'reason': (string);
}
