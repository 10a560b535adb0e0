import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { HostfileError, parseHostfile, loadHostfile } from '../../src/launcher/hostfile.js';
import { addHost, openHostfile, removeHost, saveHostfile, setHostSlots } from '../../src/launcher/hostfile-edit.js';

function issues(text: string): string[] {
  try {
    parseHostfile(text, 'hf');
  } catch (err) {
    expect(err).toBeInstanceOf(HostfileError);
    return (err as HostfileError).message.split('\n');
  }
  throw new Error('expected a HostfileError');
}

describe('hostfile parser', () => {
  it('reads DeepSpeed hostfiles: comments, blank lines, trailing comments, CRLF, extra attributes kept', () => {
    const hosts = parseHostfile('# cluster\n\nworker-1 slots=4\r\n  worker-2   slots=2 device=cpu # spare\n', 'hf');
    expect(hosts).toEqual([
      { host: 'worker-1', slots: 4, attrs: {}, line: 3 },
      { host: 'worker-2', slots: 2, attrs: { device: 'cpu' }, line: 4 },
    ]);
  });

  it.each([
    ['a slots=1\nb slots=2\na slots=3\n', "hf:3: duplicate host 'a' (first defined on line 1)"],
    ['a\n', "hf:1: missing slots=N for host 'a'"],
    ['a device=cpu\n', "hf:1: expected slots=N right after the host name 'a' (DeepSpeed's format), got 'device=cpu'"],
    ['a slots=0\n', "hf:1: slots must be a positive integer for host 'a', got 0"],
    ['a slots=-2\n', "hf:1: slots must be a positive integer for host 'a', got '-2'"],
    ['a slots=1.5\n', "hf:1: slots must be a positive integer for host 'a', got '1.5'"],
    ['a slots=two\n', "hf:1: slots must be a positive integer for host 'a', got 'two'"],
    ['a slots=\n', "hf:1: slots must be a positive integer for host 'a', got ''"],
    ['a slots=2 gpu\n', "hf:1: unknown token 'gpu' for host 'a' (expected slots=N or key=value)"],
    ['a slots=2 slots=3\n', "hf:1: slots given twice for host 'a'"],
    ['a slots=2 x=1 x=2\n', "hf:1: attribute 'x' given twice for host 'a'"],
    ['slots=2\n', "hf:1: expected a host name first, got 'slots=2'"],
    ['', 'hf: hostfile has no hosts'],
    ['# only comments\n\n', 'hf: hostfile has no hosts'],
  ])('rejects %j', (text, message) => {
    expect(issues(text)).toEqual([message]);
  });

  it('reports every error at once with its line', () => {
    expect(issues('a slots=0\n# ok\nb\nc slots=1 junk\n')).toEqual([
      "hf:1: slots must be a positive integer for host 'a', got 0",
      "hf:3: missing slots=N for host 'b'",
      "hf:4: unknown token 'junk' for host 'c' (expected slots=N or key=value)",
    ]);
  });

  it('names a missing file', () => {
    expect(() => loadHostfile('/nonexistent/hostfile')).toThrow('/nonexistent/hostfile: no such file');
  });
});

describe('hostfile editor', () => {
  const original = '# GPU boxes\nnode-a slots=8   # rack 1\n\n# spares\nnode-b slots=4 device=cpu\nnode-c slots=2\n';
  function tmpHostfile(text: string): string {
    const file = join(mkdtempSync(join(tmpdir(), 'hf-')), 'hostfile');
    writeFileSync(file, text);
    return file;
  }

  it('round-trips comments, blank lines and order untouched', () => {
    const file = tmpHostfile(original);
    saveHostfile(openHostfile(file));
    expect(readFileSync(file, 'utf8')).toBe(original);
  });

  it('set rewrites only the slots token; remove and add keep everything else', () => {
    const file = tmpHostfile(original);
    const doc = openHostfile(file);
    setHostSlots(doc, 'node-a', 6);
    removeHost(doc, 'node-c');
    addHost(doc, 'node-d', 3, { device: 'cpu' });
    saveHostfile(doc);
    expect(readFileSync(file, 'utf8')).toBe('# GPU boxes\nnode-a slots=6   # rack 1\n\n# spares\nnode-b slots=4 device=cpu\nnode-d slots=3 device=cpu\n');
    expect(loadHostfile(file).map((h) => [h.host, h.slots])).toEqual([['node-a', 6], ['node-b', 4], ['node-d', 3]]);
  });

  it('refuses duplicates, unknown hosts and bad slots with the file named', () => {
    const file = tmpHostfile(original);
    const doc = openHostfile(file);
    expect(() => addHost(doc, 'node-b', 1)).toThrow(`${file}:5: host 'node-b' already exists (use 'set')`);
    expect(() => removeHost(doc, 'nope')).toThrow(`${file}: host 'nope' is not in the hostfile`);
    expect(() => setHostSlots(doc, 'nope', 2)).toThrow(`${file}: host 'nope' is not in the hostfile`);
    expect(() => setHostSlots(doc, 'node-a', 0)).toThrow(`${file}: --slots must be a positive integer, got 0`);
    expect(() => addHost(doc, 'bad name', 1)).toThrow("invalid host name 'bad name'");
  });

  it('add creates a missing or empty hostfile but keeps its comments', () => {
    const dir = mkdtempSync(join(tmpdir(), 'hf-'));
    const fresh = openHostfile(join(dir, 'new'), { create: true });
    addHost(fresh, 'h1', 2);
    saveHostfile(fresh);
    expect(readFileSync(join(dir, 'new'), 'utf8')).toBe('h1 slots=2\n');
    const file = tmpHostfile('# empty for now\n');
    const doc = openHostfile(file, { create: true });
    addHost(doc, 'h2', 1);
    saveHostfile(doc);
    expect(readFileSync(file, 'utf8')).toBe('# empty for now\nh2 slots=1\n');
  });

  it('refuses to edit a broken hostfile, naming the line', () => {
    const file = tmpHostfile('a slots=1\nb slots=x\n');
    expect(() => openHostfile(file)).toThrow(`${file}:2: slots must be a positive integer for host 'b', got 'x'`);
  });
});
