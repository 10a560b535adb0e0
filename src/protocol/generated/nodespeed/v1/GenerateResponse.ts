// Original file: proto/inference.proto

import type { FinishReasonIn as _nodespeed_v1_FinishReasonIn, FinishReason as _nodespeed_v1_FinishReason } from '../../nodespeed/v1/FinishReason.js';
import type { UsageIn as _nodespeed_v1_UsageIn, Usage as _nodespeed_v1_Usage } from '../../nodespeed/v1/Usage.js';
import type { TokenLogprobsIn as _nodespeed_v1_TokenLogprobsIn, TokenLogprobs as _nodespeed_v1_TokenLogprobs } from '../../nodespeed/v1/TokenLogprobs.js';

export interface GenerateResponseIn {
  'tokenIds'?: (number)[];
  /**
   * text delta
   */
  'text'?: (string);
  /**
   * index of token_ids[0] among the generated tokens
   */
  'index'?: (number);
  /**
   * set on the last message only
   */
  'finishReason'?: (_nodespeed_v1_FinishReasonIn);
  /**
   * set on the last message only
   */
  'usage'?: (_nodespeed_v1_UsageIn | null);
  'requestId'?: (string);
  /**
   * set on the last message only: the prompt as tokenized
   */
  'promptIds'?: (number)[];
  /**
   * which of the request's n sequences (0 when n is 1)
   */
  'choice'?: (number);
  /**
   * one per token_ids entry when the request asked for logprobs
   */
  'logprobs'?: (_nodespeed_v1_TokenLogprobsIn)[];
  /**
   * the replica group that produced these tokens (a failover may move a stream)
   */
  'group'?: (string);
  /**
   * and its replica
   */
  'replica'?: (number);
}

export interface GenerateResponse {
  'tokenIds': (number)[];
  /**
   * text delta
   */
  'text': (string);
  /**
   * index of token_ids[0] among the generated tokens
   */
  'index': (number);
  /**
   * set on the last message only
   */
  'finishReason': (_nodespeed_v1_FinishReason);
  /**
   * set on the last message only
   */
  'usage': (_nodespeed_v1_Usage | null);
  'requestId': (string);
  /**
   * set on the last message only: the prompt as tokenized
   */
  'promptIds': (number)[];
  /**
   * which of the request's n sequences (0 when n is 1)
   */
  'choice': (number);
  /**
   * one per token_ids entry when the request asked for logprobs
   */
  'logprobs': (_nodespeed_v1_TokenLogprobs)[];
  /**
   * the replica group that produced these tokens (a failover may move a stream)
   */
  'group': (string);
  /**
   * and its replica
   */
  'replica': (number);
}
