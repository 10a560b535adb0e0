// Original file: proto/control.proto

import type { WorkerMessageIn as _nodespeed_control_v1_WorkerMessageIn, WorkerMessage as _nodespeed_control_v1_WorkerMessage } from '../../../nodespeed/control/v1/WorkerMessage.js';

/**
 * Messages a side sent while its previous message was still being written, in one frame and in
 * order (protocol/coalesce.ts): under load none waits for a write of its own behind the others.
 */
export interface WorkerBatchIn {
  'messages'?: (_nodespeed_control_v1_WorkerMessageIn)[];
}

/**
 * Messages a side sent while its previous message was still being written, in one frame and in
 * order (protocol/coalesce.ts): under load none waits for a write of its own behind the others.
 */
export interface WorkerBatch {
  'messages': (_nodespeed_control_v1_WorkerMessage)[];
}
