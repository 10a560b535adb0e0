// The programmatic launcher API that `nodespeed launch` builds on: startJob / killRank / restartRank / stop,
// with local (execa) and SSH ranks mixed in one job.
import { randomUUID } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseHostfile, planWorld, selectHosts, startJob, type Job, type RankExitEvent, type RankLine } from '../../src/launcher/index.js';
import { startSshd, sshdAvailable, type SshdHarness } from '../helpers/sshd.js';
import { PROBE, processesWith } from './cli-helpers.js';

const suite = sshdAvailable() ? describe : describe.skip;

function until<T>(job: Job, event: 'line' | 'rank-exit', pred: (e: T) => boolean, timeoutMs = 20_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no matching ${event} within ${timeoutMs} ms`)), timeoutMs);
    const on = (e: T): void => {
      if (!pred(e)) return;
      clearTimeout(timer);
      job.off(event, on as never);
      resolve(e);
    };
    job.on(event as 'line', on as never);
  });
}

/** The job's processes, leaving out local ranks' watchdog shells (they carry the command line too). */
const ranksAndChildren = (tag: string) => processesWith(tag).filter((p) => !p.cmdline.startsWith('/bin/sh -c'));

suite('launcher API (startJob) with local and SSH ranks', () => {
  let sshd: SshdHarness;
  let cwd: string;
  const jobs: Job[] = [];
  beforeAll(async () => {
    sshd = await startSshd();
    cwd = mkdtempSync(join(tmpdir(), 'nodespeed-api-'));
  });
  afterEach(async () => {
    await Promise.all(jobs.splice(0).map((j) => j.stop('test cleanup')));
  });
  afterAll(async () => {
    await sshd?.stop();
    rmSync(cwd, { recursive: true, force: true });
  });

  const placement = () => planWorld(selectHosts(parseHostfile('localhost slots=1\n127.0.0.2 slots=1\n127.0.0.3 slots=1\n', 'hf')));

  async function hanging(mode: 'hang' | 'stubborn', failFast: boolean) {
    const tag = `tag-${randomUUID()}`;
    const lines: RankLine[] = [];
    const exits: RankExitEvent[] = [];
    let readyCount = 0;
    let allReady!: () => void;
    const ready = new Promise<void>((r) => (allReady = r));
    const job = await startJob(
      { placement: placement(), command: [process.execPath, PROBE, mode, tag], cwd, ssh: { sshDir: sshd.sshDir }, failFast, env: { EXTRA: 'x' } },
      (j) => {
        j.on('line', (l) => {
          lines.push(l);
          if (l.line.startsWith('READY') && ++readyCount === 3) allReady();
        });
        j.on('rank-exit', (e) => exits.push(e));
      },
    );
    jobs.push(job);
    await ready;
    return { job, tag, lines, exits };
  }

  it('killRank + restartRank under a supervisor (failFast off), then stop() leaves nothing behind', async () => {
    const { job, tag, lines, exits } = await hanging('hang', false);
    expect(job.rankState(0)).toMatchObject({ running: true, starts: 1 });
    expect(ranksAndChildren(tag)).toHaveLength(6);
    const exited = until<RankExitEvent>(job, 'rank-exit', (e) => e.rank === 1);
    await job.killRank(1, 'SIGKILL');
    expect(await exited).toMatchObject({ rank: 1, host: '127.0.0.2', code: 137, expected: true });
    await new Promise((r) => setTimeout(r, 300));
    // the killed rank's whole process group is gone, the other ranks keep running
    expect(ranksAndChildren(tag)).toHaveLength(4);
    expect(job.rankState(0).running && job.rankState(2).running).toBe(true);

    const again = until<RankLine>(job, 'line', (l) => l.rank === 1 && l.line.startsWith('READY'));
    await job.restartRank(1);
    await again;
    expect(job.rankState(1)).toMatchObject({ running: true, starts: 2 });
    await expect(job.restartRank(1)).rejects.toThrow('rank 1 on 127.0.0.2 is still running');

    const t0 = Date.now();
    await job.stop('supervisor done');
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(processesWith(tag)).toEqual([]);
    expect(await job.done).toEqual({ code: 0, reason: 'supervisor done' });
    expect(exits.filter((e) => e.rank !== 1 || e.code !== 137).every((e) => e.expected)).toBe(true);
    expect(lines.filter((l) => l.rank === 0).every((l) => l.host === 'localhost')).toBe(true);
  });

  it('per-rank secrets reach each rank (local: environment, remote: the SSH channel) and no command line; the API token reaches none', async () => {
    const tag = `tag-${randomUUID()}`;
    const apiToken = `api-${randomUUID()}`;
    const secretOf = (rank: number) => `secret-${rank}-${tag}`;
    const saved = process.env.NODESPEED_AUTH_TOKEN;
    process.env.NODESPEED_AUTH_TOKEN = apiToken;
    const lines: RankLine[] = [];
    let job: Job;
    try {
      job = await startJob({ placement: placement(), command: [process.execPath, PROBE, 'hang', tag], cwd, ssh: { sshDir: sshd.sshDir }, failFast: false,
        secrets: (p) => ({ NODESPEED_JOB_SECRETS: secretOf(p.rank) }) }, (j) => j.on('line', (l) => lines.push(l)));
    } finally {
      if (saved === undefined) delete process.env.NODESPEED_AUTH_TOKEN;
      else process.env.NODESPEED_AUTH_TOKEN = saved;
    }
    jobs.push(job);
    await until<RankLine>(job, 'line', () => lines.filter((l) => l.line.startsWith('READY')).length === 3);
    const ranks = lines.filter((l) => l.line.startsWith('READY')).map((l) => Number(/pid=(\d+)/.exec(l.line)![1]));
    expect(ranks).toHaveLength(3);
    for (const pid of ranks) {
      // Every rank runs on this machine (127.0.0.2-3 are sshd's): read each one's real environment.
      const env = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0');
      const rank = Number(env.find((e) => e.startsWith('RANK='))!.slice(5));
      expect(env).toContain(`NODESPEED_JOB_SECRETS=${secretOf(rank)}`);
      expect(env.some((e) => e.includes(apiToken))).toBe(false);
    }
    const everyCmdline = readdirSync('/proc').filter((n) => /^\d+$/.test(n)).map((n) => {
      try {
        return readFileSync(`/proc/${n}/cmdline`, 'utf8');
      } catch {
        return '';
      }
    }).join('\n');
    expect(everyCmdline).toContain(tag);
    for (const r of [0, 1, 2]) expect(everyCmdline).not.toContain(secretOf(r));
    expect(everyCmdline).not.toContain(apiToken);
  });

  it('stop() escalates to SIGKILL for ranks that ignore SIGTERM, still within 5 s', async () => {
    const { job, tag, exits } = await hanging('stubborn', true);
    const t0 = Date.now();
    await job.stop('deadline test', 9);
    const ms = Date.now() - t0;
    expect(ms).toBeLessThan(5000);
    expect(ms).toBeGreaterThanOrEqual(2000); // the grace period really was waited out
    expect(processesWith(tag)).toEqual([]);
    expect(exits.map((e) => e.code).sort()).toEqual([137, 137, 137]);
    expect((await job.done).code).toBe(9);
  });

  it('the first failing rank stops the job and its code is the job code (failFast default)', async () => {
    const job = await startJob({ placement: placement(), command: [process.execPath, PROBE, 'exit', '5'], cwd, ssh: { sshDir: sshd.sshDir } });
    jobs.push(job);
    const res = await job.done;
    expect(res.code).toBe(5);
    expect(res.reason).toMatch(/^rank \d on \S+ exited with code 5$/);
  });

  it('a start failure tears down the ranks that did start and names the host', async () => {
    const tag = `tag-${randomUUID()}`;
    const p = planWorld(selectHosts(parseHostfile('localhost slots=1\n127.0.0.2 slots=1\nno-such-host.invalid slots=1\n', 'hf')));
    await expect(startJob({ placement: p, command: [process.execPath, PROBE, 'hang', tag], cwd, ssh: { sshDir: sshd.sshDir, connectTimeoutMs: 3000 } })).rejects.toThrow(
      /ssh root@no-such-host\.invalid:22: cannot resolve host name 'no-such-host\.invalid'/,
    );
    expect(processesWith(tag)).toEqual([]);
  });
});
