// Original file: proto/control.proto

import type { Long } from '@grpc/proto-loader';

export interface LoadProgressIn {
  'epoch'?: (number | string | Long);
  'done'?: (number | string | Long);
  'total'?: (number | string | Long);
}

export interface LoadProgress {
  'epoch': (string);
  'done': (string);
  'total': (string);
}
