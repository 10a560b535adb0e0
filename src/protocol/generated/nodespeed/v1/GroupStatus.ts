// Original file: proto/inference.proto


/**
 * One replica group (`launch --config`: the deployment file's `groups`; without one: "default").
 */
export interface GroupStatusIn {
  'name'?: (string);
  /**
   * cuda | cpu
   */
  'device'?: (string);
  /**
   * auto (as stored) | f32 | bf16 | f16 | int8 | fp8
   */
  'precision'?: (string);
  /**
   * the layout it was launched with
   */
  'tp'?: (number);
  'pp'?: (number);
  /**
   * CPU threads per worker; 0: the backend decides
   */
  'threads'?: (number);
  /**
   * ReplicaStatus ids
   */
  'replicas'?: (number)[];
  /**
   * most sequences in one replica's batch
   */
  'maxSeqs'?: (number);
}

/**
 * One replica group (`launch --config`: the deployment file's `groups`; without one: "default").
 */
export interface GroupStatus {
  'name': (string);
  /**
   * cuda | cpu
   */
  'device': (string);
  /**
   * auto (as stored) | f32 | bf16 | f16 | int8 | fp8
   */
  'precision': (string);
  /**
   * the layout it was launched with
   */
  'tp': (number);
  'pp': (number);
  /**
   * CPU threads per worker; 0: the backend decides
   */
  'threads': (number);
  /**
   * ReplicaStatus ids
   */
  'replicas': (number)[];
  /**
   * most sequences in one replica's batch
   */
  'maxSeqs': (number);
}
