// Per-rank environment: the rank variables, NCCL_* / PATH / LD_LIBRARY_PATH and the registry's
// worker settings carried from the launcher, and KEY=VALUE files (.nodespeed_env, DeepSpeed's
// .deepspeed_env) from the working and home directories.
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { forwardedEnv, REGISTRY } from '../settings/index.js';
import type { Placement, RankPlacement } from './plan.js';

export const JOB_TOKEN_VAR = REGISTRY.jobToken.name;

export class EnvFileError extends Error {
  override name = 'EnvFileError';
}

const KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** A value as the rank's shell builds it: literal text and `$NAME` references, expanded on the rank's host. */
export type ShellValue = Array<{ text: string } | { ref: string }>;

export interface EnvAssign {
  key: string;
  value: ShellValue;
  /** file:line, for messages. */
  where: string;
}

/** DeepSpeed's MultiNodeRunner.add_export: a value with a character outside [\w@%+=:,./-] is wrapped in "..." */
export function deepspeedWord(value: string): string {
  return /[^\w@%+=:,./-]/.test(value) ? `"${value}"` : value;
}

/**
 * Evaluates `word` as the POSIX shell evaluates the right side of `export KEY=word`: quotes removed,
 * `$NAME`/`${NAME}` kept as references (expanded on the rank's host), backslash escapes applied. What
 * the shell would turn into something else than one plain value is refused: a split into several
 * words, command substitution, other expansions, an operator, an unterminated quote.
 */
export function shellValue(word: string): ShellValue {
  const out: ShellValue = [];
  const lit = (t: string): void => {
    const last = out[out.length - 1];
    if (last && 'text' in last) last.text += t;
    else out.push({ text: t });
  };
  let mode: 'plain' | 'dq' | 'sq' = 'plain';
  for (let i = 0; i < word.length; i++) {
    const c = word[i]!;
    if (mode === 'sq') {
      if (c === "'") mode = 'plain';
      else lit(c);
      continue;
    }
    if (c === '`') throw new Error('command substitution (`...`) is not supported');
    if (c === '\\') {
      const n = word[i + 1];
      if (n === undefined) lit(c);
      else if (mode === 'plain' || '$`"\\\n'.includes(n)) {
        if (n !== '\n') lit(n);
        i++;
      } else lit(c);
      continue;
    }
    if (c === '$') {
      const rest = word.slice(i + 1);
      const m = /^([A-Za-z_][A-Za-z0-9_]*)/.exec(rest) ?? /^\{([A-Za-z_][A-Za-z0-9_]*)\}/.exec(rest);
      if (m) {
        out.push({ ref: m[1]! });
        i += m[0].length;
      } else if (rest.startsWith('(')) {
        throw new Error('command substitution ($(...)) is not supported');
      } else if (rest.startsWith('{') || /^[0-9@*#?$!-]/.test(rest)) {
        const shown = rest.startsWith('{') && rest.includes('}') ? rest.slice(0, rest.indexOf('}') + 1) : rest.slice(0, 1);
        throw new Error(`only $NAME and \${NAME} expansions are supported, got '$${shown}'`);
      } else lit(c);
      continue;
    }
    if (mode === 'dq') {
      if (c === '"') mode = 'plain';
      else lit(c);
      continue;
    }
    if (c === '"') mode = 'dq';
    else if (c === "'") mode = 'sq';
    else if (/\s/.test(c)) throw new Error('the shell splits it into several words');
    else if (';&|<>()'.includes(c)) throw new Error(`'${c}' outside quotes ends the shell command`);
    else lit(c);
  }
  if (mode !== 'plain') throw new Error(`unterminated ${mode === 'dq' ? 'double' : 'single'} quote`);
  return out.length ? out : [{ text: '' }];
}

/** The value with references expanded from `env` (an unset variable is empty, as in the shell). */
export function expandShellValue(v: ShellValue, env: Record<string, string | undefined>): string {
  return v.map((p) => ('text' in p ? p.text : (env[p.ref] ?? ''))).join('');
}

/**
 * Parses an env file as DeepSpeed's launcher reads .deepspeed_env: each line `KEY=VALUE` split at the
 * first `=`, key and value stripped of surrounding blanks, the value exported through the shell as
 * add_export quotes it — so `'x'` keeps its quotes, `"x"` loses them, `$HOME` expands on the rank's host.
 * Beyond DeepSpeed (which crashes on them): `#` comments, blank lines, a leading `export `. A value the
 * shell would mangle (split, command substitution) is an error naming file, line and key.
 */
export function parseEnvFileAssigns(text: string, file: string): EnvAssign[] {
  const out: EnvAssign[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const body = /^export\s/.test(line) ? line.slice(7).trimStart() : line;
    const eq = body.indexOf('=');
    if (eq < 0) throw new EnvFileError(`${file}:${i + 1}: expected KEY=VALUE, got '${line}'`);
    const key = body.slice(0, eq).trim();
    if (!KEY.test(key)) throw new EnvFileError(`${file}:${i + 1}: '${key}' is not a valid variable name`);
    const word = deepspeedWord(body.slice(eq + 1).trim());
    try {
      out.push({ key, value: shellValue(word), where: `${file}:${i + 1}` });
    } catch (err) {
      throw new EnvFileError(`${file}:${i + 1}: ${key}: DeepSpeed's launcher exports this value as ${key}=${word}, and ${(err as Error).message}`);
    }
  });
  return out;
}

/** Like parseEnvFileAssigns, with each value expanded against `env` (this machine's environment by default). */
export function parseEnvFile(text: string, file: string, env: Record<string, string | undefined> = process.env): Record<string, string> {
  return resolveAssigns(parseEnvFileAssigns(text, file), env);
}

/** Values in order: a later line sees an earlier one, as in the shell that runs the exports. */
export function resolveAssigns(assigns: EnvAssign[], env: Record<string, string | undefined> = process.env): Record<string, string> {
  const scope: Record<string, string | undefined> = { ...env };
  const out: Record<string, string> = {};
  for (const a of assigns) out[a.key] = scope[a.key] = expandShellValue(a.value, scope);
  return out;
}

/** DeepSpeed's env file name: $DS_ENV_FILE (a name, or a path) or .deepspeed_env. */
export function deepspeedEnvName(env: NodeJS.ProcessEnv = process.env): string {
  return env.DS_ENV_FILE || '.deepspeed_env';
}

/**
 * Loads every env file that exists, lowest precedence first: home/.deepspeed_env, home/.nodespeed_env,
 * cwd/.deepspeed_env, cwd/.nodespeed_env (DeepSpeed reads home then cwd, the later winning). DS_ENV_FILE
 * replaces .deepspeed_env as DeepSpeed's does: joined to each directory, so an absolute path is read once.
 */
export function loadEnvFiles(cwd: string = process.cwd(), home: string = homedir(), env: NodeJS.ProcessEnv = process.env):
  { vars: Record<string, string>; assigns: EnvAssign[]; files: string[] } {
  const files: string[] = [];
  const dirs = cwd === home ? [home] : [home, cwd];
  const assigns: EnvAssign[] = [];
  for (const dir of dirs) {
    for (const name of [deepspeedEnvName(env), '.nodespeed_env']) {
      const file = isAbsolute(name) ? name : join(dir, name);
      if (files.includes(file) || !existsSync(file)) continue;
      assigns.push(...parseEnvFileAssigns(readFileSync(file, 'utf8'), file));
      files.push(file);
    }
  }
  return { vars: resolveAssigns(assigns, env), assigns, files };
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

/**
 * CUDA_VISIBLE_DEVICES of a rank: 'node' gives every rank the GPUs its node uses (DeepSpeed's launch.py:
 * scripts pick theirs with torch.cuda.set_device(LOCAL_RANK)); 'rank' gives a rank only its own GPU
 * (nodespeed's workers). Empty for CPU ranks.
 */
export type VisibleDevices = 'node' | 'rank';

export function rankVars(placement: Placement, r: RankPlacement, devices: VisibleDevices = 'node'): Record<string, string> {
  return {
    RANK: String(r.rank),
    LOCAL_RANK: String(r.localRank),
    WORLD_SIZE: String(placement.worldSize),
    LOCAL_WORLD_SIZE: String(r.localWorldSize),
    NODE_RANK: String(r.nodeRank),
    MASTER_ADDR: placement.masterAddr,
    MASTER_PORT: String(placement.masterPort),
    CUDA_VISIBLE_DEVICES: r.gpu === null ? '' : devices === 'rank' ? String(r.gpu) : (r.nodeGpus ?? [r.gpu]).join(','),
    CROSS_RANK: String(r.nodeRank),
    CROSS_SIZE: String(placement.numNodes),
    LOCAL_SIZE: String(r.localWorldSize),
  };
}
