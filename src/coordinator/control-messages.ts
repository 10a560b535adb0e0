// TypeScript shapes of nodespeed.control.v1 (proto/control.proto) as @grpc/proto-loader decodes
// them (camelCase, uint64 as decimal strings, bytes as Buffer, oneof name in `msg`). Shared by the
// coordinator and the workers.

export interface DeviceInfoMsg { kind: string; name: string; totalMemory: string; freeMemory: string; threads: number }
export interface JoinMsg { token: string; rank: number; host: string; pid: number; device: DeviceInfoMsg | null; listenAddresses: string[] }
export interface ReplicaLoadMsg {
  running: number; queued: number; kvBlocksTotal: number; kvBlocksFree: number; kvBlockSize: number;
  steps: string; generatedTokens: string; recentStepBatch: number[]; maxStepBatch: number; maxInFlight: number;
}
export interface HeartbeatMsg { generation: string; sentAtMs: number; load: ReplicaLoadMsg | null }
export interface PeerMsg { rank: number; host: string; listenAddresses: string[] }
export interface AssignmentMsg {
  generation: string; rank: number; replica: number; stage: number; tpRank: number; tp: number; pp: number;
  layerStart: number; layerEnd: number; modelDir: string; dtype: string; device: string; deviceIndex: number;
  peers: PeerMsg[]; kvBlocks: number; threads: number; heartbeatIntervalMs: number;
  maxBatchTokens: number; maxQueue: number; heartbeatTimeoutMs: number;
  quantize: string; kvCacheDtype: string;
}
export interface LoadProgressMsg { generation: string; done: string; total: string }
export interface ReadyMsg { generation: string; kvBlocks: number; kvBlockSize: number; describe: string }
export interface CommOfferMsg { generation: string; group: string; groupRank: number; groupSize: number; payload: Buffer }
export interface CommPeersMsg { generation: string; group: string; payloads: Buffer[] }
export interface StartMsg { generation: string; kvBlocks: number; kvBlockSize: number }
export interface SubmitMsg {
  generation: string; requestId: string; promptIds: number[]; temperature: number; topK: number; topP: number;
  seed: string; maxTokens: number; stop: string[]; ignoreEos: boolean; generatedIds: number[];
}
export interface CancelMsg { generation: string; requestId: string; reason: string }
export interface StopMsg { generation: string; reason: string }
export interface AbortMsg { generation: string; reason: string }
export interface TokenUpdateMsg { requestId: string; tokenIds: number[]; text: string; index: number; finishReason: number; error: string }
export interface TokensMsg { generation: string; updates: TokenUpdateMsg[] }
export interface WorkerErrorMsg { generation: string; message: string; fatal: boolean }

/** 1 = stop (EOS or stop string), 2 = length: nodespeed.v1.FinishReason numbering. */
export const FINISH_STOP = 1;
export const FINISH_LENGTH = 2;

export type WorkerMessage =
  | { msg: 'join'; join: JoinMsg }
  | { msg: 'heartbeat'; heartbeat: HeartbeatMsg }
  | { msg: 'loadProgress'; loadProgress: LoadProgressMsg }
  | { msg: 'ready'; ready: ReadyMsg }
  | { msg: 'commOffer'; commOffer: CommOfferMsg }
  | { msg: 'tokens'; tokens: TokensMsg }
  | { msg: 'error'; error: WorkerErrorMsg };

export type CoordinatorMessage =
  | { msg: 'assignment'; assignment: AssignmentMsg }
  | { msg: 'heartbeat'; heartbeat: HeartbeatMsg }
  | { msg: 'commPeers'; commPeers: CommPeersMsg }
  | { msg: 'start'; start: StartMsg }
  | { msg: 'submit'; submit: SubmitMsg }
  | { msg: 'cancel'; cancel: CancelMsg }
  | { msg: 'stop'; stop: StopMsg }
  | { msg: 'abort'; abort: AbortMsg };

/** What a sender writes: one oneof member set, other fields optional (proto defaults). */
export type OutgoingCoordinatorMessage = { [K in CoordinatorMessage['msg']]?: Record<string, unknown> };
export type OutgoingWorkerMessage = { [K in WorkerMessage['msg']]?: Record<string, unknown> };
