// Original file: proto/control.proto

import type { Long } from '@grpc/proto-loader';

export interface WorkerErrorIn {
  'epoch'?: (number | string | Long);
  'message'?: (string);
  'fatal'?: (boolean);
}

export interface WorkerError {
  'epoch': (string);
  'message': (string);
  'fatal': (boolean);
}
