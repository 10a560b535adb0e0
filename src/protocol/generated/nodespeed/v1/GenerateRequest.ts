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
  '_maxTokens'?: "maxTokens";
  '_temperature'?: "temperature";
  '_topP'?: "topP";
  '_seed'?: "seed";
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
  '_maxTokens'?: "maxTokens";
  '_temperature'?: "temperature";
  '_topP'?: "topP";
  '_seed'?: "seed";
}
