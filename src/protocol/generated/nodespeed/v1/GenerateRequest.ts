// Original file: proto/inference.proto

import type { Long } from '@grpc/proto-loader';

export interface GenerateRequestIn {
  /**
   * Name from ListModels; empty selects the only model served.
   */
  'model'?: (string);
  /**
   * Text, tokenized by the server with the model's tokenizer (BOS where it adds one) ...
   */
  'prompt'?: (string);
  /**
   * ... or token ids used as given (prompt must then be empty).
   */
  'promptIds'?: (number)[];
  /**
   * Most tokens to generate (absent: 128); must be >= 1.
   */
  'maxTokens'?: (number);
  /**
   * 0 = greedy (the default).
   */
  'temperature'?: (number | string);
  /**
   * 0 = off
   */
  'topK'?: (number);
  /**
   * absent = 1 (off); must be in (0, 1]
   */
  'topP'?: (number | string);
  /**
   * same seed, same tokens, on any layout
   */
  'seed'?: (number | string | Long);
  /**
   * stop strings, not included in the output
   */
  'stop'?: (string)[];
  'ignoreEos'?: (boolean);
  'priorityClass'?: (string);
  'priorityValue'?: (number);
  /**
   * After a failover, continue only on a replica of the same numerics (device and precision) as the
   * one that produced its first tokens, waiting for one (up to --request-timeout) rather than moving
   * to another kind of replica, whose tokens after the fault could differ.
   */
  'exact'?: (boolean);
  '_maxTokens'?: "maxTokens";
  '_temperature'?: "temperature";
  '_topP'?: "topP";
  '_seed'?: "seed";
  /**
   * The request's class (`launch --config`: the deployment file's `classes`; without one: realtime,
   * standard, batch over the one group): its name, or an integer as vLLM's priority takes it (lower
   * runs first), which falls in the class whose range holds it (realtime < 0 <= standard < 100 <=
   * batch by default). It decides which replica groups may serve the request, in which order, the
   * TTFT target the router holds it to, its place in a replica's queue, and whom it may preempt.
   * Absent: standard (priority 0).
   */
  'priority'?: "priorityClass"|"priorityValue";
}

export interface GenerateRequest {
  /**
   * Name from ListModels; empty selects the only model served.
   */
  'model': (string);
  /**
   * Text, tokenized by the server with the model's tokenizer (BOS where it adds one) ...
   */
  'prompt': (string);
  /**
   * ... or token ids used as given (prompt must then be empty).
   */
  'promptIds': (number)[];
  /**
   * Most tokens to generate (absent: 128); must be >= 1.
   */
  'maxTokens'?: (number);
  /**
   * 0 = greedy (the default).
   */
  'temperature'?: (number);
  /**
   * 0 = off
   */
  'topK': (number);
  /**
   * absent = 1 (off); must be in (0, 1]
   */
  'topP'?: (number);
  /**
   * same seed, same tokens, on any layout
   */
  'seed'?: (string);
  /**
   * stop strings, not included in the output
   */
  'stop': (string)[];
  'ignoreEos': (boolean);
  'priorityClass'?: (string);
  'priorityValue'?: (number);
  /**
   * After a failover, continue only on a replica of the same numerics (device and precision) as the
   * one that produced its first tokens, waiting for one (up to --request-timeout) rather than moving
   * to another kind of replica, whose tokens after the fault could differ.
   */
  'exact': (boolean);
  '_maxTokens'?: "maxTokens";
  '_temperature'?: "temperature";
  '_topP'?: "topP";
  '_seed'?: "seed";
  /**
   * The request's class (`launch --config`: the deployment file's `classes`; without one: realtime,
   * standard, batch over the one group): its name, or an integer as vLLM's priority takes it (lower
   * runs first), which falls in the class whose range holds it (realtime < 0 <= standard < 100 <=
   * batch by default). It decides which replica groups may serve the request, in which order, the
   * TTFT target the router holds it to, its place in a replica's queue, and whom it may preempt.
   * Absent: standard (priority 0).
   */
  'priority'?: "priorityClass"|"priorityValue";
}
