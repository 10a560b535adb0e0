// Original file: proto/control.proto

import type { FinishReasonIn as _nodespeed_v1_FinishReasonIn, FinishReason as _nodespeed_v1_FinishReason } from '../../../nodespeed/v1/FinishReason.js';

export interface TokenUpdateIn {
  'requestId'?: (string);
  'tokenIds'?: (number)[];
  'text'?: (string);
  /**
   * index of token_ids[0] among the generated tokens
   */
  'index'?: (number);
  /**
   * UNSPECIFIED while the request runs
   */
  'finishReason'?: (_nodespeed_v1_FinishReasonIn);
  /**
   * the driver refused or failed the request
   */
  'error'?: (string);
}

export interface TokenUpdate {
  'requestId': (string);
  'tokenIds': (number)[];
  'text': (string);
  /**
   * index of token_ids[0] among the generated tokens
   */
  'index': (number);
  /**
   * UNSPECIFIED while the request runs
   */
  'finishReason': (_nodespeed_v1_FinishReason);
  /**
   * the driver refused or failed the request
   */
  'error': (string);
}
