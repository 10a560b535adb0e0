// The model families' references: the Hugging Face fixture folder test/fixtures/hf-reference/<family>/
// when it is there (made by make_families.py with transformers), else a checkpoint made here by
// test/engine/torch_families.py and that script's plain PyTorch forward (Debian's python3-torch).
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { fixtures, root } from './helpers.js';

export const FAMILIES = ['qwen3', 'gemma2', 'gemma3_text', 'phi3', 'llama_bias_yarn', 'llama_dynamic', 'mistral', 'qwen2_swa',
  'mixtral', 'qwen3_moe', 'qwen2_moe'] as const;
export type Family = (typeof FAMILIES)[number];
export const MOE: readonly Family[] = ['mixtral', 'qwen3_moe', 'qwen2_moe'];
export const WINDOWED: readonly Family[] = ['gemma2', 'gemma3_text', 'mistral', 'qwen2_swa'];
/** Windowed and global layers mixed: the windowed layers keep their KV in a pool of their own. */
export const MIXED_WINDOWS: readonly Family[] = ['gemma2', 'gemma3_text', 'qwen2_swa'];

export interface FamilyCase {
  ids: number[];
  last_logits: number[];
  greedy_24: number[];
}

export interface FamilyReference {
  dir: string;
  /** 'hf': transformers made it (tolerance as the f32 fixture's); 'torch': torch_families.py. */
  source: 'hf' | 'torch';
  cases: FamilyCase[];
  /** Windowed families: the same cases with the window opened to the whole context. */
  full?: FamilyCase[];
}

const PY = '/usr/bin/python3';
const SCRIPT = join(root, 'test', 'engine', 'torch_families.py');
export const hasTorch = spawnSync(PY, ['-c', 'import torch'], { stdio: 'ignore' }).status === 0;

// tok512 ids of the fixtures' prompts (5, 10, 27 and 66 ids with the BOS): the last two are longer
// than the windows of 12, and 27 + 24 tokens cross the 32 positions where longrope / dynamic change.
const PROMPTS = [
  [0, 53, 272, 321, 482],
  [0, 275, 71, 314, 66, 262, 9, 319, 279, 339],
  [0, 49, 269, 78, 335, 84, 289, 315, 222, 272, 266, 67, 90, 440, 317, 448, 328, 13, 285, 266, 70, 322, 280, 73, 292, 374, 13],
];

function torchRun(dir: string, prompts: number[][]): FamilyCase[] {
  const out = JSON.parse(execFileSync(PY, [SCRIPT, 'run', dir, prompts.map((p) => p.join(',')).join(';'), '24'], { encoding: 'utf8' })) as
    { logits: number[]; greedy: number[] }[];
  return out.map((r, i) => ({ ids: prompts[i]!, last_logits: r.logits, greedy_24: r.greedy }));
}

/** torch_families.py's incremental greedy continuation of `ids` (n tokens). */
export function torchGreedy(dir: string, ids: number[], n: number): number[] {
  const [r] = JSON.parse(execFileSync(PY, [SCRIPT, 'run', dir, ids.join(','), String(n)], { encoding: 'utf8' })) as { greedy: number[] }[];
  return r!.greedy;
}

/**
 * How many of a case's greedy tokens an engine that keeps its cache must reproduce. transformers'
 * Phi-3 generate() drops its KV cache when the sequence first grows past
 * original_max_position_embeddings and recomputes every position with the long longrope factors;
 * nodespeed (like vLLM) keeps the keys it cached with the short factors, so from that token on the
 * two continuations are different computations. Every other case: all of its tokens.
 */
export function comparableTokens(ref: FamilyReference, c: FamilyCase): number {
  const cfg = JSON.parse(readFileSync(join(ref.dir, 'config.json'), 'utf8')) as { model_type: string; original_max_position_embeddings?: number };
  const orig = cfg.original_max_position_embeddings;
  if (ref.source !== 'hf' || cfg.model_type !== 'phi3' || orig === undefined) return c.greedy_24.length;
  if (c.ids.length > orig || c.ids.length + c.greedy_24.length <= orig) return c.greedy_24.length;
  return orig + 1 - c.ids.length;  // tokens made before the forward whose input reaches orig + 1 positions
}

export function familyReference(family: Family): FamilyReference {
  const hf = join(fixtures, family);
  if (existsSync(join(hf, 'reference.json'))) {
    const ref = JSON.parse(readFileSync(join(hf, 'reference.json'), 'utf8')) as { cases: FamilyCase[]; full_attention?: { cases: FamilyCase[] } };
    const full = ref.full_attention?.cases.map((c, i) => ({ ...c, ids: ref.cases[i]!.ids }));
    return { dir: hf, source: 'hf', cases: ref.cases, ...(full ? { full } : {}) };
  }
  // Made once per version of the scripts and shared by the test files (their workers may race:
  // each builds in its own folder and the first rename wins).
  const version = createHash('sha1').update(readFileSync(SCRIPT)).update(readFileSync(join(root, 'bench', 'cpu', 'torch_llama.py'))).digest('hex').slice(0, 12);
  const cache = join(tmpdir(), `nodespeed-families-${version}`);
  const dir = join(cache, family);
  if (!existsSync(join(dir, 'reference.json'))) {
    mkdirSync(cache, { recursive: true });
    const tmp = mkdtempSync(join(cache, `.${family}-`));
    execFileSync(PY, [SCRIPT, 'make', family, tmp]);
    writeFileSync(join(tmp, 'reference.json'), JSON.stringify({ cases: torchRun(tmp, [...PROMPTS, makeLongPrompt()]) }));
    try {
      renameSync(tmp, dir);
    } catch {
      rmSync(tmp, { recursive: true, force: true });  // another worker was first
    }
  }
  const { cases } = JSON.parse(readFileSync(join(dir, 'reference.json'), 'utf8')) as { cases: FamilyCase[] };
  return { dir, source: 'torch', cases };
}

/** A 66-id prompt (the fixtures' longest) from the tok512 ids above. */
function makeLongPrompt(): number[] {
  return [...PROMPTS[2]!, ...PROMPTS[1]!.slice(1), ...PROMPTS[2]!.slice(1, 30)];
}
