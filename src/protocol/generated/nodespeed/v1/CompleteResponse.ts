// Original file: proto/inference.proto

import type { FinishReasonIn as _nodespeed_v1_FinishReasonIn, FinishReason as _nodespeed_v1_FinishReason } from '../../nodespeed/v1/FinishReason.js';
import type { UsageIn as _nodespeed_v1_UsageIn, Usage as _nodespeed_v1_Usage } from '../../nodespeed/v1/Usage.js';

export interface CompleteResponseIn {
  'tokenIds'?: (number)[];
  'text'?: (string);
  'finishReason'?: (_nodespeed_v1_FinishReasonIn);
  'usage'?: (_nodespeed_v1_UsageIn | null);
  'requestId'?: (string);
  'promptIds'?: (number)[];
}

export interface CompleteResponse {
  'tokenIds': (number)[];
  'text': (string);
  'finishReason': (_nodespeed_v1_FinishReason);
  'usage': (_nodespeed_v1_Usage | null);
  'requestId': (string);
  'promptIds': (number)[];
}
