// Original file: proto/control.proto

import type { CoordinatorMessageIn as _nodespeed_control_v1_CoordinatorMessageIn, CoordinatorMessage as _nodespeed_control_v1_CoordinatorMessage } from '../../../nodespeed/control/v1/CoordinatorMessage.js';

export interface CoordinatorBatchIn {
  'messages'?: (_nodespeed_control_v1_CoordinatorMessageIn)[];
}

export interface CoordinatorBatch {
  'messages': (_nodespeed_control_v1_CoordinatorMessage)[];
}
