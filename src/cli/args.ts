// Argument parsers shared by the commands: integers checked against the range the wire (or a timer)
// carries, seconds, ports. Each error names the flag and the range.
import { InvalidArgumentError } from 'commander';
import { MAX_TIMER_MS, parseIntFlag, U32_MAX } from '../launcher/flags.js';

export { U32_MAX };
/** Largest value of an int32 field on the wire (the API's max_tokens). */
export const I32_MAX = 2 ** 31 - 1;

export function intArg(flag: string, min: number, max: number = U32_MAX) {
  return (v: string): number => parseIntFlag(flag, v, min, max);
}

export function portArg(flag: string, min = 0) {
  return intArg(flag, min, 65535);
}

/** Seconds > 0, at most what a Node timer can wait (a longer timer fires at once). */
export function secondsArg(flag: string) {
  return (v: string): number => {
    const n = Number(v);
    if (v.trim() === '' || !(n > 0) || n * 1000 > MAX_TIMER_MS) {
      throw new InvalidArgumentError(`${flag} must be a number of seconds > 0 and at most ${Math.floor(MAX_TIMER_MS / 1000)} (got '${v}')`);
    }
    return n;
  };
}

export function floatArg(flag: string, ok: (n: number) => boolean, what: string) {
  return (v: string): number => {
    const n = Number(v);
    if (v.trim() === '' || !Number.isFinite(n) || !ok(n)) throw new InvalidArgumentError(`${flag} must be ${what} (got '${v}')`);
    return n;
  };
}

export function seedArg(v: string): bigint {
  if (!/^\d+$/.test(v) || BigInt(v) >= 1n << 64n) throw new InvalidArgumentError(`--seed must be an integer in [0, 2^64) (got '${v}')`);
  return BigInt(v);
}
