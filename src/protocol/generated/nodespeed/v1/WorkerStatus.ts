// Original file: proto/inference.proto


export interface WorkerStatusIn {
  'rank'?: (number);
  'replica'?: (number);
  'stage'?: (number);
  'tpRank'?: (number);
  'host'?: (string);
  'pid'?: (number);
  /**
   * joined | loading | ready | serving | lost | refused
   */
  'state'?: (string);
  'device'?: (string);
  'layerStart'?: (number);
  'layerEnd'?: (number);
  'lastHeartbeatMsAgo'?: (number | string);
  /**
   * 0..1
   */
  'loadProgress'?: (number | string);
  /**
   * The engine's own description once ready: device, dtype, layers, TP shard, KV blocks, kernels in
   * use, and for NCCL tensor parallelism whether the one-shot P2P collectives are on. "" before.
   */
  'engine'?: (string);
}

export interface WorkerStatus {
  'rank': (number);
  'replica': (number);
  'stage': (number);
  'tpRank': (number);
  'host': (string);
  'pid': (number);
  /**
   * joined | loading | ready | serving | lost | refused
   */
  'state': (string);
  'device': (string);
  'layerStart': (number);
  'layerEnd': (number);
  'lastHeartbeatMsAgo': (number);
  /**
   * 0..1
   */
  'loadProgress': (number);
  /**
   * The engine's own description once ready: device, dtype, layers, TP shard, KV blocks, kernels in
   * use, and for NCCL tensor parallelism whether the one-shot P2P collectives are on. "" before.
   */
  'engine': (string);
}
