// Original file: proto/control.proto

import type { Long } from '@grpc/proto-loader';

/**
 * Everything the replica has to serve: sent to every rank when all of them are ready.
 */
export interface StartIn {
  'epoch'?: (number | string | Long);
  /**
   * the smallest cache of the replica's ranks
   */
  'kvBlocks'?: (number);
  'kvBlockSize'?: (number);
  /**
   * the smallest windowed layers' pool of the replica's ranks (0: none)
   */
  'kvWindowBlocks'?: (number);
}

/**
 * Everything the replica has to serve: sent to every rank when all of them are ready.
 */
export interface Start {
  'epoch': (string);
  /**
   * the smallest cache of the replica's ranks
   */
  'kvBlocks': (number);
  'kvBlockSize': (number);
  /**
   * the smallest windowed layers' pool of the replica's ranks (0: none)
   */
  'kvWindowBlocks': (number);
}
