// Original file: proto/control.proto

import type { FinishReasonIn as _nodespeed_v1_FinishReasonIn, FinishReason as _nodespeed_v1_FinishReason } from '../../../nodespeed/v1/FinishReason.js';
import type { TokenLogprobsIn as _nodespeed_v1_TokenLogprobsIn, TokenLogprobs as _nodespeed_v1_TokenLogprobs } from '../../../nodespeed/v1/TokenLogprobs.js';

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
  /**
   * one per token_ids entry when the request asked
   */
  'logprobs'?: (_nodespeed_v1_TokenLogprobsIn)[];
  /**
   * Taken out of the batch for a higher class (no tokens in this update): it resumes by recomputing
   * its prompt and the tokens already sent, and continues at the next index.
   */
  'preempted'?: (boolean);
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
  /**
   * one per token_ids entry when the request asked
   */
  'logprobs': (_nodespeed_v1_TokenLogprobs)[];
  /**
   * Taken out of the batch for a higher class (no tokens in this update): it resumes by recomputing
   * its prompt and the tokens already sent, and continues at the next index.
   */
  'preempted': (boolean);
}
