// --world_info: the job's hosts and chosen slots, handed by the launcher to the nodespeed it starts on
// each node through pdsh/mpirun/srun (DeepSpeed's base64 world_info, with each host's attributes).
import type { HostEntry } from './hostfile.js';
import type { SelectedHost } from './select.js';

export function encodeWorldInfo(hosts: SelectedHost[]): string {
  return Buffer.from(JSON.stringify(hosts.map((h) => [h.host, h.slots, h.attrs]))).toString('base64url');
}

/** Decodes and checks it (it arrives on a command line); slots become the host's explicit slot list. */
export function decodeWorldInfo(b64: string): HostEntry[] {
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(b64, 'base64url').toString('utf8'));
  } catch {
    throw new Error('--world_info is not base64url-encoded JSON');
  }
  const ok = Array.isArray(v) && v.length > 0 && v.every((e) => Array.isArray(e) && typeof e[0] === 'string' && Array.isArray(e[1]) &&
    e[1].length > 0 && e[1].every((s: unknown) => Number.isInteger(s) && (s as number) >= 0 && (s as number) < 65536) &&
    typeof e[2] === 'object' && e[2] !== null && Object.values(e[2] as object).every((x) => typeof x === 'string'));
  if (!ok) throw new Error('--world_info: expected [[host, [slot, ...], {attributes}], ...]');
  return (v as Array<[string, number[], Record<string, string>]>).map(([host, slots, attrs], i) => ({
    host, slots: slots.length, slotIds: [...slots], attrs, line: i + 1,
  }));
}
