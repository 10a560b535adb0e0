// Line-preserving hostfile edits: comments, blank lines and the order of untouched lines survive.
import { existsSync, writeFileSync } from 'node:fs';
import { hostNameProblem, parseHostfileLines, readHostfileText, slotsProblem, splitComment, HostfileError, type ParsedLine } from './hostfile.js';

export interface HostfileDoc {
  file: string;
  lines: ParsedLine[];
}

function checkSlots(slots: number, file: string): void {
  const problem = Number.isInteger(slots) ? slotsProblem(String(slots)) : `slots must be a positive integer, got '${slots}'`;
  if (problem) throw new HostfileError([{ file, line: 0, message: `--${problem}` }]);
}

function checkHostName(host: string, file: string): void {
  const problem = hostNameProblem(host);
  if (problem) throw new HostfileError([{ file, line: 0, message: problem }]);
}

export function openHostfile(file: string, { create = false } = {}): HostfileDoc {
  if (create && !existsSync(file)) return { file, lines: [] };
  const text = readHostfileText(file);
  try {
    return { file, lines: parseHostfileLines(text, file) };
  } catch (err) {
    // An otherwise empty file is a fine starting point for `add`.
    if (create && err instanceof HostfileError && err.issues.every((i) => i.line === 0)) {
      return { file, lines: text.split(/\r?\n/).filter((_, i, a) => i < a.length - 1 || a[i] !== '').map((raw) => ({ entry: null, raw })) };
    }
    throw err;
  }
}

export function saveHostfile(doc: HostfileDoc): void {
  writeFileSync(doc.file, doc.lines.map((l) => l.raw).join('\n') + '\n');
}

function findHost(doc: HostfileDoc, host: string): number {
  return doc.lines.findIndex((l) => l.entry?.host === host);
}

function formatEntry(host: string, slots: number, attrs: Record<string, string>): string {
  return [host, `slots=${slots}`, ...Object.entries(attrs).map(([k, v]) => `${k}=${v}`)].join(' ');
}

export function addHost(doc: HostfileDoc, host: string, slots: number, attrs: Record<string, string> = {}): void {
  checkHostName(host, doc.file);
  checkSlots(slots, doc.file);
  const at = findHost(doc, host);
  if (at >= 0) throw new HostfileError([{ file: doc.file, line: at + 1, message: `host '${host}' already exists (use 'set')` }]);
  const raw = formatEntry(host, slots, attrs);
  doc.lines.push({ raw, entry: { host, slots, attrs, line: doc.lines.length + 1 } });
}

export function removeHost(doc: HostfileDoc, host: string): void {
  const at = findHost(doc, host);
  if (at < 0) throw new HostfileError([{ file: doc.file, line: 0, message: `host '${host}' is not in the hostfile` }]);
  doc.lines.splice(at, 1);
}

/** Rewrites only the slots=N token of the host's line; other tokens and a trailing comment stay. */
export function setHostSlots(doc: HostfileDoc, host: string, slots: number): void {
  checkSlots(slots, doc.file);
  const at = findHost(doc, host);
  const line = doc.lines[at];
  if (!line?.entry) throw new HostfileError([{ file: doc.file, line: 0, message: `host '${host}' is not in the hostfile` }]);
  const { content, comment } = splitComment(line.raw);
  const replaced = content.replace(/(^|\s)slots=\S*/, `$1slots=${slots}`);
  line.raw = replaced + comment;
  line.entry = { ...line.entry, slots };
}
