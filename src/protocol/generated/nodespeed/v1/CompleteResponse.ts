// Original file: proto/inference.proto

import type { FinishReasonIn as _nodespeed_v1_FinishReasonIn, FinishReason as _nodespeed_v1_FinishReason } from '../../nodespeed/v1/FinishReason.js';
import type { UsageIn as _nodespeed_v1_UsageIn, Usage as _nodespeed_v1_Usage } from '../../nodespeed/v1/Usage.js';
import type { TokenLogprobsIn as _nodespeed_v1_TokenLogprobsIn, TokenLogprobs as _nodespeed_v1_TokenLogprobs } from '../../nodespeed/v1/TokenLogprobs.js';
import type { CompleteChoiceIn as _nodespeed_v1_CompleteChoiceIn, CompleteChoice as _nodespeed_v1_CompleteChoice } from '../../nodespeed/v1/CompleteChoice.js';

/**
 * Sequence 0's output in the top-level fields; all n in `choices`; usage counts them all.
 */
export interface CompleteResponseIn {
  'tokenIds'?: (number)[];
  'text'?: (string);
  'finishReason'?: (_nodespeed_v1_FinishReasonIn);
  'usage'?: (_nodespeed_v1_UsageIn | null);
  'requestId'?: (string);
  'promptIds'?: (number)[];
  'logprobs'?: (_nodespeed_v1_TokenLogprobsIn)[];
  'choices'?: (_nodespeed_v1_CompleteChoiceIn)[];
  /**
   * the replica group that produced the last tokens
   */
  'group'?: (string);
  'replica'?: (number);
}

/**
 * Sequence 0's output in the top-level fields; all n in `choices`; usage counts them all.
 */
export interface CompleteResponse {
  'tokenIds': (number)[];
  'text': (string);
  'finishReason': (_nodespeed_v1_FinishReason);
  'usage': (_nodespeed_v1_Usage | null);
  'requestId': (string);
  'promptIds': (number)[];
  'logprobs': (_nodespeed_v1_TokenLogprobs)[];
  'choices': (_nodespeed_v1_CompleteChoice)[];
  /**
   * the replica group that produced the last tokens
   */
  'group': (string);
  'replica': (number);
}
