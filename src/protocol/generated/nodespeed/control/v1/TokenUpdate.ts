// Original file: proto/control.proto


export interface TokenUpdateIn {
  'requestId'?: (string);
  'tokenIds'?: (number)[];
  'text'?: (string);
  /**
   * index of token_ids[0] among the generated tokens
   */
  'index'?: (number);
  /**
   * nodespeed.v1.FinishReason numbering; 0 = running
   */
  'finishReason'?: (number);
  /**
   * the driver refused or failed the request
   */
  'error'?: (string);
}

export interface TokenUpdate {
  'requestId': (string);
  'tokenIds': (number)[];
  'text': (string);
  /**
   * index of token_ids[0] among the generated tokens
   */
  'index': (number);
  /**
   * nodespeed.v1.FinishReason numbering; 0 = running
   */
  'finishReason': (number);
  /**
   * the driver refused or failed the request
   */
  'error': (string);
}
