// The public API's messages (proto/inference.proto, package nodespeed.v1) under the names the
// client exports: what a client sends (the generated `...In` input types) and what it receives
// (the decoded types). The server (coordinator/api.ts) uses the same ones from the other side.
import type { GenerateRequestIn } from './generated/nodespeed/v1/GenerateRequest.js';

export type { ClassStatus as ClassStatusMsg } from './generated/nodespeed/v1/ClassStatus.js';
export type { ClusterStatusResponse as ClusterStatusMsg, ClusterStatusResponseIn } from './generated/nodespeed/v1/ClusterStatusResponse.js';
export type { CompleteResponse as CompleteResponseMsg, CompleteResponseIn } from './generated/nodespeed/v1/CompleteResponse.js';
export type { FailoverCounters as FailoverCountersMsg } from './generated/nodespeed/v1/FailoverCounters.js';
export type { FailureStatus as FailureStatusMsg, FailureStatusIn } from './generated/nodespeed/v1/FailureStatus.js';
export type { QuarantinedRequest as QuarantinedRequestMsg } from './generated/nodespeed/v1/QuarantinedRequest.js';
export type { FinishReason as FinishReasonName } from './generated/nodespeed/v1/FinishReason.js';
export type { GenerateRequest, GenerateRequestIn } from './generated/nodespeed/v1/GenerateRequest.js';
export type { GenerateResponse as GenerateResponseMsg, GenerateResponseIn } from './generated/nodespeed/v1/GenerateResponse.js';
export type { GroupStatus as GroupStatusMsg } from './generated/nodespeed/v1/GroupStatus.js';
export type { InferenceClient, InferenceHandlers } from './generated/nodespeed/v1/Inference.js';
export type { LatencyPercentiles as LatencyPercentilesMsg } from './generated/nodespeed/v1/LatencyPercentiles.js';
export type { ListModelsResponse, ListModelsResponseIn } from './generated/nodespeed/v1/ListModelsResponse.js';
export type { ModelInfo as ModelInfoMsg } from './generated/nodespeed/v1/ModelInfo.js';
export type { Precision as PrecisionMsg } from './generated/nodespeed/v1/Precision.js';
export type { ReplicaStatus as ReplicaStatusMsg } from './generated/nodespeed/v1/ReplicaStatus.js';
export type { Usage as UsageMsg } from './generated/nodespeed/v1/Usage.js';
export type { TokenLogprobs, TokenLogprobsIn } from './generated/nodespeed/v1/TokenLogprobs.js';
export type { ChatMessage as ChatMessageMsg } from './generated/nodespeed/v1/ChatMessage.js';
export type { CompleteChoice as CompleteChoiceMsg, CompleteChoiceIn } from './generated/nodespeed/v1/CompleteChoice.js';
export type { WorkerStatus as WorkerStatusMsg } from './generated/nodespeed/v1/WorkerStatus.js';

/**
 * A GenerateRequest as a client writes it; the seed may also be a bigint (it is a uint64), and the
 * priority a class name or an integer (the client sets the oneof's member: priority_class or
 * priority_value).
 */
export type GenerateRequestMsg = Omit<GenerateRequestIn, 'seed' | 'priority'> & { seed?: GenerateRequestIn['seed'] | bigint; priority?: string | number };

/**
 * How failover handled a loss (FailureStatus.recovery): `replacing` then `spare` (a spare took the
 * lost rank), `respawning` then `respawned` (the replica's ranks restarted), `shrinking` then
 * `shrunk` (some ranks could not be restarted: the others serve with a smaller layout, see
 * ReplicaStatus tp/pp/ranks), or `retired` (the other replicas carry its load).
 */
export type RecoveryName = 'replacing' | 'spare' | 'respawning' | 'respawned' | 'shrinking' | 'shrunk' | 'retired';
