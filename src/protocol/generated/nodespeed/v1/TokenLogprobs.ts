// Original file: proto/inference.proto


/**
 * A generated token's logprob and the most likely tokens at its position, best first.
 */
export interface TokenLogprobsIn {
  'logprob'?: (number | string);
  'topIds'?: (number)[];
  'topLogprobs'?: (number | string)[];
}

/**
 * A generated token's logprob and the most likely tokens at its position, best first.
 */
export interface TokenLogprobs {
  'logprob': (number);
  'topIds': (number)[];
  'topLogprobs': (number)[];
}
