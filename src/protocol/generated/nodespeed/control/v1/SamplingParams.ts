// Original file: proto/control.proto

import type { LogitBiasIn as _nodespeed_control_v1_LogitBiasIn, LogitBias as _nodespeed_control_v1_LogitBias } from '../../../nodespeed/control/v1/LogitBias.js';
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
  /**
   * 0 = off
   */
  'minP'?: (number | string);
  /**
   * 1 = off
   */
  'repetitionPenalty'?: (number | string);
  'presencePenalty'?: (number | string);
  'frequencyPenalty'?: (number | string);
  'stopTokenIds'?: (number)[];
  /**
   * -1: none; 0-20 top logprobs per token
   */
  'logprobs'?: (number);
  /**
   * distinct tokens
   */
  'logitBias'?: (_nodespeed_control_v1_LogitBiasIn)[];
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
  /**
   * 0 = off
   */
  'minP': (number);
  /**
   * 1 = off
   */
  'repetitionPenalty': (number);
  'presencePenalty': (number);
  'frequencyPenalty': (number);
  'stopTokenIds': (number)[];
  /**
   * -1: none; 0-20 top logprobs per token
   */
  'logprobs': (number);
  /**
   * distinct tokens
   */
  'logitBias': (_nodespeed_control_v1_LogitBias)[];
}
