// Original file: proto/control.proto

import type { AssignmentIn as _nodespeed_control_v1_AssignmentIn, Assignment as _nodespeed_control_v1_Assignment } from '../../../nodespeed/control/v1/Assignment.js';
import type { HeartbeatIn as _nodespeed_control_v1_HeartbeatIn, Heartbeat as _nodespeed_control_v1_Heartbeat } from '../../../nodespeed/control/v1/Heartbeat.js';
import type { CommPeersIn as _nodespeed_control_v1_CommPeersIn, CommPeers as _nodespeed_control_v1_CommPeers } from '../../../nodespeed/control/v1/CommPeers.js';
import type { StartIn as _nodespeed_control_v1_StartIn, Start as _nodespeed_control_v1_Start } from '../../../nodespeed/control/v1/Start.js';
import type { SubmitIn as _nodespeed_control_v1_SubmitIn, Submit as _nodespeed_control_v1_Submit } from '../../../nodespeed/control/v1/Submit.js';
import type { CancelIn as _nodespeed_control_v1_CancelIn, Cancel as _nodespeed_control_v1_Cancel } from '../../../nodespeed/control/v1/Cancel.js';
import type { StopIn as _nodespeed_control_v1_StopIn, Stop as _nodespeed_control_v1_Stop } from '../../../nodespeed/control/v1/Stop.js';
import type { AbortIn as _nodespeed_control_v1_AbortIn, Abort as _nodespeed_control_v1_Abort } from '../../../nodespeed/control/v1/Abort.js';
import type { CoordinatorBatchIn as _nodespeed_control_v1_CoordinatorBatchIn, CoordinatorBatch as _nodespeed_control_v1_CoordinatorBatch } from '../../../nodespeed/control/v1/CoordinatorBatch.js';

export interface CoordinatorMessageIn {
  'assignment'?: (_nodespeed_control_v1_AssignmentIn | null);
  'heartbeat'?: (_nodespeed_control_v1_HeartbeatIn | null);
  'commPeers'?: (_nodespeed_control_v1_CommPeersIn | null);
  'start'?: (_nodespeed_control_v1_StartIn | null);
  'submit'?: (_nodespeed_control_v1_SubmitIn | null);
  'cancel'?: (_nodespeed_control_v1_CancelIn | null);
  'stop'?: (_nodespeed_control_v1_StopIn | null);
  'abort'?: (_nodespeed_control_v1_AbortIn | null);
  'batch'?: (_nodespeed_control_v1_CoordinatorBatchIn | null);
  'msg'?: "assignment"|"heartbeat"|"commPeers"|"start"|"submit"|"cancel"|"stop"|"abort"|"batch";
}

export interface CoordinatorMessage {
  'assignment'?: (_nodespeed_control_v1_Assignment | null);
  'heartbeat'?: (_nodespeed_control_v1_Heartbeat | null);
  'commPeers'?: (_nodespeed_control_v1_CommPeers | null);
  'start'?: (_nodespeed_control_v1_Start | null);
  'submit'?: (_nodespeed_control_v1_Submit | null);
  'cancel'?: (_nodespeed_control_v1_Cancel | null);
  'stop'?: (_nodespeed_control_v1_Stop | null);
  'abort'?: (_nodespeed_control_v1_Abort | null);
  'batch'?: (_nodespeed_control_v1_CoordinatorBatch | null);
  'msg'?: "assignment"|"heartbeat"|"commPeers"|"start"|"submit"|"cancel"|"stop"|"abort"|"batch";
}
