#!/usr/bin/env node
// `npm run lint:deps`: the import arrows between src/'s parts run one way and form no cycle.
// Data flows cli → launcher → coordinator → worker → engine → native; protocol/ (the wire) is
// below all of them, model/ and comm/ are shared lower layers, client/ is the public gRPC client.
// Each part lists what it may import (docs/ARCHITECTURE.md shows the same table); "types" allows
// type-only imports (`import type`, `export type ... from`). Any cycle of runtime imports between files fails too.
// Exits 1 naming each file, line and rule broken.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

import ts from 'typescript';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const SRC = join(root, 'src');

// settings/ (the NODESPEED_* registry) imports nothing; every part may read its settings.
const SETTINGS = { settings: 'any' };

/** Part → the parts it may import (besides itself): 'any' or 'types' (type-only imports). */
export const ALLOWED = {
  cli: { launcher: 'any', coordinator: 'any', client: 'any', engine: 'any', model: 'any', native: 'any', protocol: 'any', ...SETTINGS },
  launcher: { coordinator: 'any', model: 'any', protocol: 'any', ...SETTINGS },
  coordinator: { model: 'any', protocol: 'any', ...SETTINGS },
  worker: { engine: 'any', comm: 'any', model: 'any', native: 'any', protocol: 'any', ...SETTINGS },
  engine: { model: 'any', native: 'any', protocol: 'any', ...SETTINGS },
  client: { protocol: 'any', ...SETTINGS },
  comm: { native: 'any', ...SETTINGS },
  // The step codec carries the addon's per-sequence step input.
  protocol: { native: 'types', ...SETTINGS },
  // The addon's shard config is the model's shard plan.
  native: { model: 'types', ...SETTINGS },
  model: { ...SETTINGS },
  settings: {},
  // src/index.ts and src/rankinfo.ts: the library's entry re-exports whatever it offers.
  '.': 'all',
};

/**
 * Arrows that break a rule until a change under way removes them; one that is no longer there is
 * an error too, so this list cannot go stale.
 */
export const PENDING = [];

function sourceFiles(dir) {
  const out = [];
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...sourceFiles(p));
    else if (name.endsWith('.ts') && !name.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

/** The part a file of src/ belongs to: its first folder, or '.' for files directly in src/. */
function partOf(file) {
  const rel = relative(SRC, file).split(sep);
  return rel.length > 1 ? rel[0] : '.';
}

/** Every relative import of a file: target file, line, and whether it is type-only. */
function importsOf(file) {
  const text = readFileSync(file, 'utf8');
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, false, ts.ScriptKind.TS);
  const found = [];
  const add = (spec, node, typeOnly) => {
    if (!spec.startsWith('.')) return;
    const target = resolve(dirname(file), spec.replace(/\.js$/, '.ts'));
    found.push({ target, line: sf.getLineAndCharacterOfPosition(node.getStart(sf)).line + 1, typeOnly, spec });
  };
  const visit = (node) => {
    if (ts.isImportDeclaration(node) && ts.isStringLiteral(node.moduleSpecifier)) {
      const c = node.importClause;
      const typeOnly = !!c && (c.isTypeOnly || (!c.name && !!c.namedBindings && ts.isNamedImports(c.namedBindings) &&
        c.namedBindings.elements.length > 0 && c.namedBindings.elements.every((e) => e.isTypeOnly)));
      add(node.moduleSpecifier.text, node, typeOnly);
    } else if (ts.isExportDeclaration(node) && node.moduleSpecifier && ts.isStringLiteral(node.moduleSpecifier)) {
      add(node.moduleSpecifier.text, node, node.isTypeOnly);
    } else if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword && node.arguments[0] && ts.isStringLiteral(node.arguments[0])) {
      add(node.arguments[0].text, node, false);
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return found;
}

/** Strongly connected components of more than one file (or a file importing itself): Tarjan. */
function cycles(graph) {
  let index = 0;
  const idx = new Map(), low = new Map(), stack = [], on = new Set(), out = [];
  const strong = (v) => {
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    on.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!idx.has(w)) {
        strong(w);
        low.set(v, Math.min(low.get(v), low.get(w)));
      } else if (on.has(w)) low.set(v, Math.min(low.get(v), idx.get(w)));
    }
    if (low.get(v) === idx.get(v)) {
      const comp = [];
      let w;
      do {
        w = stack.pop();
        on.delete(w);
        comp.push(w);
      } while (w !== v);
      if (comp.length > 1 || (graph.get(v) ?? new Set()).has(v)) out.push(comp.sort());
    }
  };
  for (const v of graph.keys()) if (!idx.has(v)) strong(v);
  return out;
}

export function lint() {
  const problems = [];
  const rel = (f) => relative(root, f);
  const graph = new Map();
  const pendingSeen = new Set();
  for (const file of sourceFiles(SRC)) {
    const from = partOf(file);
    const edges = new Set();
    graph.set(file, edges);
    for (const imp of importsOf(file)) {
      // Cycles matter where modules load: type-only imports are erased (a recursive message of the
      // generated wire types, such as a batch of messages inside a message, is not a cycle).
      if (!imp.typeOnly) edges.add(imp.target);
      if (!imp.target.startsWith(SRC + sep)) {
        problems.push(`${rel(file)}:${imp.line}: imports ${imp.spec}, outside src/`);
        continue;
      }
      const to = partOf(imp.target);
      const rules = ALLOWED[from];
      if (to === from || rules === 'all') continue;
      const allowed = rules?.[to];
      if (allowed === 'any' || (allowed === 'types' && imp.typeOnly)) continue;
      const pending = PENDING.find((p) => p.from === rel(file) && p.to === rel(imp.target));
      if (pending) {
        pendingSeen.add(pending);
        continue;
      }
      const may = Object.entries(rules ?? {}).map(([p, k]) => (k === 'types' ? `${p} (types only)` : p)).join(', ') || 'nothing else';
      problems.push(`${rel(file)}:${imp.line}: ${from}/ may not import ${to}/${allowed === 'types' ? ' except types' : ''} ` +
        `(${imp.spec}); ${from}/ may import ${may}`);
    }
  }
  for (const p of PENDING)
    if (!pendingSeen.has(p)) problems.push(`scripts/lint-deps.mjs: the pending arrow ${p.from} → ${p.to} is gone; remove it from PENDING`);
  for (const comp of cycles(graph)) problems.push(`import cycle among ${comp.map(rel).join(', ')}`);
  return { problems, pending: [...pendingSeen] };
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { problems, pending } = lint();
  for (const p of pending) process.stderr.write(`lint:deps: allowed for now: ${p.from} → ${p.to} (${p.why})\n`);
  if (problems.length) {
    process.stderr.write(`lint:deps: ${problems.length} problem(s)\n  ${problems.join('\n  ')}\n`);
    process.exit(1);
  }
}
