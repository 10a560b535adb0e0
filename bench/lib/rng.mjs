// mulberry32: the seeded generator of the bench scripts, so a run (a soak's load, a fuzz case) is
// a function of its --seed. Bench scripts run as plain Node and cannot import test/helpers/rng.ts,
// which is the same generator for the property tests.
export function rng(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
