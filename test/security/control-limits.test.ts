// Control messages can never exceed what their receiver accepts: both ends of a control stream
// take their limits from CONTROL_MAX_MESSAGE_BYTES (checked at the boundary over a real gRPC
// stream), and the largest request the default limits admit forwards as a Submit well under it.
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { CONTROL_MAX_MESSAGE_BYTES, DEFAULT_REQUEST_LIMITS, checkControlFits, controlChannelOptions, submitBytesBound } from '../../src/protocol/limits.js';
import { CONTROL_SERVICE, clientConstructor, controlPackageDefinition, serviceDefinition } from '../../src/protocol/proto.js';

const service = serviceDefinition(controlPackageDefinition(), CONTROL_SERVICE);
const connect = service.Connect!;

/** A CommOffer whose encoded WorkerMessage is exactly `bytes` long. */
function offerOfSize(bytes: number): object {
  const make = (n: number) => ({ commOffer: { epoch: '1', group: 'g', groupRank: 0, groupSize: 1, payload: Buffer.alloc(n, 7) } });
  // The framing around the payload (tags, length varints) settles after a couple of corrections.
  let n = bytes - 64;
  for (let i = 0; i < 3; i++) n += bytes - connect.requestSerialize(make(n)).length;
  const m = make(n);
  expect(connect.requestSerialize(m).length).toBe(bytes);
  return m;
}

describe('control message limits', () => {
  let server: grpc.Server;
  let port = 0;
  const received: number[] = [];
  beforeAll(async () => {
    // The coordinator's control server options, as in coordinator/server.ts.
    server = new grpc.Server({ ...controlChannelOptions() });
    server.addService(service, {
      Connect: (call: grpc.ServerDuplexStream<{ commOffer?: { payload: Buffer } }, object>) => {
        call.on('data', (m) => received.push(m.commOffer?.payload.length ?? -1));
        call.on('error', () => {});
        call.on('end', () => call.end());
      },
    });
    port = await new Promise<number>((res, rej) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
  });
  afterAll(() => server.forceShutdown());

  /** Sends one message over a worker-side stream (the worker's client options) and says how the stream ended. */
  function send(m: object): Promise<string> {
    const Ctor = clientConstructor(controlPackageDefinition(), CONTROL_SERVICE);
    const client = new Ctor(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), controlChannelOptions());
    return new Promise<string>((resolve) => {
      const call = (client as unknown as { Connect(): grpc.ClientDuplexStream<object, object> }).Connect();
      call.on('error', (e: grpc.ServiceError) => resolve(grpc.status[e.code]!));
      call.on('end', () => resolve('OK'));
      call.on('data', () => {});
      call.write(m, () => call.end());
    }).finally(() => client.close());
  }

  it('a message of exactly CONTROL_MAX_MESSAGE_BYTES crosses; one byte more is refused by the transport', async () => {
    const before = received.length;
    expect(await send(offerOfSize(CONTROL_MAX_MESSAGE_BYTES))).toBe('OK');
    expect(received.length).toBe(before + 1);
    expect(await send(offerOfSize(CONTROL_MAX_MESSAGE_BYTES + 1))).toBe('RESOURCE_EXHAUSTED');
    expect(received.length).toBe(before + 1);
  }, 240_000);

  it('the largest request the limits admit forwards as a Submit under the bound, for contexts up to millions of tokens', () => {
    const L = DEFAULT_REQUEST_LIMITS;
    for (const context of [2048, 131_072, 1_048_576]) {
      // Every token id at its widest varint, half the context replayed, the stop strings at their
      // limits in 3-byte characters, the longest request id we make.
      const submit = { submit: { epoch: '18446744073709551615', requestId: `req-${'z'.repeat(13)}-${'z'.repeat(9)}`,
        promptIds: Array(context / 2).fill(2 ** 32 - 1), generatedIds: Array(context / 2).fill(2 ** 32 - 1),
        params: { temperature: 1.5, topK: 2 ** 32 - 1, topP: 0.9, seed: '18446744073709551615', maxTokens: 2 ** 32 - 1,
          stop: Array(L.stopStrings).fill('日'.repeat(L.stopChars / L.stopStrings)), ignoreEos: true } } };
      const bytes = connect.responseSerialize(submit).length;
      expect(bytes).toBeLessThanOrEqual(submitBytesBound(context, L));
      expect(submitBytesBound(context, L)).toBeLessThan(CONTROL_MAX_MESSAGE_BYTES);
      expect(() => checkControlFits(context, L)).not.toThrow();
    }
    // Limits raised past what a control message can carry are refused at launch, naming the flags.
    expect(() => checkControlFits(2048, { ...L, stopChars: 30_000_000 })).toThrow(/--max-stop-chars 30000000 and --max-stop-strings 16 .* lower them/);
  });
});
