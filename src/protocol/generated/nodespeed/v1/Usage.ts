// Original file: proto/inference.proto


export interface UsageIn {
  'promptTokens'?: (number);
  'completionTokens'?: (number);
}

export interface Usage {
  'promptTokens': (number);
  'completionTokens': (number);
}
