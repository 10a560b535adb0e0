// Original file: proto/inference.proto


export interface ChatMessageIn {
  /**
   * system, user, assistant (or any role the template knows)
   */
  'role'?: (string);
  'content'?: (string);
}

export interface ChatMessage {
  /**
   * system, user, assistant (or any role the template knows)
   */
  'role': (string);
  'content': (string);
}
