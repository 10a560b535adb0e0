// Original file: proto/control.proto

import type { Long } from '@grpc/proto-loader';

export interface SubmitIn {
  'epoch'?: (number | string | Long);
  'requestId'?: (string);
  'promptIds'?: (number)[];
  'temperature'?: (number | string);
  'topK'?: (number);
  'topP'?: (number | string);
  'seed'?: (number | string | Long);
  'maxTokens'?: (number);
  'stop'?: (string)[];
  'ignoreEos'?: (boolean);
  /**
   * Replay (failover): tokens already streamed to the client; the driver continues after them.
   */
  'generatedIds'?: (number)[];
}

export interface Submit {
  'epoch': (string);
  'requestId': (string);
  'promptIds': (number)[];
  'temperature': (number);
  'topK': (number);
  'topP': (number);
  'seed': (string);
  'maxTokens': (number);
  'stop': (string)[];
  'ignoreEos': (boolean);
  /**
   * Replay (failover): tokens already streamed to the client; the driver continues after them.
   */
  'generatedIds': (number)[];
}
