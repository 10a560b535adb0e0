// The driver's Tokens message written directly (protocol/tokens-wire.ts) is byte for byte what the
// control proto's serializer (protobufjs) writes for the same object, and every shape it does not
// write (a batch, logprobs, a lone surrogate, an odd finish reason or epoch) is left to protobufjs.
import { describe, expect, it } from 'vitest';

import { CONTROL_SERVICE, controlPackageDefinition, serviceDefinition } from '../../src/protocol/proto.js';
import { encodeTokensMessage } from '../../src/protocol/tokens-wire.js';

const connect = serviceDefinition(controlPackageDefinition(), CONTROL_SERVICE).Connect!;
const reference = (m: unknown): Buffer => connect.requestSerialize(m) as Buffer;

/** Deterministic pseudo-random numbers (xorshift32). */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 4294967296;
  };
}

const PIECES = ['', ' ', 'def', ' foo', '\n    ', 'é', 'ß', '中文', '😀', 'a😀b', '\u0000', '\u07ff', '\u0800', '\uffff', '\ufffd',
  'x'.repeat(39), 'y'.repeat(40), 'ü'.repeat(45), '😀'.repeat(30), ' n\'t .'];

function text(r: () => number): string {
  let s = '';
  const n = Math.floor(r() * 4);
  for (let i = 0; i < n; i++) s += PIECES[Math.floor(r() * PIECES.length)]!;
  return s;
}

function update(r: () => number, i: number): Record<string, unknown> {
  const u: Record<string, unknown> = {
    requestId: `req-${i}-${Math.floor(r() * 1e9).toString(36)}`,
    tokenIds: Array.from({ length: Math.floor(r() * 4) }, () => [0, 1, 127, 128, 16383, 16384, 128255, 2 ** 28, 2 ** 32 - 1][Math.floor(r() * 9)]!),
    text: text(r),
    index: [0, 1, 300, 70000, 2 ** 31][Math.floor(r() * 5)]!,
    finishReason: ['FINISH_REASON_UNSPECIFIED', 'FINISH_REASON_STOP', 'FINISH_REASON_LENGTH', 0, 1, 2][Math.floor(r() * 6)]!,
    error: r() < 0.9 ? '' : `replica queue full (${i} waiting) ${text(r)}`,
    preempted: r() < 0.9 ? false : true,
    logprobs: [],
  };
  // Fields left out or null, as a sender of the `In` type may.
  for (const k of ['tokenIds', 'text', 'index', 'finishReason', 'error', 'preempted', 'logprobs', 'requestId']) {
    const x = r();
    if (x < 0.05) delete u[k];
    else if (x < 0.08) u[k] = null;
  }
  return u;
}

describe('tokens-wire', () => {
  it('knows every field of the messages it writes: a field added to proto/control.proto must be added to the encoder too', () => {
    const def = controlPackageDefinition();
    const fields = (name: string) => ((def[`nodespeed.control.v1.${name}`] as { type: { field: { name: string; number: number }[] } }).type.field)
      .map((f) => `${f.number}:${f.name}`);
    expect(fields('TokenUpdate')).toEqual(['1:requestId', '2:tokenIds', '3:text', '4:index', '5:finishReason', '6:error', '7:logprobs', '8:preempted']);
    expect(fields('Tokens')).toEqual(['1:epoch', '2:updates']);
    expect(fields('WorkerMessage')).toEqual(['1:join', '2:heartbeat', '3:loadProgress', '4:ready', '5:commOffer', '6:tokens', '7:error', '8:batch']);
  });

  it('writes the bytes protobufjs writes, for updates of every field value the driver sends', () => {
    const r = rng(7);
    for (let round = 0; round < 300; round++) {
      const n = [0, 1, 2, 17, 128][round % 5]!;
      const epoch = ['0', '1', '42', '123456789012345', 0, 7, 2 ** 40][round % 7]!;
      const m = { tokens: { epoch, updates: Array.from({ length: n }, (_, i) => update(r, i)) } };
      const fast = encodeTokensMessage(m);
      expect(fast).not.toBeNull();
      expect(Buffer.compare(fast!, reference(m))).toBe(0);
    }
    // No updates, no epoch.
    for (const m of [{ tokens: {} }, { tokens: { epoch: '3' } }, { tokens: { updates: [] } }, { tokens: { updates: [{}] } }]) {
      expect(Buffer.compare(encodeTokensMessage(m)!, reference(m))).toBe(0);
    }
  });

  it('decodes to the updates it was given', () => {
    const u = { requestId: 'r1', tokenIds: [5, 300], text: 'héllo 😀', index: 12, finishReason: 'FINISH_REASON_LENGTH', error: '', preempted: false,
      logprobs: [] };
    const decoded = connect.requestDeserialize(encodeTokensMessage({ tokens: { epoch: '9', updates: [u] } })!);
    expect(decoded).toMatchObject({ tokens: { epoch: '9', updates: [u] } });
  });

  it('leaves every other shape to protobufjs', () => {
    const plain = { requestId: 'r', tokenIds: [1], text: 'a', index: 0, finishReason: 'FINISH_REASON_UNSPECIFIED', error: '', preempted: false, logprobs: [] };
    const others: unknown[] = [
      { heartbeat: { epoch: '1', sentAtMs: 5 } },
      { batch: { messages: [{ tokens: { epoch: '1', updates: [plain] } }] } },
      { tokens: { epoch: '1', updates: [plain] }, heartbeat: { epoch: '1' } },
      { tokens: { epoch: '1', updates: [{ ...plain, logprobs: [{ logprob: -0.5, topIds: [1], topLogprobs: [-0.5] }] }] } },
      { tokens: { epoch: '1', updates: [{ ...plain, text: 'a\ud800b' }] } },
      { tokens: { epoch: '1', updates: [{ ...plain, text: 'x'.repeat(50) + '\udc00' }] } },
      { tokens: { epoch: '1', updates: [{ ...plain, finishReason: 'STOP' }] } },
      { tokens: { epoch: '1', updates: [{ ...plain, finishReason: 7 }] } },
      { tokens: { epoch: '1', updates: [{ ...plain, finishReason: 'toString' }] } },
      { tokens: { epoch: '18446744073709551615', updates: [plain] } },
      { tokens: { epoch: -1, updates: [plain] } },
      { tokens: { epoch: '1', updates: 'x' } },
      { tokens: { epoch: '1', updates: [plain, 5] } },
      { tokens: { epoch: '1', updates: [{ ...plain, tokenIds: 'abc' }] } },
    ];
    for (const m of others) expect(encodeTokensMessage(m)).toBeNull();
  });
});
