// Original file: proto/control.proto

import type { Long } from '@grpc/proto-loader';

export interface CommPeersIn {
  'epoch'?: (number | string | Long);
  'group'?: (string);
  'payloads'?: (Buffer | Uint8Array | string)[];
}

export interface CommPeers {
  'epoch': (string);
  'group': (string);
  'payloads': (Buffer)[];
}
