// The pieces of bench/failover/run.mjs that do not depend on its flags: starting a real
// `nodespeed launch`, a steady seeded load of streams that records every token's arrival, and the
// statistics over those arrivals (pauses of the affected streams, throughput in fixed bins).
import { spawn } from 'node:child_process';
import { setMaxListeners } from 'node:events';

/**
 * Starts `node bin/nodespeed launch ...args` and resolves at its ready line with the time it took
 * (process start to every replica serving: the cost of one full load, used as "reload" in the bar).
 * Rejects with the launch's own stderr when it exits first (e.g. an unknown flag).
 */
export function launch(bin, args) {
  const t0 = performance.now();
  const proc = spawn(process.execPath, [bin, 'launch', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  proc.stderr.on('data', (d) => (err += d));
  const exited = new Promise((r) => proc.once('exit', (code) => r(code)));
  return new Promise((resolveReady, reject) => {
    let out = '';
    proc.stdout.on('data', (d) => {
      out += d;
      const line = out.split('\n').find((l) => l.startsWith('nodespeed ready '));
      if (!line) return;
      resolveReady({
        proc, readyLine: line, address: line.split(' ')[2], startMs: performance.now() - t0, stderr: () => err,
        stop: async () => {
          if (proc.exitCode === null) proc.kill('SIGINT');
          const t = setTimeout(() => proc.kill('SIGKILL'), 20_000);
          await exited;
          clearTimeout(t);
        },
      });
    });
    // The error line itself (commander prints its help after an unknown option), else the last lines.
    const why = () => err.split('\n').find((l) => /^(error|nodespeed[^:]*): /i.test(l)) ?? err.trim().split('\n').slice(-5).join('\n');
    void exited.then((code) => reject(new Error(`launch exited with ${code} before ready: ${why()}`)));
  });
}

/**
 * `concurrency` client loops, each sending one seeded request after the other (seed = loop, turn),
 * so the server always holds about `concurrency` streams. Every token's arrival time (Date.now(), the
 * clock the coordinator's failure record uses) is kept per request; each message's index is checked
 * for gaps and repeats. stop() cancels what is in flight and resolves with every request seen.
 */
export function steadyLoad(client, { concurrency, promptIds, maxTokens, temperature = 0.8, topK = 40 }) {
  const ctl = new AbortController();
  setMaxListeners(0, ctl.signal); // one listener per stream in flight
  const requests = [];
  const errors = [];
  const loop = async (i) => {
    for (let turn = 0; !ctl.signal.aborted; turn++) {
      const r = { loop: i, turn, sentAt: Date.now(), arrivals: [], done: false };
      requests.push(r);
      try {
        for await (const m of client.generate({ promptIds: promptIds(i, turn), maxTokens, ignoreEos: true, temperature, topK,
          seed: String(1_000_003 * i + turn) }, { signal: ctl.signal })) {
          if (m.index !== r.arrivals.length) throw new Error(`gap/repeat: message index ${m.index} after ${r.arrivals.length} tokens`);
          const now = Date.now();
          for (let k = 0; k < m.tokenIds.length; k++) r.arrivals.push(now);
        }
        r.done = true;
      } catch (err) {
        if (!ctl.signal.aborted) {
          errors.push(`loop ${i} turn ${turn}: ${err.message}`);
          await new Promise((res) => setTimeout(res, 100)); // an outage: do not spin
        }
      }
    }
  };
  const loops = Array.from({ length: concurrency }, (_, i) => loop(i));
  return {
    requests, errors,
    tokens: () => requests.reduce((n, r) => n + r.arrivals.length, 0),
    stop: async () => {
      ctl.abort();
      await Promise.all(loops);
      return { requests, errors };
    },
  };
}

const median = (xs) => {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/**
 * For each request in flight at the kill (sent before it, not finished before it): its longest
 * pause after the kill (between the kill or a token and the next token) and when it resumed (the
 * token that ended that pause). The `affected` requests (the server's count of replayed requests)
 * are the ones that paused longest: streams on a healthy replica pause one step, those of the lost
 * replica pause until detection and replay. (The next token after the kill is no measure: a hung
 * driver's last message may still be in flight.) Without a server count, every one counts.
 */
export function resumeAfterKill(requests, killedAt, affected) {
  const hits = [];
  for (const r of requests) {
    if (r.sentAt >= killedAt) continue;
    const after = r.arrivals.filter((t) => t > killedAt);
    if (!after.length) continue; // finished before the kill, or cancelled at the end without a token
    let pause = after[0] - killedAt;
    let resumed = after[0];
    for (let i = 1; i < after.length; i++) {
      if (after[i] - after[i - 1] > pause) {
        pause = after[i] - after[i - 1];
        resumed = after[i];
      }
    }
    hits.push({ pause, resume: resumed - killedAt });
  }
  hits.sort((x, y) => y.pause - x.pause);
  const hit = hits.slice(0, affected ?? hits.length);
  return {
    in_flight_at_kill: hits.length, affected: hit.length,
    kill_to_resume_ms_max: hit.length ? Math.max(...hit.map((h) => h.resume)) : null, kill_to_resume_ms_p50: median(hit.map((h) => h.resume)),
    pause_ms_max: hit.length ? hit[0].pause : null, pause_ms_p50: median(hit.map((h) => h.pause)),
    unaffected_pause_ms_p50: median(hits.slice(hit.length).map((h) => h.pause)),
  };
}

/** Tokens/s in `binMs` bins over [from, to), times relative to `zero` (the kill). */
export function throughputBins(requests, zero, from, to, binMs) {
  const n = Math.max(1, Math.ceil((to - from) / binMs));
  const counts = new Array(n).fill(0);
  for (const r of requests) for (const t of r.arrivals) {
    const b = Math.floor((t - from) / binMs);
    if (b >= 0 && b < n) counts[b]++;
  }
  return counts.map((c, i) => ({ t_ms: from - zero + i * binMs, tok_s: (c * 1000) / binMs }));
}

/** Mean tokens/s of the bins whose start lies in [a, b) (ms from the kill), and the lowest bin. */
export function window(bins, a, b) {
  const sel = bins.filter((x) => x.t_ms >= a && x.t_ms < b);
  if (!sel.length) return { mean_tok_s: null, min_tok_s: null, bins: 0 };
  return { mean_tok_s: sel.reduce((s, x) => s + x.tok_s, 0) / sel.length, min_tok_s: Math.min(...sel.map((x) => x.tok_s)), bins: sel.length };
}
