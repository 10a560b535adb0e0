// One tokenizer thread of a TokenizerPool: loads the model's tokenizer once and answers encode,
// chat-encode, decode and replay requests, so long inputs never run on the event loop of the
// coordinator or of a replica's driver (where they would delay heartbeats).
import { parentPort, workerData } from 'node:worker_threads';

import { ChatTemplateError } from './chat-template.js';
import { IncrementalDecoder, loadTokenizer } from './tokenizer.js';
import type { TokenizerTask } from './tokenizer-pool.js';

const tokenizer = await loadTokenizer((workerData as { dir: string }).dir);

function run(t: TokenizerTask): unknown {
  switch (t.op) {
    case 'encode':
      return tokenizer.encode(t.text, { addSpecialTokens: t.addSpecialTokens ?? true });
    case 'encodeChat':
      return tokenizer.encodeChat(t.messages, t.options);
    case 'decode':
      return tokenizer.decode(t.ids, { skipSpecialTokens: t.skipSpecialTokens ?? false });
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
    parentPort!.postMessage({ id: m.id, ok: true, value: run(m.task) });
  } catch (err) {
    const chatTemplate = err instanceof ChatTemplateError ? err.kind : undefined;
    parentPort!.postMessage({ id: m.id, ok: false, error: (err as Error).message, ...(chatTemplate ? { chatTemplate } : {}) });
  }
});
parentPort!.postMessage({ ready: true });
