// Original file: proto/control.proto

import type { Long } from '@grpc/proto-loader';

export interface ReadyIn {
  'epoch'?: (number | string | Long);
  'kvBlocks'?: (number);
  'kvBlockSize'?: (number);
  'describe'?: (string);
}

export interface Ready {
  'epoch': (string);
  'kvBlocks': (number);
  'kvBlockSize': (number);
  'describe': (string);
}
