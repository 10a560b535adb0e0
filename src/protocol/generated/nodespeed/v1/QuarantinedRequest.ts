// Original file: proto/inference.proto


/**
 * A request that was in flight through --quarantine-after replica losses: failed (INTERNAL) instead
 * of replayed once more, in case it is what takes replicas down.
 */
export interface QuarantinedRequestIn {
  'requestId'?: (string);
  'replicaLosses'?: (number);
  'atUnixMs'?: (number | string);
  /**
   * the last loss it was in flight through
   */
  'lastCause'?: (string);
  'promptTokens'?: (number);
  'streamedTokens'?: (number);
}

/**
 * A request that was in flight through --quarantine-after replica losses: failed (INTERNAL) instead
 * of replayed once more, in case it is what takes replicas down.
 */
export interface QuarantinedRequest {
  'requestId': (string);
  'replicaLosses': (number);
  'atUnixMs': (number);
  /**
   * the last loss it was in flight through
   */
  'lastCause': (string);
  'promptTokens': (number);
  'streamedTokens': (number);
}
