// The coordinator's own decoding of token reports must give exactly what the generic control-plane
// decoder gives, for every message: encoded with the control proto's serializer (random reports,
// batches of them, logprobs, every other member, edge values) and with hand-made wire bytes the
// serializer never writes (unpacked token ids, unknown enum values and fields, repeated members,
// truncation), each compared with node's strict deep equality against the generic decoder.
import { deepStrictEqual } from 'node:assert';

import { describe, expect, it } from 'vitest';

import { CONTROL_SERVICE, controlPackageDefinition, serviceDefinition } from '../../src/protocol/proto.js';
import { enumNames, tokensFirstDeserializer } from '../../src/protocol/tokens-decode.js';
import { rng } from '../helpers/rng.js';

const def = controlPackageDefinition();
const connect = serviceDefinition(def, CONTROL_SERVICE).Connect!;
const generic = connect.requestDeserialize as (b: Buffer) => unknown;
const encode = connect.requestSerialize as (m: unknown) => Buffer;
let genericCalls = 0;
const fast = tokensFirstDeserializer((b) => {
  genericCalls++;
  return generic(b);
}, enumNames(def, 'nodespeed.v1.FinishReason'));

/** Both decoders' results (or both errors' messages) must be the same. */
function same(buf: Buffer): void {
  let want: unknown;
  let got: unknown;
  try {
    want = generic(buf);
  } catch (err) {
    want = `error: ${(err as Error).message}`;
  }
  try {
    got = fast(buf);
  } catch (err) {
    got = `error: ${(err as Error).message}`;
  }
  deepStrictEqual(got, want);
}

const TEXTS = ['', ' tok', 'é', '日本語', '😀', '\uFFFD', 'a'.repeat(300)];
const FINISH = ['FINISH_REASON_UNSPECIFIED', 'FINISH_REASON_STOP', 'FINISH_REASON_LENGTH'];
const EPOCHS = ['0', '1', '7', '4294967295', '4294967296', '9007199254740991', '9007199254740993', '18446744073709551615'];

function update(r: () => number, logprobs: boolean): Record<string, unknown> {
  const pick = <T>(xs: T[]) => xs[Math.floor(r() * xs.length)]!;
  const u: Record<string, unknown> = {};
  if (r() < 0.9) u.requestId = `req-${Math.floor(r() * 1e6).toString(36)}-${pick(TEXTS)}`;
  if (r() < 0.9) u.tokenIds = Array.from({ length: Math.floor(r() * 5) }, () => pick([0, 1, 127, 128, 16383, 16384, 2 ** 31, 2 ** 32 - 1]));
  if (r() < 0.9) u.text = pick(TEXTS);
  if (r() < 0.8) u.index = pick([0, 1, 300, 2 ** 32 - 1]);
  if (r() < 0.3) u.finishReason = pick(FINISH);
  if (r() < 0.1) u.error = pick(TEXTS);
  if (r() < 0.1) u.preempted = r() < 0.5;
  if (logprobs) u.logprobs = [{ tokenId: 1, logprob: -0.5, topTokenIds: [1, 2], topLogprobs: [-0.5, -1] }];
  return u;
}

function tokensMessage(r: () => number): Record<string, unknown> {
  return { tokens: { epoch: EPOCHS[Math.floor(r() * EPOCHS.length)], updates: Array.from({ length: Math.floor(r() * 6) }, () => update(r, r() < 0.05)) } };
}

describe('the token reports decoder', () => {
  it('gives what the generic decoder gives, for random token reports, batches and other messages', () => {
    const r = rng(7);
    for (let i = 0; i < 3000; i++) {
      const roll = r();
      const m = roll < 0.6 ? tokensMessage(r)
        : roll < 0.85 ? { batch: { messages: Array.from({ length: Math.floor(r() * 4) }, () => (r() < 0.9 ? tokensMessage(r) : { heartbeat: { epoch: '1' } })) } }
          : roll < 0.95 ? { heartbeat: { epoch: '3', sentAtMs: 1.5 } }
            : { join: { token: 't', rank: 1, host: 'h', pid: 2, listenAddresses: [] } };
      same(encode(m));
    }
  });

  it('decodes a report itself, and the same as the generic decoder, for hand-made wire bytes', () => {
    // tokens { epoch: 1, updates { request_id: "a", token_ids: 5 (unpacked), 6 (unpacked), finish_reason: 9 (unknown) } }
    const upd = Buffer.from([0x0a, 0x01, 0x61, 0x10, 0x05, 0x10, 0x06, 0x28, 0x09]);
    const tok = Buffer.concat([Buffer.from([0x08, 0x01, 0x12, upd.length]), upd]);
    const msg = Buffer.concat([Buffer.from([0x32, tok.length]), tok]);
    same(msg);
    genericCalls = 0;
    expect(fast(msg)).toMatchObject({ msg: 'tokens', tokens: { epoch: '1', updates: [{ requestId: 'a', tokenIds: [5, 6], finishReason: 9 }] } });
    expect(genericCalls).toBe(0);
    // A batch of two reports, as the worker's coalescing writer sends them: decoded here too.
    const batch = encode({ batch: { messages: [{ tokens: { epoch: '2', updates: [{ requestId: 'b', tokenIds: [1], text: ' x' }] } }, { tokens: { epoch: '2', updates: [] } }] } });
    same(batch);
    genericCalls = 0;
    fast(batch);
    expect(genericCalls).toBe(0);
    // A field the reader does not know (15, varint), in an update: left to the generic decoder, which skips it.
    const unknown = Buffer.concat([Buffer.from([0x32, tok.length + 2]), tok.subarray(0, 2), Buffer.from([0x78, 0x01]), tok.subarray(2)]);
    same(unknown);
    // Two members of the oneof; a member twice; truncated at every length; an empty message.
    same(Buffer.concat([msg, msg]));
    same(Buffer.concat([msg, Buffer.from([0x12, 0x00])]));
    for (let n = 0; n < msg.length; n++) same(msg.subarray(0, n));
    same(Buffer.alloc(0));
    // A 10-byte varint index (what a negative int32 looks like on the wire): the low 32 bits.
    const big = Buffer.from([0x20, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    const tok2 = Buffer.concat([Buffer.from([0x12, big.length]), big]);
    same(Buffer.concat([Buffer.from([0x32, tok2.length]), tok2]));
  });
});
