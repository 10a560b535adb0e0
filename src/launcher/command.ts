// What a rank runs, as DeepSpeed's launch.py builds it: `nodespeed run train.py a b` runs
// `python3 -u train.py --local_rank=N a b`, `--module pkg.mod` runs `python3 -u -m pkg.mod ...`,
// a .js/.mjs/.cjs program runs with Node, anything else (or any program with --no_python) as given.
import type { RankPlacement } from './plan.js';

export interface CommandOptions {
  /** Node binary for .js/.mjs/.cjs programs (default: this one). */
  node?: string;
  /** Python for .py programs and --module (default python3). */
  python?: string;
  /** Execute the program directly, whatever its extension. */
  noPython?: boolean;
  /** The program is a Python module name (`python -u -m`). */
  module?: boolean;
}

/** The interpreter (if any) and the program: everything before the program's own arguments. */
export function programArgv(program: string, o: CommandOptions = {}): string[] {
  if (o.module && o.noPython) throw new Error("--no_python and --module exclude each other (a module needs 'python -m')");
  if (o.noPython) return [program];
  if (o.module) return [o.python ?? 'python3', '-u', '-m', program];
  if (/\.py$/.test(program)) return [o.python ?? 'python3', '-u', program];
  if (/\.(c|m)?js$/.test(program)) return [o.node ?? process.execPath, program];
  return [program];
}

export function buildCommand(program: string, args: string[], o: CommandOptions | string = {}): string[] {
  return [...programArgv(program, typeof o === 'string' ? { node: o } : o), ...args];
}

/** Per rank: DeepSpeed puts `--local_rank=N` right after the program, before its arguments. */
export function rankCommand(program: string, args: string[], o: CommandOptions & { localRankArg?: boolean } = {}): (r: RankPlacement) => string[] {
  const head = programArgv(program, o);
  return (r) => [...head, ...(o.localRankArg === false ? [] : [`--local_rank=${r.localRank}`]), ...args];
}
