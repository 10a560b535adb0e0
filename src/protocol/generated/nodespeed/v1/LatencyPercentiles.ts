// Original file: proto/inference.proto


/**
 * Latency percentiles over a class's most recent requests (at most 1024, the last 10 minutes).
 */
export interface LatencyPercentilesIn {
  'count'?: (number);
  'p50Ms'?: (number | string);
  'p90Ms'?: (number | string);
  'p99Ms'?: (number | string);
}

/**
 * Latency percentiles over a class's most recent requests (at most 1024, the last 10 minutes).
 */
export interface LatencyPercentiles {
  'count': (number);
  'p50Ms': (number);
  'p90Ms': (number);
  'p99Ms': (number);
}
