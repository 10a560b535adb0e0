// `nodespeed hostfile list|add|remove|set|validate|check`: view and edit a DeepSpeed hostfile.
import { Command, InvalidArgumentError } from 'commander';
import { loadHostfile, slotsProblem } from '../launcher/hostfile.js';
import { addHost, openHostfile, removeHost, saveHostfile, setHostSlots } from '../launcher/hostfile-edit.js';
import { checkHosts, checkReport, checkTable } from '../launcher/check.js';
import { table } from '../launcher/format.js';
import { readLauncherOptions } from '../launcher/flags.js';
import { intArg } from './args.js';

const FILE_FLAG = ['-H, --hostfile <file>', 'hostfile to use', 'hostfile'] as const;

/** Runs an action, printing errors (which name file and line) and setting a non-zero exit code. */
function guarded<A extends unknown[]>(fn: (...args: A) => Promise<number | void> | number | void) {
  return async (...args: A): Promise<void> => {
    try {
      const code = await fn(...args);
      if (code) process.exitCode = code;
    } catch (err) {
      console.error((err as Error).message);
      process.exitCode = 1;
    }
  };
}

function slotsArg(v: string): number {
  const problem = slotsProblem(v);
  if (problem) throw new InvalidArgumentError(`--${problem}`);
  return Number(v);
}

function attrsArg(v: string, prev: Record<string, string> = {}): Record<string, string> {
  const eq = v.indexOf('=');
  if (eq <= 0 || v.slice(0, eq) === 'slots') throw new Error(`--attr expects key=value (not slots), got '${v}'`);
  return { ...prev, [v.slice(0, eq)]: v.slice(eq + 1) };
}

export function register(program: Command): void {
  const hf = program.command('hostfile').description('list, edit, validate and check a DeepSpeed hostfile');

  hf.command('list').description('print the hosts and their slots').option(...FILE_FLAG).action(
    guarded(({ hostfile }: { hostfile: string }) => {
      const hosts = loadHostfile(hostfile);
      console.log(table(['HOST', 'SLOTS', 'ATTRIBUTES'], hosts.map((h) => [h.host, String(h.slots), Object.entries(h.attrs).map(([k, v]) => `${k}=${v}`).join(' ')])));
      console.log(`${hosts.length} host(s), ${hosts.reduce((n, h) => n + h.slots, 0)} slot(s)`);
    }),
  );

  hf.command('add').description('append a host').argument('<host>').requiredOption('--slots <n>', 'number of slots', slotsArg).option('--attr <key=value>', 'extra attribute (repeatable), e.g. device=cpu', attrsArg).option(...FILE_FLAG).action(
    guarded((host: string, o: { hostfile: string; slots: number; attr?: Record<string, string> }) => {
      const doc = openHostfile(o.hostfile, { create: true });
      addHost(doc, host, o.slots, o.attr ?? {});
      saveHostfile(doc);
    }),
  );

  hf.command('remove').description('remove a host').argument('<host>').option(...FILE_FLAG).action(
    guarded((host: string, o: { hostfile: string }) => {
      const doc = openHostfile(o.hostfile);
      removeHost(doc, host);
      saveHostfile(doc);
    }),
  );

  hf.command('set').description("change a host's slots").argument('<host>').requiredOption('--slots <n>', 'number of slots', slotsArg).option(...FILE_FLAG).action(
    guarded((host: string, o: { hostfile: string; slots: number }) => {
      const doc = openHostfile(o.hostfile);
      setHostSlots(doc, host, o.slots);
      saveHostfile(doc);
    }),
  );

  hf.command('validate').description('check the hostfile syntax; exits non-zero listing every error').option(...FILE_FLAG).action(
    guarded(({ hostfile }: { hostfile: string }) => {
      const hosts = loadHostfile(hostfile);
      console.log(`${hostfile}: ok, ${hosts.length} host(s), ${hosts.reduce((n, h) => n + h.slots, 0)} slot(s)`);
    }),
  );

  hf.command('check')
    .description('connect to every host over SSH in parallel: reachability, GPUs, Node version, install path')
    .option(...FILE_FLAG)
    .option('--ssh_port <port>', 'SSH port for every host')
    .option('--force_ssh', 'check local hosts through SSH too')
    .option('--ssh_accept_new', 'record unknown host keys')
    .option('--ssh_dir <dir>', 'directory used instead of ~/.ssh; env NODESPEED_SSH_DIR')
    .option('--ssh_identity <file>', 'private key to try first', (v: string, p: string[] = []) => [...p, v])
    .option('--known_hosts <file>', 'known_hosts file')
    .option('--ssh_connect_timeout <seconds>', 'connect deadline (default 10)')
    .option('--node <path>', 'Node binary expected on every host (default: this one)')
    .option('--concurrency <n>', 'hosts checked at once', intArg('--concurrency', 1, 4096), 64)
    .option('--all', 'list every host, also past 64 hosts (default there: the failed ones and a count per outcome)')
    .action(
      guarded(async (raw: Record<string, unknown>) => {
        const o = readLauncherOptions(raw);
        const hosts = loadHostfile(raw.hostfile as string);
        const results = await checkHosts(hosts.map((h) => h.host), { ssh: o.ssh, sshPort: o.sshPort, forceSsh: o.forceSsh, node: o.node }, raw.concurrency as number);
        console.log(raw.all ? checkTable(results) : checkReport(results));
        const failed = results.filter((r) => !r.ok).length;
        if (failed > 0) console.error(`${failed} of ${results.length} host(s) failed`);
        return failed > 0 ? 1 : 0;
      }),
    );
}
