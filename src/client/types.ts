// TypeScript shapes of nodespeed.v1 (proto/inference.proto) as @grpc/proto-loader decodes them:
// camelCase fields, uint64 as decimal strings, enums as their names.

export type FinishReasonName = 'FINISH_REASON_UNSPECIFIED' | 'FINISH_REASON_STOP' | 'FINISH_REASON_LENGTH';

export interface GenerateRequestMsg {
  model?: string;
  prompt?: string;
  promptIds?: number[];
  maxTokens?: number;
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: string | number | bigint;
  stop?: string[];
  ignoreEos?: boolean;
}

export interface UsageMsg {
  promptTokens: number;
  completionTokens: number;
}

export interface GenerateResponseMsg {
  tokenIds: number[];
  text: string;
  index: number;
  finishReason: FinishReasonName;
  usage: UsageMsg | null;
  requestId: string;
  promptIds: number[];
}

export interface CompleteResponseMsg {
  tokenIds: number[];
  text: string;
  finishReason: FinishReasonName;
  usage: UsageMsg | null;
  requestId: string;
  promptIds: number[];
}

export interface ModelInfoMsg {
  name: string;
  path: string;
  architecture: string;
  contextLength: number;
  vocabSize: number;
  numLayers: number;
  dtype: string;
}

export interface WorkerStatusMsg {
  rank: number;
  replica: number;
  stage: number;
  tpRank: number;
  host: string;
  pid: number;
  state: string;
  device: string;
  layerStart: number;
  layerEnd: number;
  lastHeartbeatMsAgo: number;
  loadProgress: number;
}

export interface ReplicaStatusMsg {
  id: number;
  state: string;
  running: number;
  queued: number;
  kvBlocksTotal: number;
  kvBlocksFree: number;
  kvBlockSize: number;
  steps: string;
  generatedTokens: string;
  recentStepBatch: number[];
  maxStepBatch: number;
  ranks: number[];
  maxInFlight: number;
}

export interface ClusterStatusMsg {
  model: string;
  tp: number;
  pp: number;
  replicaCount: number;
  generation: string;
  replicas: ReplicaStatusMsg[];
  workers: WorkerStatusMsg[];
  hosts: string[];
  pendingRequests: number;
  activeRequests: number;
  state: string;
}
