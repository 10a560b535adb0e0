import { Command, CommanderError } from 'commander';

import { AmbiguousOptionError, expandPrefixes } from './prefixes.js';
import { settings, unknownSettings } from '../settings/index.js';

type Registrar = (program: Command) => void;

// One file per command (src/cli/<name>.ts), each exporting `register(program)`.
// Add a command by adding its loader here; keep this file a plain list, in the order `--help` shows them.
// Only the command being run is imported (all of them for the help and for usage errors): the
// launcher, the engine and gRPC take ~0.5 s to import, which `run`, `hostfile`, `model` and `env`
// need not pay on every start — `run` starts one of itself per node.
const commands: Record<string, () => Promise<{ register: Registrar }>> = {
  generate: () => import('./generate.js'),
  run: () => import('./run.js'),
  hostfile: () => import('./hostfile.js'),
  model: () => import('./model.js'),
  launch: () => import('./launch.js'),
  status: () => import('./status.js'),
  demo: () => import('./demo.js'),
  chat: () => import('./chat.js'),
  env: () => import('./env.js'),
};

/** The register functions of `names` (every command when none is given), in the list's order. */
async function registrars(names: string[] = Object.keys(commands)): Promise<Registrar[]> {
  return Promise.all(Object.keys(commands).filter((n) => names.includes(n)).map(async (n) => (await commands[n]!()).register));
}

function fullName(c: Command): string {
  const names: string[] = [];
  for (let x: Command | null = c; x; x = x.parent) names.unshift(x.name());
  return names.join(' ');
}

function allCommands(c: Command): Command[] {
  return [c, ...c.commands.flatMap(allCommands)];
}

/** The program with the commands named (by default all of them). */
export async function buildProgram(names?: string[]): Promise<Command> {
  const register = await registrars(names);
  const program = new Command();
  program
    .name('nodespeed')
    .description('Multi-node LLM inference: launch workers from a DeepSpeed hostfile and serve a Hugging Face model over gRPC')
    .version('0.1.0')
    .exitOverride();
  for (const r of register) r(program);
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
  // The first argument names the command to load; anything else (--help, --version, a typo) loads all.
  const name = argv[2] !== undefined && Object.hasOwn(commands, argv[2]) ? argv[2] : undefined;
  const program = await buildProgram(name ? [name] : undefined);
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
