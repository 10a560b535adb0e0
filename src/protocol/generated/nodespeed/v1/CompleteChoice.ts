// Original file: proto/inference.proto

import type { FinishReasonIn as _nodespeed_v1_FinishReasonIn, FinishReason as _nodespeed_v1_FinishReason } from '../../nodespeed/v1/FinishReason.js';
import type { TokenLogprobsIn as _nodespeed_v1_TokenLogprobsIn, TokenLogprobs as _nodespeed_v1_TokenLogprobs } from '../../nodespeed/v1/TokenLogprobs.js';

export interface CompleteChoiceIn {
  'index'?: (number);
  'tokenIds'?: (number)[];
  'text'?: (string);
  'finishReason'?: (_nodespeed_v1_FinishReasonIn);
  'logprobs'?: (_nodespeed_v1_TokenLogprobsIn)[];
}

export interface CompleteChoice {
  'index': (number);
  'tokenIds': (number)[];
  'text': (string);
  'finishReason': (_nodespeed_v1_FinishReason);
  'logprobs': (_nodespeed_v1_TokenLogprobs)[];
}
