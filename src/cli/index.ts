import { Command } from 'commander';

import { register as registerGenerate } from './generate.js';
import { register as registerRun } from './run.js';
import { register as registerHostfile } from './hostfile.js';
import { register as registerModel } from './model.js';
import { register as registerLaunch } from './launch.js';
import { register as registerStatus } from './status.js';
import { register as registerDemo } from './demo.js';
import { register as registerChat } from './chat.js';

// One file per command (src/cli/<name>.ts), each exporting `register(program)`.
// Add a command by importing its register function here; keep this file a plain list.
const registrars: Array<(program: Command) => void> = [registerGenerate, registerRun, registerHostfile, registerModel, registerLaunch, registerStatus, registerDemo, registerChat];

export async function main(argv: string[]): Promise<void> {
  const program = new Command();
  program
    .name('nodespeed')
    .description('Multi-node LLM inference: launch workers from a DeepSpeed hostfile and serve a Hugging Face model over gRPC')
    .version('0.1.0')
    .showHelpAfterError();
  for (const register of registrars) register(program);
  await program.parseAsync(argv);
}
