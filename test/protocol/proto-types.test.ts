// The generated protocol types describe what @grpc/proto-loader decodes only if they are made with
// the loader's own options: scripts/proto-types.mjs and src/protocol/proto.ts must agree.
import { describe, expect, it } from 'vitest';

import { LOADER_OPTIONS } from '../../src/protocol/proto.js';
import { GENERATOR_OPTIONS } from '../../scripts/proto-types.mjs';

describe('generated protocol types', () => {
  it('are generated with the options the loader decodes with', () => {
    const asFlags = Object.fromEntries(Object.entries(LOADER_OPTIONS).map(([k, v]) => [k, typeof v === 'function' ? v.name : v]));
    expect(GENERATOR_OPTIONS).toEqual(asFlags);
  });
});
