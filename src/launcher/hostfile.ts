// DeepSpeed hostfile: `hostname slots=N [key=value ...]` per line, `#` comments, blank lines.
// DeepSpeed matches `^(\S+)\s+slots=(\d+)`: slots= right after the host, digits only. We accept the same
// lines (slots=+2 and `host max_slots=4 slots=2` are refused as DeepSpeed refuses them) and also report
// what it lets through silently (slots=0, trailing garbage), each with file and line.
import { readFileSync } from 'node:fs';

export interface HostEntry {
  host: string;
  slots: number;
  /** Extra `key=value` tokens, kept for later use (e.g. device=cpu). */
  attrs: Record<string, string>;
  /** The slot ids when they are not 0..slots-1 (this machine's visible GPUs, a --world_info node). */
  slotIds?: number[];
  /** 1-based line number in the hostfile. */
  line: number;
}

export interface HostfileIssue {
  file: string;
  line: number;
  message: string;
}

export class HostfileError extends Error {
  constructor(readonly issues: HostfileIssue[]) {
    super(issues.map((i) => (i.line > 0 ? `${i.file}:${i.line}: ${i.message}` : `${i.file}: ${i.message}`)).join('\n'));
    this.name = 'HostfileError';
  }
}

export interface ParsedLine {
  /** The host entry on this line, or null for comments/blank lines. */
  entry: HostEntry | null;
  raw: string;
}

/** Most slots one host may have: each slot is a process on that host. */
export const MAX_SLOTS = 1024;

/** Why `value` is not a slots count DeepSpeed and this launcher can use, or undefined. */
export function slotsProblem(value: string, where = ''): string | undefined {
  if (!/^\d+$/.test(value)) return `slots must be a positive integer${where}, got '${value}'`;
  const n = Number(value);
  if (n === 0) return `slots must be a positive integer${where}, got 0`;
  if (n > MAX_SLOTS) return `slots=${value}${where}: more than ${MAX_SLOTS} processes on one host`;
  return undefined;
}

/**
 * Why `host` cannot be a hostfile host, or undefined. `@` separates hosts in --include/--exclude, so a
 * name with one could never be selected (DeepSpeed splits on it too); `,` separates slots there and
 * hosts in pdsh's -w list.
 */
export function hostNameProblem(host: string): string | undefined {
  if (!/^[^\s#=]+$/.test(host)) return `invalid host name '${host}'`;
  if (host.includes('@') || host.includes(',')) {
    return `host name '${host}' contains '${host.includes('@') ? '@' : ','}', which --include/--exclude use as a separator, so it could not be selected (put a user name in ~/.ssh/config: Host/User)`;
  }
  if (host.length > 253) return `host name '${host.slice(0, 40)}...' is longer than 253 characters`;
  return undefined;
}

/** Splits a raw line into its content and a trailing `# comment` (kept by the editor). */
export function splitComment(raw: string): { content: string; comment: string } {
  const at = raw.search(/(^|\s)#/);
  if (at < 0) return { content: raw, comment: '' };
  const hash = raw.indexOf('#', at);
  return { content: raw.slice(0, hash), comment: raw.slice(hash) };
}

function parseLine(raw: string, lineNo: number, file: string, issues: HostfileIssue[]): HostEntry | null {
  const { content } = splitComment(raw);
  const tokens = content.trim().split(/\s+/).filter((t) => t.length > 0);
  if (tokens.length === 0) return null;
  const fail = (message: string): null => {
    issues.push({ file, line: lineNo, message });
    return null;
  };
  const [host, ...rest] = tokens as [string, ...string[]];
  if (host.includes('=')) return fail(`expected a host name first, got '${host}'`);
  const bad = hostNameProblem(host);
  if (bad) return fail(bad);
  let slots: number | undefined;
  const attrs: Record<string, string> = {};
  for (const [i, token] of rest.entries()) {
    const eq = token.indexOf('=');
    if (eq <= 0) return fail(`unknown token '${token}' for host '${host}' (expected slots=N or key=value)`);
    const key = token.slice(0, eq);
    const value = token.slice(eq + 1);
    if (key === 'slots') {
      if (slots !== undefined) return fail(`slots given twice for host '${host}'`);
      const problem = slotsProblem(value, ` for host '${host}'`);
      if (problem) return fail(problem);
      slots = Number(value);
    } else {
      if (i === 0) return fail(`expected slots=N right after the host name '${host}' (DeepSpeed's format), got '${token}'`);
      if (key in attrs) return fail(`attribute '${key}' given twice for host '${host}'`);
      if (value === '') return fail(`attribute '${key}' has no value for host '${host}'`);
      attrs[key] = value;
    }
  }
  if (slots === undefined) return fail(`missing slots=N for host '${host}'`);
  return { host, slots, attrs, line: lineNo };
}

/** Parses hostfile text; collects every problem and throws them together so `validate` can list all. */
export function parseHostfileLines(text: string, file: string): ParsedLine[] {
  const issues: HostfileIssue[] = [];
  const seen = new Map<string, number>();
  const lines = text.split(/\r?\n/);
  if (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
  const parsed: ParsedLine[] = lines.map((raw, i) => {
    const entry = parseLine(raw, i + 1, file, issues);
    if (entry) {
      const first = seen.get(entry.host);
      if (first !== undefined) {
        issues.push({ file, line: i + 1, message: `duplicate host '${entry.host}' (first defined on line ${first})` });
        return { entry: null, raw };
      }
      seen.set(entry.host, i + 1);
    }
    return { entry, raw };
  });
  if (issues.length === 0 && seen.size === 0) issues.push({ file, line: 0, message: 'hostfile has no hosts' });
  if (issues.length > 0) throw new HostfileError(issues);
  return parsed;
}

export function parseHostfile(text: string, file = '<hostfile>'): HostEntry[] {
  return parseHostfileLines(text, file).flatMap((l) => (l.entry ? [l.entry] : []));
}

export function readHostfileText(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new HostfileError([{ file: path, line: 0, message: code === 'ENOENT' ? 'no such file' : `cannot read (${code})` }]);
  }
}

export function loadHostfile(path: string): HostEntry[] {
  return parseHostfile(readHostfileText(path), path);
}
