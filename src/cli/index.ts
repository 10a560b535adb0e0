import { Command, CommanderError } from 'commander';

import { register as registerGenerate } from './generate.js';
import { register as registerRun } from './run.js';
import { register as registerHostfile } from './hostfile.js';
import { register as registerModel } from './model.js';
import { register as registerLaunch } from './launch.js';
import { register as registerStatus } from './status.js';
import { register as registerDemo } from './demo.js';
import { register as registerChat } from './chat.js';
import { register as registerEnv } from './env.js';
import { AmbiguousOptionError, expandPrefixes } from './prefixes.js';
import { settings, unknownSettings } from '../settings/index.js';

// One file per command (src/cli/<name>.ts), each exporting `register(program)`.
// Add a command by importing its register function here; keep this file a plain list.
const registrars: Array<(program: Command) => void> = [registerGenerate, registerRun, registerHostfile, registerModel, registerLaunch, registerStatus, registerDemo,
  registerChat, registerEnv];

function fullName(c: Command): string {
  const names: string[] = [];
  for (let x: Command | null = c; x; x = x.parent) names.unshift(x.name());
  return names.join(' ');
}

function allCommands(c: Command): Command[] {
  return [c, ...c.commands.flatMap(allCommands)];
}

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('nodespeed')
    .description('Multi-node LLM inference: launch workers from a DeepSpeed hostfile and serve a Hugging Face model over gRPC')
    .version('0.1.0')
    .exitOverride();
  for (const register of registrars) register(program);
  // Every command but `env` (which shows them) checks the NODESPEED_* variables before it starts:
  // a bad value stops it with a message naming the variable, a name that is no setting is reported.
  program.hook('preAction', (_, action) => {
    if (action.name() === 'env' && action.parent === program) return;
    settings();
    for (const name of unknownSettings()) process.stderr.write(`nodespeed: ${name} is not a nodespeed setting and is ignored (\`nodespeed env\` lists them)\n`);
  });
  // A usage error prints the error and where the usage is, not the whole help (100 lines for launch).
  for (const c of allCommands(program)) c.exitOverride().showHelpAfterError(`(run '${fullName(c)} --help' for usage)`);
  return program;
}

/** Runs the CLI; resolves with the exit code (the caller flushes stdout/stderr before exiting). */
export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  let cmd = program;
  let i = 2;
  for (let sub: Command | undefined; i < argv.length && (sub = cmd.commands.find((c) => c.name() === argv[i])); i++) cmd = sub;
  const passThrough = (cmd as unknown as { _passThroughOptions: boolean })._passThroughOptions;
  try {
    await program.parseAsync([...argv.slice(0, i), ...expandPrefixes(cmd, argv.slice(i), passThrough)]);
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode;
    if (err instanceof AmbiguousOptionError) {
      process.stderr.write(`error: ${err.message}\n(run '${fullName(cmd)} --help' for usage)\n`);
      return 2;
    }
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  }
  return Number(process.exitCode ?? 0);
}
