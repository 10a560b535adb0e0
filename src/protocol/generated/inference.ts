import type * as grpc from '@grpc/grpc-js';
import type { EnumTypeDefinition, MessageTypeDefinition } from '@grpc/proto-loader';

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

