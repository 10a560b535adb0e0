// What a program started by `nodespeed run`/`launch` reads about its place in the job.
import { settings } from './settings/index.js';

export interface RankInfo {
  rank: number;
  localRank: number;
  worldSize: number;
  localWorldSize: number;
  nodeRank: number;
  numNodes: number;
  masterAddr: string;
  masterPort: number;
  /** GPU index this rank owns, or null for a CPU worker (empty CUDA_VISIBLE_DEVICES). */
  gpu: number | null;
  /** Per-job secret for joining the coordinator; undefined outside a nodespeed job. */
  jobToken: string | undefined;
}

function int(env: NodeJS.ProcessEnv, name: string, fallback?: string): number {
  const raw = env[name] ?? fallback;
  if (raw === undefined) throw new Error(`rankInfo: ${name} is not set (was this process started by 'nodespeed run'?)`);
  if (!/^\d+$/.test(raw)) throw new Error(`rankInfo: ${name} must be a non-negative integer, got '${raw}'`);
  return Number(raw);
}

export function rankInfo(env: NodeJS.ProcessEnv = process.env): RankInfo {
  const info: RankInfo = {
    rank: int(env, 'RANK'),
    localRank: int(env, 'LOCAL_RANK'),
    worldSize: int(env, 'WORLD_SIZE'),
    localWorldSize: int(env, 'LOCAL_WORLD_SIZE', env.LOCAL_SIZE),
    nodeRank: int(env, 'NODE_RANK', env.CROSS_RANK ?? '0'),
    numNodes: int(env, 'CROSS_SIZE', '1'),
    masterAddr: env.MASTER_ADDR ?? '',
    masterPort: int(env, 'MASTER_PORT'),
    gpu: env.CUDA_VISIBLE_DEVICES && /^\d+$/.test(env.CUDA_VISIBLE_DEVICES) ? Number(env.CUDA_VISIBLE_DEVICES) : null,
    jobToken: (env === process.env ? settings() : settings(env)).jobToken,
  };
  if (info.masterAddr === '') throw new Error("rankInfo: MASTER_ADDR is not set (was this process started by 'nodespeed run'?)");
  if (info.rank >= info.worldSize) throw new Error(`rankInfo: RANK ${info.rank} is not below WORLD_SIZE ${info.worldSize}`);
  if (info.localRank >= info.localWorldSize) throw new Error(`rankInfo: LOCAL_RANK ${info.localRank} is not below LOCAL_WORLD_SIZE ${info.localWorldSize}`);
  return info;
}
