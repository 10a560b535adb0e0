// Original file: proto/inference.proto

import type { ChatMessageIn as _nodespeed_v1_ChatMessageIn, ChatMessage as _nodespeed_v1_ChatMessage } from '../../nodespeed/v1/ChatMessage.js';
import type { Long } from '@grpc/proto-loader';

export interface GenerateRequestIn {
  /**
   * Name from ListModels; empty selects the only model served.
   */
  'model'?: (string);
  /**
   * Text, tokenized by the server with the model's tokenizer (BOS where it adds one) ...
   */
  'prompt'?: (string);
  /**
   * ... or token ids used as given (prompt must then be empty) ...
   */
  'promptIds'?: (number)[];
  /**
   * Most tokens to generate (absent: what fits the model's context); must be >= 1.
   */
  'maxTokens'?: (number);
  /**
   * Absent: the model's generation_config.json value (when do_sample is not false), else 0 = greedy.
   */
  'temperature'?: (number | string);
  /**
   * 0 = off (absent: generation_config.json's, else off)
   */
  'topK'?: (number);
  /**
   * in (0, 1]; 1 = off (absent: generation_config.json's, else off)
   */
  'topP'?: (number | string);
  /**
   * same seed, same tokens, on any layout
   */
  'seed'?: (number | string | Long);
  /**
   * stop strings, not included in the output
   */
  'stop'?: (string)[];
  'ignoreEos'?: (boolean);
  /**
   * in [0, 1]: drop tokens with p < min_p * p(most likely); 0 = off
   */
  'minP'?: (number | string);
  /**
   * transformers' repetition penalty on prompt and output tokens, > 0 (1 = off).
   */
  'repetitionPenalty'?: (number | string);
  /**
   * OpenAI's penalties on output tokens, in [-2, 2] (0 = off): logit - frequency * count - presence * [count > 0].
   */
  'presencePenalty'?: (number | string);
  'frequencyPenalty'?: (number | string);
  /**
   * end the generation like EOS (also with ignore_eos)
   */
  'stopTokenIds'?: (number)[];
  /**
   * 0-20: each token's logprob and this many most likely ones (the log-softmax of the logits after
   * bias and penalties, before temperature); absent: none.
   */
  'logprobs'?: (number);
  /**
   * token id -> bias in [-100, 100] added to its logit
   */
  'logitBias'?: ({[key: number]: number | string});
  /**
   * Sequences to sample from the one prompt (1-16; absent: 1), seeds seed, seed + 1, ...; the
   * responses of sequence i carry choice = i.
   */
  'n'?: (number);
  /**
   * ... or a chat, rendered with the model's chat template (INVALID_ARGUMENT when it has none) and
   * tokenized without adding special tokens (the template writes them).
   */
  'messages'?: (_nodespeed_v1_ChatMessageIn)[];
  /**
   * chat: open the assistant's turn (default true)
   */
  'addGenerationPrompt'?: (boolean);
  'priorityClass'?: (string);
  'priorityValue'?: (number);
  /**
   * After a failover, continue only on a replica of the same numerics (device and precision) as the
   * one that produced its first tokens, waiting for one (up to --request-timeout) rather than moving
   * to another kind of replica, whose tokens after the fault could differ.
   */
  'exact'?: (boolean);
  '_addGenerationPrompt'?: "addGenerationPrompt";
  '_maxTokens'?: "maxTokens";
  '_temperature'?: "temperature";
  '_topK'?: "topK";
  '_topP'?: "topP";
  '_minP'?: "minP";
  '_repetitionPenalty'?: "repetitionPenalty";
  '_presencePenalty'?: "presencePenalty";
  '_frequencyPenalty'?: "frequencyPenalty";
  '_seed'?: "seed";
  /**
   * The request's class (`launch --config`: the deployment file's `classes`; without one: realtime,
   * standard, batch over the one group): its name, or an integer as vLLM's priority takes it (lower
   * runs first), which falls in the class whose range holds it (realtime < 0 <= standard < 100 <=
   * batch by default). It decides which replica groups may serve the request, in which order, the
   * TTFT target the router holds it to, its place in a replica's queue, and whom it may preempt.
   * Absent: standard (priority 0).
   */
  'priority'?: "priorityClass"|"priorityValue";
  '_logprobs'?: "logprobs";
  '_n'?: "n";
}

export interface GenerateRequest {
  /**
   * Name from ListModels; empty selects the only model served.
   */
  'model': (string);
  /**
   * Text, tokenized by the server with the model's tokenizer (BOS where it adds one) ...
   */
  'prompt': (string);
  /**
   * ... or token ids used as given (prompt must then be empty) ...
   */
  'promptIds': (number)[];
  /**
   * Most tokens to generate (absent: what fits the model's context); must be >= 1.
   */
  'maxTokens'?: (number);
  /**
   * Absent: the model's generation_config.json value (when do_sample is not false), else 0 = greedy.
   */
  'temperature'?: (number);
  /**
   * 0 = off (absent: generation_config.json's, else off)
   */
  'topK'?: (number);
  /**
   * in (0, 1]; 1 = off (absent: generation_config.json's, else off)
   */
  'topP'?: (number);
  /**
   * same seed, same tokens, on any layout
   */
  'seed'?: (string);
  /**
   * stop strings, not included in the output
   */
  'stop': (string)[];
  'ignoreEos': (boolean);
  /**
   * in [0, 1]: drop tokens with p < min_p * p(most likely); 0 = off
   */
  'minP'?: (number);
  /**
   * transformers' repetition penalty on prompt and output tokens, > 0 (1 = off).
   */
  'repetitionPenalty'?: (number);
  /**
   * OpenAI's penalties on output tokens, in [-2, 2] (0 = off): logit - frequency * count - presence * [count > 0].
   */
  'presencePenalty'?: (number);
  'frequencyPenalty'?: (number);
  /**
   * end the generation like EOS (also with ignore_eos)
   */
  'stopTokenIds': (number)[];
  /**
   * 0-20: each token's logprob and this many most likely ones (the log-softmax of the logits after
   * bias and penalties, before temperature); absent: none.
   */
  'logprobs'?: (number);
  /**
   * token id -> bias in [-100, 100] added to its logit
   */
  'logitBias': ({[key: number]: number});
  /**
   * Sequences to sample from the one prompt (1-16; absent: 1), seeds seed, seed + 1, ...; the
   * responses of sequence i carry choice = i.
   */
  'n'?: (number);
  /**
   * ... or a chat, rendered with the model's chat template (INVALID_ARGUMENT when it has none) and
   * tokenized without adding special tokens (the template writes them).
   */
  'messages': (_nodespeed_v1_ChatMessage)[];
  /**
   * chat: open the assistant's turn (default true)
   */
  'addGenerationPrompt'?: (boolean);
  'priorityClass'?: (string);
  'priorityValue'?: (number);
  /**
   * After a failover, continue only on a replica of the same numerics (device and precision) as the
   * one that produced its first tokens, waiting for one (up to --request-timeout) rather than moving
   * to another kind of replica, whose tokens after the fault could differ.
   */
  'exact': (boolean);
  '_addGenerationPrompt'?: "addGenerationPrompt";
  '_maxTokens'?: "maxTokens";
  '_temperature'?: "temperature";
  '_topK'?: "topK";
  '_topP'?: "topP";
  '_minP'?: "minP";
  '_repetitionPenalty'?: "repetitionPenalty";
  '_presencePenalty'?: "presencePenalty";
  '_frequencyPenalty'?: "frequencyPenalty";
  '_seed'?: "seed";
  /**
   * The request's class (`launch --config`: the deployment file's `classes`; without one: realtime,
   * standard, batch over the one group): its name, or an integer as vLLM's priority takes it (lower
   * runs first), which falls in the class whose range holds it (realtime < 0 <= standard < 100 <=
   * batch by default). It decides which replica groups may serve the request, in which order, the
   * TTFT target the router holds it to, its place in a replica's queue, and whom it may preempt.
   * Absent: standard (priority 0).
   */
  'priority'?: "priorityClass"|"priorityValue";
  '_logprobs'?: "logprobs";
  '_n'?: "n";
}
