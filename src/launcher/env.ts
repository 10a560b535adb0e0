// Per-rank environment: the rank variables, NCCL_* / PATH / LD_LIBRARY_PATH and the registry's
// worker settings carried from the launcher, and KEY=VALUE files (.nodespeed_env, DeepSpeed's .deepspeed_env) from the working and home directories.
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { forwardedEnv, REGISTRY } from '../settings/index.js';
import type { Placement, RankPlacement } from './plan.js';

export const ENV_FILE_NAMES = ['.nodespeed_env', '.deepspeed_env'] as const;
export const JOB_TOKEN_VAR = REGISTRY.jobToken.name;

export class EnvFileError extends Error {
  override name = 'EnvFileError';
}

const KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** Parses KEY=VALUE lines; `#` comments, blank lines and a leading `export ` are allowed. */
export function parseEnvFile(text: string, file: string): Record<string, string> {
  const out: Record<string, string> = {};
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const body = line.startsWith('export ') ? line.slice(7).trimStart() : line;
    const eq = body.indexOf('=');
    if (eq < 0) throw new EnvFileError(`${file}:${i + 1}: expected KEY=VALUE, got '${line}'`);
    const key = body.slice(0, eq).trim();
    if (!KEY.test(key)) throw new EnvFileError(`${file}:${i + 1}: '${key}' is not a valid variable name`);
    let value = body.slice(eq + 1);
    const quoted = /^(["'])(.*)\1$/.exec(value);
    if (quoted) value = quoted[2]!;
    out[key] = value;
  });
  return out;
}

/**
 * Loads every env file that exists. Precedence, highest first: cwd/.nodespeed_env, cwd/.deepspeed_env,
 * home/.nodespeed_env, home/.deepspeed_env (DeepSpeed itself reads home then cwd, the later winning).
 */
export function loadEnvFiles(cwd: string = process.cwd(), home: string = homedir()): { vars: Record<string, string>; files: string[] } {
  const files: string[] = [];
  const dirs = cwd === home ? [home] : [home, cwd];
  let vars: Record<string, string> = {};
  for (const dir of dirs) {
    for (const name of [...ENV_FILE_NAMES].reverse()) {
      const file = join(dir, name);
      if (!existsSync(file)) continue;
      vars = { ...vars, ...parseEnvFile(readFileSync(file, 'utf8'), file) };
      files.push(file);
    }
  }
  return { vars, files };
}

/**
 * NCCL_* variables, PATH and LD_LIBRARY_PATH (which DeepSpeed forgets to carry to remote hosts) and
 * the registry's worker settings (src/settings/index.ts: user-facing, read by workers, never a token).
 */
export function carriedEnv(env: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) {
    if (v === undefined) continue;
    if (k.startsWith('NCCL_') || k === 'PATH' || k === 'LD_LIBRARY_PATH') out[k] = v;
  }
  return { ...out, ...forwardedEnv(env) };
}

export function rankVars(placement: Placement, r: RankPlacement): Record<string, string> {
  return {
    RANK: String(r.rank),
    LOCAL_RANK: String(r.localRank),
    WORLD_SIZE: String(placement.worldSize),
    LOCAL_WORLD_SIZE: String(r.localWorldSize),
    NODE_RANK: String(r.nodeRank),
    MASTER_ADDR: placement.masterAddr,
    MASTER_PORT: String(placement.masterPort),
    CUDA_VISIBLE_DEVICES: r.gpu === null ? '' : String(r.gpu),
    CROSS_RANK: String(r.nodeRank),
    CROSS_SIZE: String(placement.numNodes),
    LOCAL_SIZE: String(r.localWorldSize),
  };
}
