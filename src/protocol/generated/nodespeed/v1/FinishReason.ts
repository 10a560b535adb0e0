// Original file: proto/inference.proto

export const FinishReason = {
  /**
   * not finished yet
   */
  FINISH_REASON_UNSPECIFIED: 'FINISH_REASON_UNSPECIFIED',
  /**
   * EOS or a stop string
   */
  FINISH_REASON_STOP: 'FINISH_REASON_STOP',
  /**
   * max_tokens or the model's context
   */
  FINISH_REASON_LENGTH: 'FINISH_REASON_LENGTH',
} as const;

export type FinishReasonIn =
  /**
   * not finished yet
   */
  | 'FINISH_REASON_UNSPECIFIED'
  | 0
  /**
   * EOS or a stop string
   */
  | 'FINISH_REASON_STOP'
  | 1
  /**
   * max_tokens or the model's context
   */
  | 'FINISH_REASON_LENGTH'
  | 2

export type FinishReason = typeof FinishReason[keyof typeof FinishReason]
