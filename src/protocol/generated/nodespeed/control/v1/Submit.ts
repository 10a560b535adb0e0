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
}
