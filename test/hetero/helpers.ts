// Shared by the heterogeneous-serving tests: a deployment file in a temp folder, seeded requests of
// py-tiny (their single-process results: the failover tests' faultFree), and a stream follower
// that fails on a gap or a repeat and records, per token, when it arrived and which group produced it.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import type { NodespeedClient } from '../../src/client/index.js';
import type { GenerateRequest } from '../../src/engine/index.js';
import { PY_TINY, reference } from '../serving/helpers.js';
import type { PyTinyCase } from '../serving/helpers.js';

export interface Workdir {
  dir: string;
  /** Writes `name` in the folder; returns its path. */
  file(name: string, text: string): string;
  remove(): void;
}

export function workdir(): Workdir {
  const dir = mkdtempSync(join(tmpdir(), 'nodespeed-hetero-'));
  return {
    dir,
    file: (name, text) => {
      const p = join(dir, name);
      writeFileSync(p, text);
      return p;
    },
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/** `n` seeded sampling requests of `maxTokens` each over py-tiny's reference prompts (no EOS stop). */
export function seeded(n: number, maxTokens: number, seed0 = 7000): GenerateRequest[] {
  const { cases } = reference<PyTinyCase>(PY_TINY);
  return Array.from({ length: n }, (_, i) => ({ promptIds: cases[i % cases.length]!.ids, maxTokens, ignoreEos: true, temperature: 0.8,
    topK: 40, topP: 0.95, seed: seed0 + 31 * i }));
}

export interface Followed {
  tokenIds: number[];
  /** Per token: when it arrived and the group that produced it. */
  at: number[];
  groups: string[];
  done?: number;
}

/** Streams `r` with `extra` (priority, exact); fails on a gap or a repeat. */
export async function follow(client: NodespeedClient, r: GenerateRequest, extra: { priority?: string | number; exact?: boolean } = {},
  out: Followed = { tokenIds: [], at: [], groups: [] }): Promise<Followed> {
  for await (const m of client.generate({ promptIds: r.promptIds!, maxTokens: r.maxTokens!, ignoreEos: true, temperature: r.temperature!,
    topK: r.topK!, topP: r.topP!, seed: String(r.seed), ...extra })) {
    if (m.index !== out.tokenIds.length) throw new Error(`stream gap/repeat: message index ${m.index}, ${out.tokenIds.length} tokens received`);
    out.tokenIds.push(...m.tokenIds);
    for (const _ of m.tokenIds) {
      out.at.push(Date.now());
      out.groups.push(m.group);
    }
  }
  out.done = Date.now();
  return out;
}

/** The groups a stream went through, in order, each once: ['a', 'b'] when it moved from a to b. */
export function path(f: Followed): string[] {
  return f.groups.filter((g, i) => i === 0 || f.groups[i - 1] !== g);
}

// faultFree: the same requests on one in-process engine (as stored, or int8), what every stream must equal.
export { faultFree, until } from '../failover/helpers.js';
