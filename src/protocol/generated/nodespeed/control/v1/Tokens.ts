// Original file: proto/control.proto

import type { TokenUpdateIn as _nodespeed_control_v1_TokenUpdateIn, TokenUpdate as _nodespeed_control_v1_TokenUpdate } from '../../../nodespeed/control/v1/TokenUpdate.js';
import type { Long } from '@grpc/proto-loader';

/**
 * From the replica driver after each step: every request that produced tokens or finished.
 */
export interface TokensIn {
  'epoch'?: (number | string | Long);
  'updates'?: (_nodespeed_control_v1_TokenUpdateIn)[];
}

/**
 * From the replica driver after each step: every request that produced tokens or finished.
 */
export interface Tokens {
  'epoch': (string);
  'updates': (_nodespeed_control_v1_TokenUpdate)[];
}
