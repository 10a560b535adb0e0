// `nodespeed env [--json] [--all]`: the settings registry (src/settings/index.ts): every NODESPEED_*
// variable with its type, default, scope, this process's value and what it does. Bad values are
// shown with the reason instead of failing, so this is the command to run when another one refuses
// to start over a variable. Secrets are shown as <set>, never their value.
import { Command } from 'commander';

import { table } from '../launcher/format.js';
import { allSettings, defaultText, isForwarded, typeText, unknownSettings } from '../settings/index.js';
import type { Setting } from '../settings/index.js';

export interface SettingRow {
  name: string;
  type: string;
  default: string;
  scope: string;
  debug: boolean;
  forwarded: boolean;
  /** As set in the environment ('<set>' for a secret); undefined when unset. */
  value?: string;
  /** Why the value is rejected. */
  error?: string;
  doc: string;
}

export function settingRows(env: Record<string, string | undefined> = process.env): SettingRow[] {
  return allSettings().map((s: Setting<unknown>) => {
    const raw = env[s.name];
    const set = raw !== undefined && raw !== '';
    let error: string | undefined;
    if (set && s.scope !== 'build') {
      try {
        s.parse(raw);
      } catch (err) {
        error = (err as Error).message;
      }
    }
    return {
      name: s.name, type: typeText(s), default: defaultText(s), scope: s.scope, debug: !!s.debug, forwarded: isForwarded(s),
      ...(set ? { value: s.secret ? '<set>' : raw } : {}), ...(error ? { error } : {}), doc: s.doc,
    };
  });
}

const SCOPE_TEXT: Record<string, string> = {
  worker: 'read by workers; `launch` and `run` forward them to every rank',
  process: 'read by the one process or host they are set for; not forwarded',
  internal: 'set by nodespeed for the workers it starts',
  test: 'read by the GPU checks and benchmarks under test/ and bench/',
  build: 'read by `npm run build:native` (any non-empty value sets a flag)',
};

export function formatSettings(rows: SettingRow[], all: boolean, unknown: string[]): string {
  const out: string[] = [];
  for (const scope of Object.keys(SCOPE_TEXT)) {
    const mine = rows.filter((r) => r.scope === scope);
    if (!all && (scope === 'internal' || scope === 'test' || scope === 'build') && !mine.some((r) => r.value !== undefined)) continue;
    out.push(`${scope} settings: ${SCOPE_TEXT[scope]}`);
    out.push(table(['NAME', 'TYPE', 'DEFAULT', 'VALUE', 'WHAT'], mine.map((r) => [r.name, r.type, r.default,
      r.error ? `${r.value} (INVALID)` : r.value ?? '-', `${r.debug ? '[debug] ' : ''}${r.doc}`])));
    out.push('');
  }
  const bad = rows.filter((r) => r.error);
  if (bad.length) out.push('invalid values (every nodespeed command but this one refuses to start):', ...bad.map((r) => `  ${r.error}`), '');
  if (unknown.length) out.push(`not nodespeed settings (ignored): ${unknown.join(', ')}`, '');
  if (!all) out.push('(--all also lists the internal, test and build-time variables)');
  return out.join('\n').trimEnd() + '\n';
}

export function register(program: Command): void {
  program
    .command('env')
    .description('List the NODESPEED_* environment variables: type, default, scope, current value, what each does')
    .option('--json', 'print every entry as JSON', false)
    .option('--all', 'also list the internal, test and build-time variables', false)
    .action((o: { json: boolean; all: boolean }) => {
      const rows = settingRows();
      const unknown = unknownSettings();
      process.stdout.write(o.json ? `${JSON.stringify({ settings: rows, unknown }, null, 2)}\n` : formatSettings(rows, o.all, unknown));
    });
}
