// `nodespeed generate --server ADDR`: the same generation as the in-process path, through the
// gRPC API, with the same result shape (so --json prints the same line).
import type { GenerateResult } from '../engine/generate.js';
import type { SamplingOptions } from '../engine/sampling.js';
import { NodespeedClient } from './index.js';

export interface RemoteGenerateOptions extends SamplingOptions {
  server: string;
  authToken?: string;
  /** Called with each text delta as it arrives. */
  onText?: (delta: string) => void;
}

export async function generateRemote(prompt: string, o: RemoteGenerateOptions): Promise<GenerateResult> {
  const client = new NodespeedClient(o.server, o.authToken ? { authToken: o.authToken } : {});
  const start = performance.now();
  let firstAt: number | undefined;
  const tokenIds: number[] = [];
  let text = '';
  let promptIds: number[] = [];
  let finish: GenerateResult['finishReason'] = 'length';
  try {
    for await (const m of client.generate({
      prompt, maxTokens: o.maxTokens, temperature: o.temperature, topK: o.topK, topP: o.topP, stop: o.stop,
      ignoreEos: o.ignoreEos ?? false, ...(o.seed !== undefined ? { seed: o.seed.toString() } : {}),
    })) {
      if (m.tokenIds.length) firstAt ??= performance.now();
      tokenIds.push(...m.tokenIds);
      text += m.text;
      if (m.text) o.onText?.(m.text);
      if (m.finishReason !== 'FINISH_REASON_UNSPECIFIED') {
        finish = m.finishReason === 'FINISH_REASON_STOP' ? 'stop' : 'length';
        promptIds = m.promptIds;
      }
    }
  } catch (err) {
    throw new Error(`generate --server ${o.server}: ${(err as Error).message}`);
  } finally {
    client.close();
  }
  const end = performance.now();
  const decodeMs = firstAt === undefined ? 0 : end - firstAt;
  return {
    promptIds, tokenIds, text, finishReason: finish, ttftMs: (firstAt ?? end) - start,
    tokensPerS: tokenIds.length > 1 && decodeMs > 0 ? ((tokenIds.length - 1) * 1000) / decodeMs : 0,
  };
}
