// One tokenizer thread of a TokenizerPool: loads the model's tokenizer once and answers encode,
// chat-encode, decode, replay and token-texts requests, so long inputs never run on the event loop
// of the coordinator or of a replica's driver (where they would delay heartbeats).
import { parentPort, workerData } from 'node:worker_threads';

import { ChatTemplateError } from './chat-template.js';
import { IncrementalDecoder, loadTokenizer } from './tokenizer.js';
import type { TokenTextsData, TokenizerTask } from './tokenizer-pool.js';

const tokenizer = await loadTokenizer((workerData as { dir: string }).dir);

function tokenTexts(size: number): TokenTextsData {
  const offsets = new Uint32Array(size + 1);
  const parts: string[] = [];
  let at = 0;
  for (let id = 0; id < size; id++) {
    let s = '';
    try {
      s = tokenizer.decode([id]);
    } catch {
      // An id the tokenizer does not know (a vocabulary padded past it): no text.
    }
    parts.push(s);
    at += s.length;
    offsets[id + 1] = at;
  }
  return { text: parts.join(''), offsets };
}

function run(t: TokenizerTask): unknown {
  switch (t.op) {
    case 'encode':
      return tokenizer.encode(t.text, { addSpecialTokens: t.addSpecialTokens ?? true });
    case 'encodeChat':
      return tokenizer.encodeChat(t.messages, t.options);
    case 'decode':
      return tokenizer.decode(t.ids, { skipSpecialTokens: t.skipSpecialTokens ?? false });
    case 'tokenTexts':
      return tokenTexts(t.size);
    case 'replay': {
      // Exactly what a stop checker's decoder does token by token, so a replayed request goes on
      // with the same text and the same decoder window as if it had never moved.
      const decoder = new IncrementalDecoder((ids) => tokenizer.decode(ids));
      let text = '';
      for (const id of t.ids) text += decoder.push(id);
      return { text, decoder: decoder.state() };
    }
  }
}

parentPort!.on('message', (m: { id: number; task: TokenizerTask }) => {
  try {
    const value = run(m.task);
    // The token texts' offsets move to the caller instead of being copied.
    parentPort!.postMessage({ id: m.id, ok: true, value }, m.task.op === 'tokenTexts' ? [(value as TokenTextsData).offsets.buffer as ArrayBuffer] : []);
  } catch (err) {
    const chatTemplate = err instanceof ChatTemplateError ? err.kind : undefined;
    parentPort!.postMessage({ id: m.id, ok: false, error: (err as Error).message, ...(chatTemplate ? { chatTemplate } : {}) });
  }
});
parentPort!.postMessage({ ready: true });
