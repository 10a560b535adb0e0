// Original file: proto/control.proto

import type { JoinIn as _nodespeed_control_v1_JoinIn, Join as _nodespeed_control_v1_Join } from '../../../nodespeed/control/v1/Join.js';
import type { HeartbeatIn as _nodespeed_control_v1_HeartbeatIn, Heartbeat as _nodespeed_control_v1_Heartbeat } from '../../../nodespeed/control/v1/Heartbeat.js';
import type { LoadProgressIn as _nodespeed_control_v1_LoadProgressIn, LoadProgress as _nodespeed_control_v1_LoadProgress } from '../../../nodespeed/control/v1/LoadProgress.js';
import type { ReadyIn as _nodespeed_control_v1_ReadyIn, Ready as _nodespeed_control_v1_Ready } from '../../../nodespeed/control/v1/Ready.js';
import type { CommOfferIn as _nodespeed_control_v1_CommOfferIn, CommOffer as _nodespeed_control_v1_CommOffer } from '../../../nodespeed/control/v1/CommOffer.js';
import type { TokensIn as _nodespeed_control_v1_TokensIn, Tokens as _nodespeed_control_v1_Tokens } from '../../../nodespeed/control/v1/Tokens.js';
import type { WorkerErrorIn as _nodespeed_control_v1_WorkerErrorIn, WorkerError as _nodespeed_control_v1_WorkerError } from '../../../nodespeed/control/v1/WorkerError.js';
import type { WorkerBatchIn as _nodespeed_control_v1_WorkerBatchIn, WorkerBatch as _nodespeed_control_v1_WorkerBatch } from '../../../nodespeed/control/v1/WorkerBatch.js';

export interface WorkerMessageIn {
  'join'?: (_nodespeed_control_v1_JoinIn | null);
  'heartbeat'?: (_nodespeed_control_v1_HeartbeatIn | null);
  'loadProgress'?: (_nodespeed_control_v1_LoadProgressIn | null);
  'ready'?: (_nodespeed_control_v1_ReadyIn | null);
  'commOffer'?: (_nodespeed_control_v1_CommOfferIn | null);
  'tokens'?: (_nodespeed_control_v1_TokensIn | null);
  'error'?: (_nodespeed_control_v1_WorkerErrorIn | null);
  'batch'?: (_nodespeed_control_v1_WorkerBatchIn | null);
  'msg'?: "join"|"heartbeat"|"loadProgress"|"ready"|"commOffer"|"tokens"|"error"|"batch";
}

export interface WorkerMessage {
  'join'?: (_nodespeed_control_v1_Join | null);
  'heartbeat'?: (_nodespeed_control_v1_Heartbeat | null);
  'loadProgress'?: (_nodespeed_control_v1_LoadProgress | null);
  'ready'?: (_nodespeed_control_v1_Ready | null);
  'commOffer'?: (_nodespeed_control_v1_CommOffer | null);
  'tokens'?: (_nodespeed_control_v1_Tokens | null);
  'error'?: (_nodespeed_control_v1_WorkerError | null);
  'batch'?: (_nodespeed_control_v1_WorkerBatch | null);
  'msg'?: "join"|"heartbeat"|"loadProgress"|"ready"|"commOffer"|"tokens"|"error"|"batch";
}
