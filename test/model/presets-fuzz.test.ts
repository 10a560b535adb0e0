import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import { openCheckpoint, parameterCount, parseModelConfig, PRESETS, SafetensorsError, tpMemory } from '../../src/model/index.js';
import { llamaConfigJson } from '../../src/model/init.js';
import { buildSafetensors, iota, tmpDir, removeTmpDirs } from './helpers.js';

afterAll(removeTmpDirs);

describe('presets', () => {
  const cfgOf = (p: string) => parseModelConfig(llamaConfigJson(PRESETS[p]!, 'bf16', 1, 2), 'preset/config.json', '/nonexistent');

  it('Llama 2 presets have the published parameter counts', () => {
    expect(parameterCount(cfgOf('7b'))).toBe(6_738_415_616);
    expect(parameterCount(cfgOf('13b'))).toBe(13_015_864_320);
    expect(parameterCount(cfgOf('70b'))).toBe(68_976_648_192);
    const m = parameterCount(cfgOf('100m'));
    expect(m).toBeGreaterThan(90e6);
    expect(m).toBeLessThan(110e6);
  });

  it('70b at tp 8: one of the 8 KV heads per rank, 1/8 of the weights', () => {
    const mem = tpMemory(cfgOf('70b'), 8);
    expect(mem.unsupported).toBeNull();
    expect(mem.kvBytesPerToken16).toBe(2 * 80 * 1 * 128 * 2);
    expect(mem.weightBytesPerRank).toBe(68_976_648_192 * 2 / 8 + (2 * 80 + 1) * 8192 * 2 * 7 / 8); // norms are whole on every rank
  });
});

describe('safetensors reader on random corruption', () => {
  it('every byte-flipped file either opens or fails with a SafetensorsError naming the file', async () => {
    const good = buildSafetensors([{ name: 'w', shape: [4, 8], data: iota(32) }, { name: 'b', shape: [8], data: iota(8) }]);
    const dir = tmpDir();
    const path = join(dir, 'model.safetensors');
    let state = 12345;
    const rand = () => { state = (Math.imul(state, 1103515245) + 12345) >>> 0; return state; };
    let failures = 0;
    for (let trial = 0; trial < 300; trial++) {
      const buf = Buffer.from(good);
      const flips = 1 + (rand() % 3);
      for (let f = 0; f < flips; f++) buf[rand() % Math.min(buf.length, 8 + 160)] = rand() & 0xff;
      writeFileSync(path, trial % 7 === 0 ? buf.subarray(0, rand() % buf.length) : buf);
      try {
        const ck = await openCheckpoint(dir);
        await ck.close();
      } catch (err) {
        failures++;
        expect(err).toBeInstanceOf(SafetensorsError);
        expect((err as Error).message).toContain('model.safetensors');
      }
    }
    expect(failures).toBeGreaterThan(100);
  });
});
