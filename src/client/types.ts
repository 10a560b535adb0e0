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
  /** The engine's description once ready ("" before). */
  engine: string;
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
  /** Routed here and unfinished, from the coordinator's own records (no heartbeat lag). */
  requests: number;
  /** The replica's own layout: the job's, or a smaller one after failover re-formed it (recovery `shrunk`). */
  tp: number;
  pp: number;
  /** Weights, matrix-product inputs and KV cache storage (docs/QUANTIZATION.md). */
  precision: PrecisionMsg | null;
}

export interface PrecisionMsg {
  weights: string;
  activations: string;
  kvCache: string;
}

/**
 * How failover handled a loss: `replacing` then `spare` (a spare took the lost rank), `respawning`
 * then `respawned` (the replica's ranks restarted), `shrinking` then `shrunk` (some ranks could not
 * be restarted: the others serve with a smaller layout, see ReplicaStatus tp/pp/ranks), or `retired`
 * (the other replicas carry its load).
 */
export type RecoveryName = 'replacing' | 'spare' | 'respawning' | 'respawned' | 'shrinking' | 'shrunk' | 'retired' | (string & {});

/** One lost worker and what failover did about it (FailureStatus, issue 6). */
export interface FailureStatusMsg {
  rank: number;
  host: string;
  /** The lost process. */
  pid: number;
  replica: number;
  cause: string;
  /** When it was declared lost (Unix ms). */
  atUnixMs: number;
  recovery: RecoveryName;
  /** Loss to serving again; 0 until recovered. */
  recoveryMs: number;
  /** The membership generation the replica was re-formed in (uint64 as a decimal string). */
  generation: string;
  /** In-flight requests re-queued from the lost replica, and the tokens they had already streamed. */
  replayedRequests: number;
  replayedTokens: number;
}

export interface FailoverCountersMsg {
  failures: number;
  recoveries: number;
  replayedRequests: number;
  replayedTokens: number;
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
  /** Every failure since launch, oldest first. */
  failures: FailureStatusMsg[];
  /** Totals since launch; zeros before any failure (a nodespeed server always sets it). */
  failover: FailoverCountersMsg;
  /** Spare workers joined and waiting to take a lost rank (--spares). */
  spares: number;
}
