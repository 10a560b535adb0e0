import type * as grpc from '@grpc/grpc-js';
import type { EnumTypeDefinition, MessageTypeDefinition } from '@grpc/proto-loader';

import type { AbortIn as _nodespeed_control_v1_AbortIn, Abort as _nodespeed_control_v1_Abort } from './nodespeed/control/v1/Abort.js';
import type { AssignmentIn as _nodespeed_control_v1_AssignmentIn, Assignment as _nodespeed_control_v1_Assignment } from './nodespeed/control/v1/Assignment.js';
import type { CancelIn as _nodespeed_control_v1_CancelIn, Cancel as _nodespeed_control_v1_Cancel } from './nodespeed/control/v1/Cancel.js';
import type { CommOfferIn as _nodespeed_control_v1_CommOfferIn, CommOffer as _nodespeed_control_v1_CommOffer } from './nodespeed/control/v1/CommOffer.js';
import type { CommPeersIn as _nodespeed_control_v1_CommPeersIn, CommPeers as _nodespeed_control_v1_CommPeers } from './nodespeed/control/v1/CommPeers.js';
import type { ControlClient as _nodespeed_control_v1_ControlClient, ControlDefinition as _nodespeed_control_v1_ControlDefinition } from './nodespeed/control/v1/Control.js';
import type { CoordinatorBatchIn as _nodespeed_control_v1_CoordinatorBatchIn, CoordinatorBatch as _nodespeed_control_v1_CoordinatorBatch } from './nodespeed/control/v1/CoordinatorBatch.js';
import type { CoordinatorMessageIn as _nodespeed_control_v1_CoordinatorMessageIn, CoordinatorMessage as _nodespeed_control_v1_CoordinatorMessage } from './nodespeed/control/v1/CoordinatorMessage.js';
import type { DeviceInfoIn as _nodespeed_control_v1_DeviceInfoIn, DeviceInfo as _nodespeed_control_v1_DeviceInfo } from './nodespeed/control/v1/DeviceInfo.js';
import type { HeartbeatIn as _nodespeed_control_v1_HeartbeatIn, Heartbeat as _nodespeed_control_v1_Heartbeat } from './nodespeed/control/v1/Heartbeat.js';
import type { JoinIn as _nodespeed_control_v1_JoinIn, Join as _nodespeed_control_v1_Join } from './nodespeed/control/v1/Join.js';
import type { LoadProgressIn as _nodespeed_control_v1_LoadProgressIn, LoadProgress as _nodespeed_control_v1_LoadProgress } from './nodespeed/control/v1/LoadProgress.js';
import type { LogitBiasIn as _nodespeed_control_v1_LogitBiasIn, LogitBias as _nodespeed_control_v1_LogitBias } from './nodespeed/control/v1/LogitBias.js';
import type { PeerIn as _nodespeed_control_v1_PeerIn, Peer as _nodespeed_control_v1_Peer } from './nodespeed/control/v1/Peer.js';
import type { ReadyIn as _nodespeed_control_v1_ReadyIn, Ready as _nodespeed_control_v1_Ready } from './nodespeed/control/v1/Ready.js';
import type { ReplicaLoadIn as _nodespeed_control_v1_ReplicaLoadIn, ReplicaLoad as _nodespeed_control_v1_ReplicaLoad } from './nodespeed/control/v1/ReplicaLoad.js';
import type { SamplingParamsIn as _nodespeed_control_v1_SamplingParamsIn, SamplingParams as _nodespeed_control_v1_SamplingParams } from './nodespeed/control/v1/SamplingParams.js';
import type { StartIn as _nodespeed_control_v1_StartIn, Start as _nodespeed_control_v1_Start } from './nodespeed/control/v1/Start.js';
import type { StopIn as _nodespeed_control_v1_StopIn, Stop as _nodespeed_control_v1_Stop } from './nodespeed/control/v1/Stop.js';
import type { SubmitIn as _nodespeed_control_v1_SubmitIn, Submit as _nodespeed_control_v1_Submit } from './nodespeed/control/v1/Submit.js';
import type { TokenUpdateIn as _nodespeed_control_v1_TokenUpdateIn, TokenUpdate as _nodespeed_control_v1_TokenUpdate } from './nodespeed/control/v1/TokenUpdate.js';
import type { TokensIn as _nodespeed_control_v1_TokensIn, Tokens as _nodespeed_control_v1_Tokens } from './nodespeed/control/v1/Tokens.js';
import type { WorkerBatchIn as _nodespeed_control_v1_WorkerBatchIn, WorkerBatch as _nodespeed_control_v1_WorkerBatch } from './nodespeed/control/v1/WorkerBatch.js';
import type { WorkerErrorIn as _nodespeed_control_v1_WorkerErrorIn, WorkerError as _nodespeed_control_v1_WorkerError } from './nodespeed/control/v1/WorkerError.js';
import type { WorkerMessageIn as _nodespeed_control_v1_WorkerMessageIn, WorkerMessage as _nodespeed_control_v1_WorkerMessage } from './nodespeed/control/v1/WorkerMessage.js';
import type { ChatMessageIn as _nodespeed_v1_ChatMessageIn, ChatMessage as _nodespeed_v1_ChatMessage } from './nodespeed/v1/ChatMessage.js';
import type { ClassStatusIn as _nodespeed_v1_ClassStatusIn, ClassStatus as _nodespeed_v1_ClassStatus } from './nodespeed/v1/ClassStatus.js';
import type { ClusterStatusRequestIn as _nodespeed_v1_ClusterStatusRequestIn, ClusterStatusRequest as _nodespeed_v1_ClusterStatusRequest } from './nodespeed/v1/ClusterStatusRequest.js';
import type { ClusterStatusResponseIn as _nodespeed_v1_ClusterStatusResponseIn, ClusterStatusResponse as _nodespeed_v1_ClusterStatusResponse } from './nodespeed/v1/ClusterStatusResponse.js';
import type { CompleteChoiceIn as _nodespeed_v1_CompleteChoiceIn, CompleteChoice as _nodespeed_v1_CompleteChoice } from './nodespeed/v1/CompleteChoice.js';
import type { CompleteResponseIn as _nodespeed_v1_CompleteResponseIn, CompleteResponse as _nodespeed_v1_CompleteResponse } from './nodespeed/v1/CompleteResponse.js';
import type { FailoverCountersIn as _nodespeed_v1_FailoverCountersIn, FailoverCounters as _nodespeed_v1_FailoverCounters } from './nodespeed/v1/FailoverCounters.js';
import type { FailureStatusIn as _nodespeed_v1_FailureStatusIn, FailureStatus as _nodespeed_v1_FailureStatus } from './nodespeed/v1/FailureStatus.js';
import type { GenerateRequestIn as _nodespeed_v1_GenerateRequestIn, GenerateRequest as _nodespeed_v1_GenerateRequest } from './nodespeed/v1/GenerateRequest.js';
import type { GenerateResponseIn as _nodespeed_v1_GenerateResponseIn, GenerateResponse as _nodespeed_v1_GenerateResponse } from './nodespeed/v1/GenerateResponse.js';
import type { GroupStatusIn as _nodespeed_v1_GroupStatusIn, GroupStatus as _nodespeed_v1_GroupStatus } from './nodespeed/v1/GroupStatus.js';
import type { InferenceClient as _nodespeed_v1_InferenceClient, InferenceDefinition as _nodespeed_v1_InferenceDefinition } from './nodespeed/v1/Inference.js';
import type { LatencyPercentilesIn as _nodespeed_v1_LatencyPercentilesIn, LatencyPercentiles as _nodespeed_v1_LatencyPercentiles } from './nodespeed/v1/LatencyPercentiles.js';
import type { ListModelsRequestIn as _nodespeed_v1_ListModelsRequestIn, ListModelsRequest as _nodespeed_v1_ListModelsRequest } from './nodespeed/v1/ListModelsRequest.js';
import type { ListModelsResponseIn as _nodespeed_v1_ListModelsResponseIn, ListModelsResponse as _nodespeed_v1_ListModelsResponse } from './nodespeed/v1/ListModelsResponse.js';
import type { ModelInfoIn as _nodespeed_v1_ModelInfoIn, ModelInfo as _nodespeed_v1_ModelInfo } from './nodespeed/v1/ModelInfo.js';
import type { PrecisionIn as _nodespeed_v1_PrecisionIn, Precision as _nodespeed_v1_Precision } from './nodespeed/v1/Precision.js';
import type { QuarantinedRequestIn as _nodespeed_v1_QuarantinedRequestIn, QuarantinedRequest as _nodespeed_v1_QuarantinedRequest } from './nodespeed/v1/QuarantinedRequest.js';
import type { ReplicaStatusIn as _nodespeed_v1_ReplicaStatusIn, ReplicaStatus as _nodespeed_v1_ReplicaStatus } from './nodespeed/v1/ReplicaStatus.js';
import type { TokenLogprobsIn as _nodespeed_v1_TokenLogprobsIn, TokenLogprobs as _nodespeed_v1_TokenLogprobs } from './nodespeed/v1/TokenLogprobs.js';
import type { UsageIn as _nodespeed_v1_UsageIn, Usage as _nodespeed_v1_Usage } from './nodespeed/v1/Usage.js';
import type { WorkerStatusIn as _nodespeed_v1_WorkerStatusIn, WorkerStatus as _nodespeed_v1_WorkerStatus } from './nodespeed/v1/WorkerStatus.js';

type SubtypeConstructor<Constructor extends new (...args: any) => any, Subtype> = {
  new(...args: ConstructorParameters<Constructor>): Subtype;
};

export interface ProtoGrpcType {
  nodespeed: {
    control: {
      v1: {
        Abort: MessageTypeDefinition<_nodespeed_control_v1_AbortIn, _nodespeed_control_v1_Abort>
        Assignment: MessageTypeDefinition<_nodespeed_control_v1_AssignmentIn, _nodespeed_control_v1_Assignment>
        Cancel: MessageTypeDefinition<_nodespeed_control_v1_CancelIn, _nodespeed_control_v1_Cancel>
        CommOffer: MessageTypeDefinition<_nodespeed_control_v1_CommOfferIn, _nodespeed_control_v1_CommOffer>
        CommPeers: MessageTypeDefinition<_nodespeed_control_v1_CommPeersIn, _nodespeed_control_v1_CommPeers>
        Control: SubtypeConstructor<typeof grpc.Client, _nodespeed_control_v1_ControlClient> & { service: _nodespeed_control_v1_ControlDefinition }
        CoordinatorBatch: MessageTypeDefinition<_nodespeed_control_v1_CoordinatorBatchIn, _nodespeed_control_v1_CoordinatorBatch>
        CoordinatorMessage: MessageTypeDefinition<_nodespeed_control_v1_CoordinatorMessageIn, _nodespeed_control_v1_CoordinatorMessage>
        DeviceInfo: MessageTypeDefinition<_nodespeed_control_v1_DeviceInfoIn, _nodespeed_control_v1_DeviceInfo>
        Heartbeat: MessageTypeDefinition<_nodespeed_control_v1_HeartbeatIn, _nodespeed_control_v1_Heartbeat>
        Join: MessageTypeDefinition<_nodespeed_control_v1_JoinIn, _nodespeed_control_v1_Join>
        LoadProgress: MessageTypeDefinition<_nodespeed_control_v1_LoadProgressIn, _nodespeed_control_v1_LoadProgress>
        LogitBias: MessageTypeDefinition<_nodespeed_control_v1_LogitBiasIn, _nodespeed_control_v1_LogitBias>
        Peer: MessageTypeDefinition<_nodespeed_control_v1_PeerIn, _nodespeed_control_v1_Peer>
        Ready: MessageTypeDefinition<_nodespeed_control_v1_ReadyIn, _nodespeed_control_v1_Ready>
        ReplicaLoad: MessageTypeDefinition<_nodespeed_control_v1_ReplicaLoadIn, _nodespeed_control_v1_ReplicaLoad>
        SamplingParams: MessageTypeDefinition<_nodespeed_control_v1_SamplingParamsIn, _nodespeed_control_v1_SamplingParams>
        Start: MessageTypeDefinition<_nodespeed_control_v1_StartIn, _nodespeed_control_v1_Start>
        Stop: MessageTypeDefinition<_nodespeed_control_v1_StopIn, _nodespeed_control_v1_Stop>
        Submit: MessageTypeDefinition<_nodespeed_control_v1_SubmitIn, _nodespeed_control_v1_Submit>
        TokenUpdate: MessageTypeDefinition<_nodespeed_control_v1_TokenUpdateIn, _nodespeed_control_v1_TokenUpdate>
        Tokens: MessageTypeDefinition<_nodespeed_control_v1_TokensIn, _nodespeed_control_v1_Tokens>
        WorkerBatch: MessageTypeDefinition<_nodespeed_control_v1_WorkerBatchIn, _nodespeed_control_v1_WorkerBatch>
        WorkerError: MessageTypeDefinition<_nodespeed_control_v1_WorkerErrorIn, _nodespeed_control_v1_WorkerError>
        WorkerMessage: MessageTypeDefinition<_nodespeed_control_v1_WorkerMessageIn, _nodespeed_control_v1_WorkerMessage>
      }
    }
    v1: {
      ChatMessage: MessageTypeDefinition<_nodespeed_v1_ChatMessageIn, _nodespeed_v1_ChatMessage>
      ClassStatus: MessageTypeDefinition<_nodespeed_v1_ClassStatusIn, _nodespeed_v1_ClassStatus>
      ClusterStatusRequest: MessageTypeDefinition<_nodespeed_v1_ClusterStatusRequestIn, _nodespeed_v1_ClusterStatusRequest>
      ClusterStatusResponse: MessageTypeDefinition<_nodespeed_v1_ClusterStatusResponseIn, _nodespeed_v1_ClusterStatusResponse>
      CompleteChoice: MessageTypeDefinition<_nodespeed_v1_CompleteChoiceIn, _nodespeed_v1_CompleteChoice>
      CompleteResponse: MessageTypeDefinition<_nodespeed_v1_CompleteResponseIn, _nodespeed_v1_CompleteResponse>
      FailoverCounters: MessageTypeDefinition<_nodespeed_v1_FailoverCountersIn, _nodespeed_v1_FailoverCounters>
      FailureStatus: MessageTypeDefinition<_nodespeed_v1_FailureStatusIn, _nodespeed_v1_FailureStatus>
      FinishReason: EnumTypeDefinition
      GenerateRequest: MessageTypeDefinition<_nodespeed_v1_GenerateRequestIn, _nodespeed_v1_GenerateRequest>
      GenerateResponse: MessageTypeDefinition<_nodespeed_v1_GenerateResponseIn, _nodespeed_v1_GenerateResponse>
      GroupStatus: MessageTypeDefinition<_nodespeed_v1_GroupStatusIn, _nodespeed_v1_GroupStatus>
      Inference: SubtypeConstructor<typeof grpc.Client, _nodespeed_v1_InferenceClient> & { service: _nodespeed_v1_InferenceDefinition }
      LatencyPercentiles: MessageTypeDefinition<_nodespeed_v1_LatencyPercentilesIn, _nodespeed_v1_LatencyPercentiles>
      ListModelsRequest: MessageTypeDefinition<_nodespeed_v1_ListModelsRequestIn, _nodespeed_v1_ListModelsRequest>
      ListModelsResponse: MessageTypeDefinition<_nodespeed_v1_ListModelsResponseIn, _nodespeed_v1_ListModelsResponse>
      ModelInfo: MessageTypeDefinition<_nodespeed_v1_ModelInfoIn, _nodespeed_v1_ModelInfo>
      Precision: MessageTypeDefinition<_nodespeed_v1_PrecisionIn, _nodespeed_v1_Precision>
      QuarantinedRequest: MessageTypeDefinition<_nodespeed_v1_QuarantinedRequestIn, _nodespeed_v1_QuarantinedRequest>
      ReplicaStatus: MessageTypeDefinition<_nodespeed_v1_ReplicaStatusIn, _nodespeed_v1_ReplicaStatus>
      TokenLogprobs: MessageTypeDefinition<_nodespeed_v1_TokenLogprobsIn, _nodespeed_v1_TokenLogprobs>
      Usage: MessageTypeDefinition<_nodespeed_v1_UsageIn, _nodespeed_v1_Usage>
      WorkerStatus: MessageTypeDefinition<_nodespeed_v1_WorkerStatusIn, _nodespeed_v1_WorkerStatus>
    }
  }
}

