// Original file: proto/control.proto

import type { Long } from '@grpc/proto-loader';

/**
 * Abort the communicators (a peer is gone) and wait for a new assignment.
 */
export interface AbortIn {
  'epoch'?: (number | string | Long);
  'reason'?: (string);
}

/**
 * Abort the communicators (a peer is gone) and wait for a new assignment.
 */
export interface Abort {
  'epoch': (string);
  'reason': (string);
}
