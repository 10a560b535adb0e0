// Original file: proto/control.proto

import type { SamplingParamsIn as _nodespeed_control_v1_SamplingParamsIn, SamplingParams as _nodespeed_control_v1_SamplingParams } from '../../../nodespeed/control/v1/SamplingParams.js';
import type { Long } from '@grpc/proto-loader';

export interface SubmitIn {
  'epoch'?: (number | string | Long);
  'requestId'?: (string);
  'promptIds'?: (number)[];
  'params'?: (_nodespeed_control_v1_SamplingParamsIn | null);
  /**
   * Replay (failover): tokens already streamed to the client; the driver continues after them.
   */
  'generatedIds'?: (number)[];
  /**
   * Its place in the queue (lower first) and its class's rank (0: the most urgent class): a request
   * that cannot be admitted preempts running ones of a higher class rank.
   */
  'priority'?: (number);
  'classRank'?: (number);
  /**
   * Its class has exclusive_prefill (deployment file): the step carrying its first prompt chunk
   * leaves out the decodes and prefill chunks of less urgent classes (worker/scheduler.ts).
   */
  'exclusivePrefill'?: (boolean);
  /**
   * Its class's stream interval (ms, 0: none): the driver reports its tokens at most once an interval
   * (its first and its last at once), as the client gets them (worker/scheduler.ts).
   */
  'streamIntervalMs'?: (number);
}

export interface Submit {
  'epoch': (string);
  'requestId': (string);
  'promptIds': (number)[];
  'params': (_nodespeed_control_v1_SamplingParams | null);
  /**
   * Replay (failover): tokens already streamed to the client; the driver continues after them.
   */
  'generatedIds': (number)[];
  /**
   * Its place in the queue (lower first) and its class's rank (0: the most urgent class): a request
   * that cannot be admitted preempts running ones of a higher class rank.
   */
  'priority': (number);
  'classRank': (number);
  /**
   * Its class has exclusive_prefill (deployment file): the step carrying its first prompt chunk
   * leaves out the decodes and prefill chunks of less urgent classes (worker/scheduler.ts).
   */
  'exclusivePrefill': (boolean);
  /**
   * Its class's stream interval (ms, 0: none): the driver reports its tokens at most once an interval
   * (its first and its last at once), as the client gets them (worker/scheduler.ts).
   */
  'streamIntervalMs': (number);
}
