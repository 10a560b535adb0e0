// Original file: proto/inference.proto


export interface FailoverCountersIn {
  'failures'?: (number);
  'recoveries'?: (number);
  'replayedRequests'?: (number);
  'replayedTokens'?: (number);
}

export interface FailoverCounters {
  'failures': (number);
  'recoveries': (number);
  'replayedRequests': (number);
  'replayedTokens': (number);
}
