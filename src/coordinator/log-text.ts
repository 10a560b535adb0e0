// Text that comes from outside (a worker's Join, its engine description and error messages, a
// client's request fields) is escaped before it reaches a log line: no line break, carriage
// return or terminal control sequence can forge a line (a fake `failover:` event) or rewrite the
// terminal, and it is cut to a bounded length.

const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

/** `s` with control, line-separator and bidi-override characters escaped (\n, \x1b, \u2028...), at most `max` characters. */
export function printable(s: unknown, max = 200): string {
  const text = String(s);
  const cut = text.length > max ? `${text.slice(0, max)}…(${text.length} chars)` : text;
  return cut.replace(CONTROL, (c) => {
    if (c === '\n') return '\\n';
    if (c === '\r') return '\\r';
    if (c === '\t') return '\\t';
    const code = c.charCodeAt(0);
    return code < 0x100 ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
  });
}
