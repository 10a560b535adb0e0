// `nodespeed run [launcher flags] <program> [args...]`: the generic launcher, like `deepspeed script.py`.
import { Command } from 'commander';
import { buildCommand } from '../launcher/command.js';
import { attachConsole, dryRunCommands, placementTable } from '../launcher/format.js';
import { Job } from '../launcher/supervisor.js';
import { addLauncherOptions, planFromOptions, readLauncherOptions } from './launcher-flags.js';

export function register(program: Command): void {
  // Needed so options after <program> belong to the program, not to us (passThroughOptions).
  program.enablePositionalOptions();
  const cmd = program
    .command('run')
    .description('start <program> once per slot on every host of the hostfile (local hosts directly, others over SSH)')
    .argument('<program>', 'program to run; .js/.mjs/.cjs files run with --node')
    .argument('[args...]', 'arguments passed to the program')
    .passThroughOptions();
  addLauncherOptions(cmd).action(async (prog: string, args: string[], raw: Record<string, unknown>) => {
    process.exitCode = await runCommand(prog, args, raw);
    process.exit();
  });
}

async function runCommand(prog: string, args: string[], raw: Record<string, unknown>): Promise<number> {
  let job: Job;
  try {
    const o = readLauncherOptions(raw);
    const placement = planFromOptions(o);
    job = new Job({ placement, command: buildCommand(prog, args, o.node), cwd: process.cwd(), remoteWorkdir: o.remoteWorkdir, ssh: o.ssh, logDir: o.logDir });
    if (o.dryRun) {
      console.log(placementTable(placement));
      console.log(dryRunCommands(job, o.ssh, process.cwd(), o.remoteWorkdir));
      return 0;
    }
    console.error(`nodespeed: starting ${placement.worldSize} rank(s) on ${placement.numNodes} host(s)`);
  } catch (err) {
    console.error(`nodespeed run: ${(err as Error).message}`);
    return 1;
  }
  attachConsole(job);
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals): void => {
    signals++;
    if (signals > 1) console.error(`nodespeed: ${sig} again, teardown already in progress`);
    void job.stop(`received ${sig}`, sig === 'SIGINT' ? 130 : 143);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    await job.start();
  } catch (err) {
    const res = await job.done;
    console.error(`nodespeed run: ${res.reason === 'start failed' ? (err as Error).message : res.reason}`);
    return res.code;
  }
  const res = await job.done;
  if (res.code !== 0) console.error(`nodespeed: ${res.reason}; all ranks stopped`);
  return res.code;
}
