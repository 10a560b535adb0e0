// argparse's abbreviations, which DeepSpeed's command lines rely on: `--num_node 2` means `--num_nodes 2`
// when no other flag of the command starts with `--num_node`. An abbreviation that fits several flags is
// an error listing them, as argparse's "ambiguous option". Spellings of one flag (`--num_gpus`,
// `--num-gpus`) count as one.
import type { Command, Option } from 'commander';

export class AmbiguousOptionError extends Error {}

const canonical = (long: string): string => long.replace(/-/g, '_');

/** The options of `cmd` by long name (with `--`), and whether each takes a value. */
function longOptions(cmd: Command): Map<string, Option> {
  const out = new Map<string, Option>();
  for (const o of cmd.options) if (o.long) out.set(o.long, o);
  return out;
}

/**
 * Rewrites abbreviated long options in `args` (the arguments after the command's name). Stops at `--`
 * and, for a command that passes its options through (`run`), at the first argument that is not an
 * option: what follows belongs to the program.
 */
export function expandPrefixes(cmd: Command, args: string[], passThrough: boolean): string[] {
  const options = longOptions(cmd);
  const out = [...args];
  for (let i = 0; i < out.length; i++) {
    const a = out[i]!;
    if (a === '--') break;
    if (!a.startsWith('--')) {
      if (!a.startsWith('-') || a === '-') {
        if (passThrough) break;
        continue;
      }
      // A short option: skip its value when it takes one and it is not attached (-H file, not -Hfile).
      const short = cmd.options.find((o) => o.short === a);
      if (short && (short.required || short.optional) && i + 1 < out.length) i++;
      continue;
    }
    const eq = a.indexOf('=');
    const name = eq < 0 ? a : a.slice(0, eq);
    let opt = options.get(name);
    if (!opt) {
      const hits = [...options.keys()].filter((l) => l.startsWith(name));
      const flags = [...new Set(hits.map(canonical))];
      if (flags.length > 1) throw new AmbiguousOptionError(`ambiguous option: ${name} could match ${hits.filter((h, j) => hits.findIndex((x) => canonical(x) === canonical(h)) === j).join(', ')}`);
      if (flags.length === 1) {
        const full = hits.find((h) => h.includes('_')) ?? hits[0]!;
        opt = options.get(full)!;
        out[i] = eq < 0 ? full : full + a.slice(eq);
      }
    }
    // Skip the option's value so a value that starts with -- is not read as an option.
    if (opt && eq < 0 && (opt.required || opt.optional) && i + 1 < out.length) i++;
  }
  return out;
}
