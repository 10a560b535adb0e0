// `nodespeed demo` (and `npm start`): the embedded default. Launches 2 CPU workers on this machine
// as TP=2 with the bundled demo model (models/py-tiny), sends a prompt through the gRPC API,
// streams the answer, prints the layout and tokens/s, and shuts everything down.
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { Command } from 'commander';

import { NodespeedClient } from '../client/index.js';
import { describeLayout } from '../coordinator/layout.js';
import { settings } from '../settings/index.js';
import { addLauncherOptions } from '../launcher/flags.js';
import { addServingOptions, startFromFlags } from './launch.js';
import type { LaunchFlags } from './launch.js';
import { I32_MAX, intArg } from './args.js';
import { flushAndExit } from './exit.js';

const packageRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const DEMO_MODEL = join(packageRoot, 'models', 'py-tiny');
const DEMO_PROMPT = 'class Stack:\n    def __init__(self):\n';

export function register(program: Command): void {
  const cmd = program
    .command('demo')
    .description('Serve the bundled demo model on 2 local CPU workers (TP=2), stream one answer over gRPC, shut down')
    .option('--model <dir>', 'model folder', DEMO_MODEL)
    .option('--prompt <text>', 'prompt to complete', DEMO_PROMPT)
    .option('--max-tokens <n>', 'tokens to generate', intArg('--max-tokens', 1, I32_MAX), 64);
  // The demo's own defaults, shown as such by --help: TP=2 on the CPU, any free port on loopback,
  // and as many CPU workers as the layout needs.
  addServingOptions(cmd, { tp: 2, device: 'cpu', port: 0, httpPort: 0, bind: '127.0.0.1' });
  addLauncherOptions(cmd, { descriptions: { num_cpu_workers: 'CPU workers on this machine when there is no hostfile (default: --tp x --pp)' } });
  cmd.action(async (o: LaunchFlags & { prompt: string; maxTokens: number } & Record<string, unknown>) => {
    const maxTokens = o.maxTokens;
    if (o.num_cpu_workers === undefined && o.numCpuWorkers === undefined && !o.hostfile) o.num_cpu_workers = String(o.tp * o.pp);
    const quiet = (line: string) => {
      if (settings().demoVerbose) process.stderr.write(`${line}\n`);
    };
    const t0 = performance.now();
    process.stderr.write(`nodespeed demo: starting ${o.tp * o.pp} CPU worker(s) with ${o.model}\n`);
    const cluster = await startFromFlags(o, o, quiet);
    const stop = () => void cluster.stop('demo interrupted').then(() => flushAndExit(130));
    process.once('SIGINT', stop);
    const client = new NodespeedClient(cluster.address);
    try {
      const up = (performance.now() - t0) / 1000;
      process.stdout.write(`serving at ${cluster.address} (ready in ${up.toFixed(1)} s)\n${describeLayout(cluster.layout).join('\n')}\n\n`);
      process.stdout.write(`prompt: ${JSON.stringify(o.prompt)}\n\n${o.prompt}`);
      let first: number | undefined;
      let n = 0;
      const start = performance.now();
      for await (const m of client.generate({ prompt: o.prompt, maxTokens, ignoreEos: false })) {
        first ??= performance.now();
        n += m.tokenIds.length;
        process.stdout.write(m.text);
      }
      const end = performance.now();
      const decodeS = (end - first!) / 1000;
      process.stdout.write(`\n\n${n} tokens in ${((end - start) / 1000).toFixed(2)} s: ` +
        `time to first token ${(first! - start).toFixed(0)} ms, ${n > 1 ? ((n - 1) / decodeS).toFixed(1) : '-'} tokens/s decoding ` +
        `(${cluster.layout.replicas} replica x pp ${cluster.layout.groups[0]!.pp} x tp ${cluster.layout.groups[0]!.tp} on ${cluster.layout.world} ` +
        `${cluster.layout.groups[0]!.serving.device.toUpperCase()} worker(s))\n`);
    } finally {
      client.close();
      process.off('SIGINT', stop);
      await cluster.stop('demo finished');
    }
  });
}
