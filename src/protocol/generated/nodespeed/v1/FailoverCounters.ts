// Original file: proto/inference.proto


export interface FailoverCountersIn {
  'failures'?: (number);
  'recoveries'?: (number);
  'replayedRequests'?: (number);
  'replayedTokens'?: (number);
  /**
   * requests failed instead of replayed again (QuarantinedRequest)
   */
  'quarantinedRequests'?: (number);
}

export interface FailoverCounters {
  'failures': (number);
  'recoveries': (number);
  'replayedRequests': (number);
  'replayedTokens': (number);
  /**
   * requests failed instead of replayed again (QuarantinedRequest)
   */
  'quarantinedRequests': (number);
}
