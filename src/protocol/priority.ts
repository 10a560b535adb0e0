// A request's priority as a client gives it (GenerateRequest's `priority` oneof, the OpenAI API's
// `priority`, `generate --priority`): the name of a request class, or an integer as vLLM's
// priority scheduling takes it (lower runs first). Which classes exist, and which class an integer
// falls in, is the server's (coordinator/classes.ts).
export type Priority = { className: string } | { value: number };

/** A priority that breaks the rules: what is wrong with it. */
export class PriorityError extends RangeError {
  constructor(problem: string) {
    super(problem);
    this.name = 'PriorityError';
  }
}

const INT32_MIN = -(2 ** 31);
const INT32_MAX = 2 ** 31 - 1;
/** A class name: a letter, then letters, digits, '_' or '-' (at most 64). */
export const CLASS_NAME = /^[A-Za-z][A-Za-z0-9_-]{0,63}$/;

/** A class name or a 32-bit integer (a number, or its decimal text). */
export function parsePriority(raw: string | number): Priority {
  if (typeof raw === 'number') {
    if (!Number.isInteger(raw) || raw < INT32_MIN || raw > INT32_MAX) throw new PriorityError(`must be a class name or a 32-bit integer (got ${raw})`);
    return { value: raw };
  }
  const t = raw.trim();
  if (/^[+-]?\d+$/.test(t)) return parsePriority(Number(t));
  if (!CLASS_NAME.test(t)) throw new PriorityError(`must be a class name (realtime, standard, batch, ...) or an integer (got "${raw}")`);
  return { className: t };
}

/** GenerateRequest's oneof members for a priority. */
export function priorityToWire(p: Priority): { priorityClass: string } | { priorityValue: number } {
  return 'className' in p ? { priorityClass: p.className } : { priorityValue: p.value };
}
