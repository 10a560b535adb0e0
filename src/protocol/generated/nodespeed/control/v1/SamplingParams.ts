// Original file: proto/control.proto

import type { Long } from '@grpc/proto-loader';

/**
 * A request's sampling and stopping parameters, validated where the request entered (the public
 * API); the driver and the engine use them as they are. A new parameter is added here.
 */
export interface SamplingParamsIn {
  /**
   * 0 = greedy
   */
  'temperature'?: (number | string);
  /**
   * 0 = off
   */
  'topK'?: (number);
  /**
   * 1 = off
   */
  'topP'?: (number | string);
  /**
   * the uniform draw of position p is a function of (seed, p)
   */
  'seed'?: (number | string | Long);
  /**
   * already capped by the model's context
   */
  'maxTokens'?: (number);
  'stop'?: (string)[];
  'ignoreEos'?: (boolean);
}

/**
 * A request's sampling and stopping parameters, validated where the request entered (the public
 * API); the driver and the engine use them as they are. A new parameter is added here.
 */
export interface SamplingParams {
  /**
   * 0 = greedy
   */
  'temperature': (number);
  /**
   * 0 = off
   */
  'topK': (number);
  /**
   * 1 = off
   */
  'topP': (number);
  /**
   * the uniform draw of position p is a function of (seed, p)
   */
  'seed': (string);
  /**
   * already capped by the model's context
   */
  'maxTokens': (number);
  'stop': (string)[];
  'ignoreEos': (boolean);
}
