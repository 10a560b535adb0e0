// Outside text in log lines: escaped so it cannot forge a line, and refusals summarised so a
// flood costs one line per second.
import { describe, expect, it } from 'vitest';

import { printable } from '../../src/coordinator/log-text.js';
import { RefusalLog } from '../../src/coordinator/refusals.js';

describe('log text', () => {
  it('escapes line breaks, terminal sequences and bidi overrides, and bounds the length', () => {
    expect(printable('host\nfailover: replica 0 lost')).toBe('host\\nfailover: replica 0 lost');
    expect(printable('a\r\x1b[2Kb\u2028c\u202ed\u0000')).toBe('a\\r\\x1b[2Kb\\u2028c\\u202ed\\x00');
    expect(printable('x'.repeat(300), 10)).toBe('xxxxxxxxxx…(300 chars)');
    expect(printable('日本語 é')).toBe('日本語 é');
  });

  it('2,000 refusals a second from one source: the first line at once, then one summary per second', async () => {
    const lines: string[] = [];
    const r = new RefusalLog((l) => lines.push(l), 200);
    for (let i = 0; i < 2000; i++) r.refused('10.0.0.5', 'a Join', 'wrong job token');
    r.refused('10.0.0.6', 'a Join\nfailover: forged', 'wrong job token');
    expect(lines).toEqual(['coordinator: refused a Join from 10.0.0.5: wrong job token',
      'coordinator: refused a Join\\nfailover: forged from 10.0.0.6: wrong job token']);
    await new Promise((res) => setTimeout(res, 300));
    expect(lines.slice(2)).toEqual(['coordinator: refused 1999 more from 10.0.0.5 in the last 0.2 s: wrong job token']);
    await new Promise((res) => setTimeout(res, 500));
    expect(lines).toHaveLength(3);
    expect(r.total).toBe(2001);
    r.dispose();
  });
});
