// Original file: proto/control.proto

import type { Long } from '@grpc/proto-loader';

export interface ReadyIn {
  'epoch'?: (number | string | Long);
  'kvBlocks'?: (number);
  'kvBlockSize'?: (number);
  'describe'?: (string);
  /**
   * the windowed layers' own pool (models that mix windowed and global layers), else 0
   */
  'kvWindowBlocks'?: (number);
}

export interface Ready {
  'epoch': (string);
  'kvBlocks': (number);
  'kvBlockSize': (number);
  'describe': (string);
  /**
   * the windowed layers' own pool (models that mix windowed and global layers), else 0
   */
  'kvWindowBlocks': (number);
}
